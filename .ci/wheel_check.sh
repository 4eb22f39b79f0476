#!/usr/bin/env bash
# A real install, as a new user gets it: build a wheel, install it into a fresh venv outside the
# checkout, and from another directory run `router demo`, then `router serve` with a study sent
# by DCMTK's storescu, the HTTP health and metrics endpoints scraped, and a SIGTERM drain.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d /tmp/router-wheel-check.XXXXXX)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill "$server_pid"; wait "$server_pid" || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

echo "wheel check in $work"
"$python" -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install -q build
# An sdist first, then the wheel from it (python -m build's default): what is not declared as
# package data is missing here, as it would be on PyPI.
"$work/build-venv/bin/python" -m build -q --outdir "$work/dist" "$repo" >/dev/null
wheel="$(ls "$work"/dist/*.whl)"

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$wheel"
router="$work/venv/bin/router"
mkdir "$work/elsewhere"
cd "$work/elsewhere"

# The demo, with its roster and studies from the installed package.
"$router" demo --data-dir "$work/demo" > "$work/demo.out"
grep -q "Professional ledger" "$work/demo.out"
grep -q "assigned\|completed" "$work/demo.out"

# serve: a config file with a relative data_dir (read from the config file's folder), HTTP on.
port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
http_port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
mkdir -p "$work/etc"
cat > "$work/etc/router.toml" <<TOML
[listener]
host = "127.0.0.1"
port = $port
[paths]
data_dir = "../var"
[routing]
stable_seconds = 1.0
poll_interval = 0.2
[http]
enabled = true
host = "127.0.0.1"
port = $http_port
TOML
export ROUTER_CONFIG="$work/etc/router.toml"
"$router" serve 2> "$work/serve.err" &
server_pid=$!
for _ in $(seq 1 150); do
    grep -q "listening on" "$work/serve.err" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/serve.err"; exit 1; }
    sleep 0.2
done
grep -q "listening on" "$work/serve.err" || { cat "$work/serve.err"; exit 1; }

sample="$("$work/venv/bin/python" -c 'from router.resources import PACKAGED_SAMPLES_DIR; print(PACKAGED_SAMPLES_DIR / "ER_SOUTH")')"
storescu="$(PATH=/usr/bin:/usr/local/bin command -v storescu)"
"$storescu" -aet ER_SOUTH -aec ROUTER 127.0.0.1 "$port" "$sample"/*/*.dcm

"$router" studies list --json > "$work/studies.json"
"$work/venv/bin/python" - "$work/studies.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
assert len(rows) == 1 and rows[0]["instance_count"] == 2, rows
PY
fetch() { "$work/venv/bin/python" -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"; }
fetch "http://127.0.0.1:$http_port/healthz"
fetch "http://127.0.0.1:$http_port/metrics" > "$work/metrics.txt"
grep -q '^router_instances_received_total{status="0x0000"} 2.0$' "$work/metrics.txt" || { cat "$work/metrics.txt"; exit 1; }

kill -TERM "$server_pid"
wait "$server_pid"
server_pid=""
test -f "$work/var/router.db"
echo "wheel check passed: demo, serve + storescu, healthz, metrics from $work/elsewhere"
