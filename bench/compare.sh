#!/usr/bin/env bash
# A/B comparison of portico-proxy builds (and nginx) on the `make bench` setup: is this change
# faster? `make bench` answers how Portico compares with other proxies; this answers whether one
# build beats another, which on this noisy machine needs many interleaved repetitions (identical
# runs differ by ±15%) and the same conditions for every build. Loopback only.
#
#   bench/compare.sh peak BIN_A BIN_B [nginx]        # wrk, closed loop
#   bench/compare.sh rate 2000 BIN_A BIN_B [nginx]   # oha, open loop at 2,000 req/s
#   REPS=8 DURATION=8 bench/compare.sh ...
#   WORKERS=2 bench/compare.sh rate 10000 BIN_A BIN_B   # portico with two workers
#   CONNS=4 OHA_ARGS="--http2 -p 16" bench/compare.sh rate 5000 BIN_A BIN_B   # h2c clients
#       (portico builds only: the nginx here has no h2c port)
#
# peak reports req/s, the proxy's share of its core, and context switches per request on the
# load core (generator + upstream: the bottleneck of the closed-loop test, so how often a proxy
# wakes them decides its throughput; needs `perf`). rate reports CPU-seconds per 1,000
# requests, p50 and p99. Each line is one run; the table at the end has the medians.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:?usage: bench/compare.sh peak|rate [RATE] TARGET...}
shift
RATE=0
if [[ $MODE == rate ]]; then
    RATE=${1:?rate needs requests per second}
    shift
fi
[[ $MODE == peak || $MODE == rate ]] || { echo "mode is peak or rate, not $MODE" >&2; exit 2; }
(($#)) || { echo "no targets: give portico-proxy binaries and/or nginx" >&2; exit 2; }
REPS=${REPS:-8}
DURATION=${DURATION:-$([[ $MODE == peak ]] && echo 8 || echo 5)}
PROXY_CPU=0
LOAD_CPU=1
# WORKERS=2: portico-proxy with two workers, allowed on both cores (the load stays on CPU 1).
WORKERS=${WORKERS:-1}
PROXY_CPUS=$([[ $WORKERS -gt 1 ]] && echo "0-$((WORKERS - 1))" || echo $PROXY_CPU)
UP_PORT=18180
PROXY_PORT=18181
ADMIN_PORT=19981
WORK=$(mktemp -d /tmp/portico-compare.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit

require_tools "make bench installs it" wrk nginx python3 taskset
# oha only loads the rate mode (rate_run).
[[ $MODE == peak ]] || require_oha
PERF=$(command -v perf || true)

upstream_conf "$WORK/up" $UP_PORT
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)
nginx_proxy_conf "$WORK/ngx" $PROXY_PORT $UP_PORT
portico_conf "$WORK/portico.yaml" $PROXY_PORT $UP_PORT
wait_port $UP_PORT

URL=http://127.0.0.1:$PROXY_PORT/
# Starts TARGET pinned to the proxy core; sets MAIN (the process to stop) and WORKER (the one
# doing the work, whose CPU time counts).
start() {
    if [[ $1 == nginx ]]; then
        taskset -c $PROXY_CPU nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" &
        MAIN=$!
        wait_port $PROXY_PORT
        WORKER=$(pgrep -P "$MAIN" | head -1)
    else
        taskset -c "$PROXY_CPUS" "$1" --config "$WORK/portico.yaml" --workers "$WORKERS" \
            --admin-addr 127.0.0.1:$ADMIN_PORT --log-level warn &
        MAIN=$!
        WORKER=$MAIN
        wait_port $PROXY_PORT
    fi
    PIDS+=("$MAIN")
}
stop() {
    kill "$MAIN" 2>/dev/null || true
    wait "$MAIN" 2>/dev/null || true
    # A process can exit before its listening socket closes (an io_uring's files are released
    # by the kernel after the exit): the next target must find the port free.
    for _ in $(seq 1 500); do
        (exec 3<>/dev/tcp/127.0.0.1/$PROXY_PORT) 2>/dev/null || return 0
        sleep 0.01
    done
}
# Busy jiffies of the load core.
load_busy() { core_jiffies $LOAD_CPU | cut -d' ' -f1; }

RESULTS=$WORK/results.txt
for _ in $(seq 1 "$REPS"); do
    for target in "$@"; do
        start "$target"
        name=$(basename "$target")
        if [[ $MODE == peak ]]; then
            taskset -c $LOAD_CPU wrk -t1 -c64 -d2s "$URL" >/dev/null
            c0=$(cpu_ns "$WORKER"); b0=$(load_busy)
            if [[ -n $PERF ]]; then
                "$PERF" stat -x, -e context-switches -C $LOAD_CPU -o "$WORK/cs.txt" -- \
                    taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" "$URL" > "$WORK/wrk.txt"
            else
                taskset -c $LOAD_CPU wrk -t1 -c64 -d"${DURATION}s" "$URL" > "$WORK/wrk.txt"
            fi
            c1=$(cpu_ns "$WORKER"); b1=$(load_busy)
            n=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
            rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")
            cs=$([[ -n $PERF ]] && awk -F, '/context-switches/ {print $1}' "$WORK/cs.txt" || echo nan)
            awk -v t="$name" -v rps="$rps" -v n="$n" -v c=$((c1 - c0)) -v b=$((b1 - b0)) -v cs="$cs" \
                -v d="$DURATION" -v hz="$(getconf CLK_TCK)" 'BEGIN {
                    printf "%s rps %.0f proxy_cpu %.2f load_busy %.2f load_cs_per_req %.3f\n",
                        t, rps, c / 1e9 / d, b / hz / d, cs / n }' | tee -a "$RESULTS"
        else
            # shellcheck disable=SC2086 # OHA_ARGS is a list of options
            rate_run "$name" "$URL" "$WORKER" "$RATE" "$DURATION" ${OHA_ARGS:-} | tee -a "$RESULTS"
        fi
        stop
    done
done

echo
python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    f = line.split()
    runs.setdefault(f[0], []).append({f[i]: float(f[i + 1]) for i in range(1, len(f) - 1, 2)})
cols = list(next(iter(runs.values()))[0])
print("| target | runs | " + " | ".join(f"{c} (median)" for c in cols) + " |")
print("|---|---:|" + "---:|" * len(cols))
for name, rs in runs.items():
    meds = [statistics.median(r[c] for r in rs) for c in cols]
    print(f"| {name} | {len(rs)} | " + " | ".join(f"{m:.0f}" if m >= 1000 else f"{m:.4g}" for m in meds) + " |")
PY
