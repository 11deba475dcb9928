# Shared by the benchmark scripts (bench/run.sh, benches/audit-overhead.sh); sourced, from the
# project root. Checks the prerequisites, builds the release binary and sets:
#   bin        the release `cairn`
#   free_port  prints a free local TCP port
[ -f Cargo.toml ] || { echo "run from the project root"; exit 2; }
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk"; exit 2; }
cargo build --release --quiet --bin cairn
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target/release/cairn"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
