#!/usr/bin/env bash
# What the audit trail costs: read-by-id throughput with auditing on and off, measured in the same
# run with wrk (64 connections), on SQLite and on PostgreSQL. From the project root:
#
#   bash benches/audit-overhead.sh [seconds-per-run (default 15)]
#
# Needs wrk (apt-get install wrk) and, for PostgreSQL, a server on 127.0.0.1:5432 with trust auth.
# Prints one line per run and the on/off ratio per backend (the issue asks for at least 0.60).
set -euo pipefail
secs=${1:-15}
. "$(dirname "$0")/../bench/lib.sh"

run() { # backend audit -> requests/s
  local backend=$1 audit=$2 work port pid db="" url rps
  work=$(mktemp -d); port=$(free_port)
  if [ "$backend" = sqlite ]; then
    url="sqlite://$work/cairn.sqlite"
  else
    db="cairn_bench_$$_$RANDOM"
    psql -h 127.0.0.1 -U postgres -qc "create database $db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$db"
  fi
  export CAIRN_DATABASE_URL=$url CAIRN_LISTEN=127.0.0.1:$port CAIRN_DATA_DIR=$work/data \
    CAIRN_BASE_URL=http://127.0.0.1:$port/fhir CAIRN_POOL_SIZE=16 RUST_LOG=warn
  CAIRN_AUDIT=$audit "$bin" serve >"$work/log" 2>&1 & pid=$!
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  local t; t=$("$bin" token --scope 'system/*.cruds' | tail -1)
  curl -fs -X PUT "$CAIRN_BASE_URL/Patient/bench" -H "Authorization: Bearer $t" \
    -H 'Content-Type: application/fhir+json' -d '{"resourceType":"Patient","id":"bench"}' >/dev/null
  wrk -t2 -c64 -d2s -H "Authorization: Bearer $t" "$CAIRN_BASE_URL/Patient/bench" >/dev/null
  rps=$(wrk -t2 -c64 -d"${secs}s" -H "Authorization: Bearer $t" "$CAIRN_BASE_URL/Patient/bench" |
        awk '/Requests\/sec/ {print $2}')
  kill -TERM $pid; wait $pid 2>/dev/null || true
  [ -n "$db" ] && psql -h 127.0.0.1 -U postgres -qc "drop database $db with (force)" >/dev/null
  rm -rf "$work"
  echo "$rps"
}

printf '| backend | audit off req/s | audit on req/s | on/off |\n|---|---|---|---|\n'
for backend in sqlite postgres; do
  if [ $backend = postgres ] && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "| postgres | (not running) | | |"; continue
  fi
  off=$(run $backend disabled)
  on=$(run $backend enabled)
  ratio=$(python3 -c "print(f'{$on/$off:.2f}')")
  printf '| %s | %.0f | %.0f | %s |\n' "$backend" "$off" "$on" "$ratio"
done
