#!/usr/bin/env bash
# The operations benchmark, one command, from the project root:
#
#   bash bench/run.sh [seconds-per-load-run (default 10)]
#
# In one run, on SQLite and on PostgreSQL (127.0.0.1:5432, trust auth; skipped if down):
#   - the ceiling: `cairn static-ceiling`, an actix server answering every GET with a fixed body
#     the size of the read below (no auth, no database, no audit);
#   - read-by-id requests/s with auth and audit on;
#   - search latencies (p50/p99) and requests/s on a small synthetic dataset;
#   - transaction ingest in resources/s (cargo bench --bench ingest);
#   - RSS at idle and at the end of the read load; cold start to ready on an existing database.
# Load runs use wrk (apt-get install wrk): 2 threads, 64 connections. Every rate is printed as a
# ratio to the ceiling measured in the same run. The ceiling and the read are measured in turn,
# ROUNDS times (default 3), and their medians are reported; the read's ratio is the median of the
# rounds' ratios (each a ceiling and a read back to back): one run of each swings by 10-20% on a
# shared machine, and the machine itself speeds up and slows down over minutes. Cairn is paused
# (SIGSTOP) while the ceiling runs, so that its background work (AuditEvent rows written from the
# log after a read load) does not take the ceiling's CPU.
# Results go to stdout as a Markdown table; the rounds go to stderr.
set -euo pipefail
secs=${1:-10}
. "$(dirname "$0")/lib.sh"
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
wait_ready() { # port [start, as epoch seconds] -> seconds from start to ready
  python3 - "$1" "${2:-}" <<'PY'
import sys, time, urllib.request
port = sys.argv[1]
start = float(sys.argv[2]) if sys.argv[2] else time.time()
while True:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read(); break
    except Exception:
        if time.time() - start > 30: sys.exit("not ready in 30 s")
        time.sleep(0.005)
print(f"{time.time() - start:.3f}")
PY
}
# wrk, refusing a run that got any status other than 2xx or 3xx: a rate of 401s is not a read.
load() {
  local out
  out=$(wrk "$@")
  if grep -q 'Non-2xx or 3xx responses' <<<"$out"; then
    printf 'bench: error responses from wrk %s:\n%s\n' "$*" "$out" >&2
    return 1
  fi
  printf '%s\n' "$out"
}
rps() { awk '/Requests\/sec/ {print $2}'; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
median() { python3 -c "import statistics, sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
rounds=${ROUNDS:-3}

work=$(mktemp -d)
# Under `set -e` a failing command ends the trap too: with no jobs left, `kill` fails, so each one is
# allowed to, and the work directory is always removed.
trap 'kill -CONT $(jobs -p) 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)"
echo "command: bash bench/run.sh $secs (ROUNDS=$rounds)"
echo

run_backend() {
  local backend=$1 url db="" port pid t ready rss_idle rss_load ceiling read body_bytes
  if [ "$backend" = sqlite ]; then
    url="sqlite://$work/$backend.sqlite"
  else
    db="cairn_bench_$$_$RANDOM"
    psql -h 127.0.0.1 -U postgres -qc "create database $db" >/dev/null
    url="postgres://postgres@127.0.0.1:5432/$db"
  fi
  port=$(free_port)
  export CAIRN_DATABASE_URL=$url CAIRN_LISTEN=127.0.0.1:$port CAIRN_DATA_DIR=$work/data \
    CAIRN_BASE_URL=http://127.0.0.1:$port/fhir CAIRN_POOL_SIZE=16 RUST_LOG=warn
  # First start creates and migrates the database; the timed start is the second.
  "$bin" serve >"$work/log" 2>&1 & pid=$!
  wait_ready "$port" >/dev/null
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local t0; t0=$(date +%s.%N)
  "$bin" serve >"$work/log" 2>&1 & pid=$!
  ready=$(wait_ready "$port" "$t0")
  t=$("$bin" token --scope 'system/*.cruds' | tail -1)
  local base="http://127.0.0.1:$port/fhir" auth="Authorization: Bearer $t"
  curl -fs -X PUT "$base/Patient/bench" -H "$auth" -H 'Content-Type: application/fhir+json' \
    -d '{"resourceType":"Patient","id":"bench","name":[{"family":"Bench","given":["Ada"]}],"gender":"female","birthDate":"1980-01-01"}' >/dev/null
  body_bytes=$(curl -fs "$base/Patient/bench" -H "$auth" | wc -c)
  # A small dataset to search: 200 patients with 5 PHQ-9 scores each, in transaction Bundles.
  python3 - "$base" "$t" <<'PY'
import json, sys, urllib.request, uuid
base, tok = sys.argv[1], sys.argv[2]
for b in range(10):
    entries = []
    for p in range(20):
        pid = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": pid, "resource": {"resourceType": "Patient", "name": [{"family": f"Fam{b}{p}"}], "gender": "female" if p % 2 else "male"}, "request": {"method": "POST", "url": "Patient"}})
        for k in range(5):
            entries.append({"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]}, "subject": {"reference": pid},
                "effectiveDateTime": f"2024-0{k+1}-10", "valueInteger": (p + k) % 28}, "request": {"method": "POST", "url": "Observation"}})
    req = urllib.request.Request(base, json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}).encode(),
        {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {tok}"})
    urllib.request.urlopen(req).read()
PY
  sleep 2
  rss_idle=$(rss_mb $pid)
  # The ceiling, on the same machine, in the same run, in turn with the read.
  local sport spid round ceilings=() reads=() ratios=()
  sport=$(free_port)
  "$bin" static-ceiling --listen "127.0.0.1:$sport" --bytes "$body_bytes" >/dev/null 2>&1 & spid=$!
  sleep 0.5
  load -t2 -c64 -d2s -H "$auth" "$base/Patient/bench" >/dev/null
  for round in $(seq "$rounds"); do
    kill -STOP $pid
    load -t2 -c64 -d2s "http://127.0.0.1:$sport/" >/dev/null
    ceilings+=("$(load -t2 -c64 -d"${secs}s" "http://127.0.0.1:$sport/" | rps)")
    kill -CONT $pid
    load -t2 -c64 -d1s -H "$auth" "$base/Patient/bench" >/dev/null
    reads+=("$(load -t2 -c64 -d"${secs}s" -H "$auth" "$base/Patient/bench" | rps)")
    ratios+=("$(ratio "${reads[-1]}" "${ceilings[-1]}")")
    echo "$backend round $round: ceiling ${ceilings[-1]} req/s, read ${reads[-1]} req/s, ratio ${ratios[-1]}" >&2
  done
  kill $spid; wait $spid 2>/dev/null || true
  ceiling=$(median "${ceilings[@]}"); read=$(median "${reads[@]}")
  rss_load=$(rss_mb $pid)
  printf '| %s | ceiling (static actix, %s B; median of %s) | %.0f req/s | 1.00 |\n' "$backend" "$body_bytes" "$rounds" "$ceiling"
  # The read's ratio is the median of the rounds' own ratios: each pairs a ceiling and a read
  # measured back to back, so a machine that speeds up or slows down between rounds moves both.
  printf '| %s | read by id, auth + audit on (median of %s; ratio: median of the rounds'"'"' ratios) | %.0f req/s | %.2f |\n' "$backend" "$rounds" "$read" "$(median "${ratios[@]}")"
  local q name out p50 p99 r
  for q in "Patient?family=Fam37" "Observation?subject:Patient.family=Fam52&code=http://loinc.org|44261-6" \
           "Observation?code=http://loinc.org|44261-6&value-quantity=gt20&_count=20"; do
    out=$(load -t2 -c16 -d"$(( secs / 2 + 1 ))s" --latency -H "$auth" "$base/$q")
    p50=$(echo "$out" | awk '$1=="50%" {print $2}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    r=$(echo "$out" | rps)
    printf '| %s | search `%s` (16 conn.: p50 %s, p99 %s) | %.0f req/s | %s |\n' "$backend" "$q" "$p50" "$p99" "$r" "$(ratio "$r" "$ceiling")"
  done
  kill -TERM $pid; wait $pid 2>/dev/null || true
  local ingest_url="$url"
  if [ "$backend" = sqlite ]; then ingest_url="sqlite://$work/ingest.sqlite"; else
    psql -h 127.0.0.1 -U postgres -qc "create database ${db}_i" >/dev/null; ingest_url="postgres://postgres@127.0.0.1:5432/${db}_i"; fi
  r=$(cargo bench --quiet --bench ingest -- --database-url "$ingest_url" --bundles 20 2>/dev/null | sed -n 's/.*: \([0-9]*\) resources\/s/\1/p')
  printf '| %s | transaction ingest (Bundles of 500) | %s resources/s | %s |\n' "$backend" "$r" "$(ratio "${r:-0}" "$ceiling")"
  printf '| %s | RSS idle / after the read load | %s MB / %s MB | |\n' "$backend" "$rss_idle" "$rss_load"
  printf '| %s | cold start to ready (existing database) | %s s | |\n' "$backend" "$ready"
  if [ -n "$db" ]; then
    psql -h 127.0.0.1 -U postgres -qc "drop database $db with (force)" >/dev/null
    psql -h 127.0.0.1 -U postgres -qc "drop database if exists ${db}_i with (force)" >/dev/null
  fi
}

echo "| backend | measure | value | ratio to ceiling |"
echo "|---|---|---|---|"
run_backend sqlite
if pg_isready -h 127.0.0.1 -p 5432 -q; then run_backend postgres; else echo "| postgres | (not running) | | |"; fi
