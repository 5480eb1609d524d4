#!/usr/bin/env bash
# What "beyond one machine" costs and gains on this machine, in one run:
#   1. a shared search: the same 9-trial grid (configs/tune_synth.toml's simple_cnn on 48 px
#      synth images, 3 epochs a trial) run by 1 worker, then by 3 workers at once, each through
#      its own database of a throwaway PostgreSQL; wall times and the ratio;
#   2. the server's /metrics: requests per second (wrk, 2 connections, 10 s, alternating, ROUNDS
#      rounds) of GET /healthz and of POST /api/predict with one Kermany image, with the
#      metrics (the default) and with --no-metrics; and the time of one scrape;
#   3. the server's peak resident memory after that load (VmHWM).
#
#   scripts/bench/cluster.sh [RUN_DIR=checkpoints/latest] [ROUNDS=2]
# Needs PostgreSQL's server programs (scripts/setup/postgres.sh), wrk, and a release build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
run=${1:-checkpoints/latest}
rounds=${2:-2}
xray=$PWD/target/release/xray
[ -x "$xray" ] || { echo "cluster bench: build first (make build)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "cluster bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "cluster bench: PostgreSQL is missing (scripts/setup/postgres.sh)" >&2; exit 1; }
work=$(mktemp -d)
chmod 777 "$work"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
    as_pg "$bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
as_pg "$bin/initdb" -D "$work/pg" -A trust -U xray -E UTF8 --no-sync >/dev/null
as_pg "$bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
    -o "-p $port -k $work -c listen_addresses=127.0.0.1" start >/dev/null
db() { psql -q -h 127.0.0.1 -p "$port" -U xray -d postgres -c "CREATE DATABASE $1"; echo "postgres://xray@127.0.0.1:$port/$1"; }

echo "## 1. A shared search: 9 grid trials, 1 worker against 3 ($(nproc) cores)"
"$xray" synth --out "$work/synth" --per-class 60 --size 48 --seed 3 >/dev/null
"$xray" split "$work/synth" --out "$work/split" >/dev/null
sed -e "s|split = \"datasets/synth-split\"|split = \"$work/split\"|" -e 's/image_size = 64/image_size = 48/' \
    configs/tune_synth.toml | sed '/^\[tune\]/,$d' > "$work/tune.toml"
cat >> "$work/tune.toml" <<'EOF'
[tune]
strategy = "grid"
prune = "none"
[tune.space]
"train.lr" = [0.01, 0.003, 0.001]
"model.dropout" = [0.0, 0.2, 0.4]
EOF
search() { # WORKERS DB [--set ...]
    local n=$1 url=$2 t0 pids=()
    t0=$(date +%s.%N)
    for i in $(seq 1 "$n"); do
        "$xray" tune --config "$work/tune.toml" --set train.epochs=3 "${@:3}" --storage "$url" \
            --worker "w$i" --out "$work/out-$n-$i-$#" >/dev/null 2>&1 &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    echo "$(date +%s.%N) - $t0" | bc
}
# Each worker's libtorch uses every core by default (threads = 0), so three workers on this
# machine share its cores three ways; the last row gives each worker one thread instead.
one=$(search 1 "$(db one)")
three=$(search 3 "$(db three)")
three1=$(search 3 "$(db three_single)" --set threads=1)
printf '| workers | wall time (s) | speed-up |\n|---|---|---|\n'
printf '| 1 | %.1f | 1.00x |\n' "$one"
printf '| 3 | %.1f | %.2fx |\n' "$three" "$(echo "scale=4; $one / $three" | bc)"
printf '| 3, one thread each | %.1f | %.2fx |\n' "$three1" "$(echo "scale=4; $one / $three1" | bc)"
echo

echo "## 2. The server's /metrics ($run)"
[ -f "$run/model.json" ] || { echo "cluster bench: $run is not a trained run" >&2; exit 1; }
img=$(find ../shared/datasets/pneumonia "$work/synth" \( -name '*.jpeg' -o -name '*.png' \) -print -quit 2>/dev/null)
python3 - "$img" "$work/post.lua" <<'EOF'
import sys
data = open(sys.argv[1], 'rb').read()
b = 'xraybenchboundary'
body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="x.jpeg"\r\n'
        'Content-Type: application/octet-stream\r\n\r\n').encode() + data + f'\r\n--{b}--\r\n'.encode()
lua = ''.join('\\%d' % c for c in body)
open(sys.argv[2], 'w').write(
    'wrk.method = "POST"\n'
    f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={b}"\n'
    f'wrk.body = "{lua}"\n')
EOF
start_server() { # extra flags...
    "$xray" serve --checkpoint "$run" --addr 127.0.0.1:0 --device cpu --rate-limit 0 "$@" \
        > "$work/serve.out" 2>/dev/null &
    server_pid=$!
    for _ in $(seq 1 200); do grep -q '^serving' "$work/serve.out" 2>/dev/null && break; sleep 0.1; done
    base=$(grep -o 'http://[0-9.:]*' "$work/serve.out")
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }
rps() { wrk -t 2 -c 2 -d "$2" "${@:3}" "$base$1" | awk '/Requests\/sec/ { print $2 }'; }
declare -A results
for r in $(seq 1 "$rounds"); do
    # ABBA: odd rounds start with the metrics, even rounds without, so neither side is always
    # the first server after a restart.
    order="with without"
    [ $((r % 2)) = 0 ] && order="without with"
    for mode in $order; do
        if [ "$mode" = with ]; then start_server; else start_server --no-metrics; fi
        results[$mode,healthz]+="$(rps /healthz 10s) "
        results[$mode,predict]+="$(rps /api/predict 10s -s "$work/post.lua") "
        if [ "$mode" = with ]; then
            results[scrape]+="$(rps /metrics 5s) "
            hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$server_pid/status")
        fi
        stop_server
    done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
printf '| route | req/s with /metrics (median) | with --no-metrics (median) | with / without | rounds with | rounds without |\n|---|---|---|---|---|---|\n'
rounded() { for v in $1; do printf '%.0f ' "$v"; done; }
for route in healthz predict; do
    w=$(echo "${results[with,$route]}" | median)
    wo=$(echo "${results[without,$route]}" | median)
    printf '| %s | %.0f | %.0f | %.3f | %s| %s|\n' "$route" "$w" "$wo" "$(echo "scale=4; $w / $wo" | bc)" \
        "$(rounded "${results[with,$route]}")" "$(rounded "${results[without,$route]}")"
done
echo "GET /metrics itself: $(echo "${results[scrape]}" | median) scrapes/s"
echo
echo "## 3. Peak resident memory of serve after the load: $((hwm / 1024)) MiB"
