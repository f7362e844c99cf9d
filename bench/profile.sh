#!/usr/bin/env bash
# Where a proxy's CPU goes at a fixed request rate (`make profile`): portico-proxy and nginx,
# each one worker pinned to one core in front of the same upstream (as `make bench` runs them),
# loaded by oha at RATE req/s from the other core. For each proxy, three separate phases of
# DURATION seconds, so one tool does not distort another's figures:
#
#   perf stat    CPU time, context switches and migrations of the proxy per request, its user
#                and kernel time (/proc/PID/stat) and the TCP segments sent on the machine
#                (nstat) per request (REPS interleaved rounds, medians)
#   strace -c    system calls per request, by call
#   perf record  sampled call stacks (cpu-clock, DWARF unwinding): the functions and
#                libraries the time is spent in
#
# Writes docs/profile.md (the setup, the machine's load, and the tables). Loopback only.
#
#   RATE=2000 DURATION=10 REPS=5 bench/profile.sh
#   PROXY_BIN=path/to/portico-proxy bench/profile.sh   # skip the build
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOADAVG_START=$(cut -d" " -f1-3 /proc/loadavg)
RATE=${RATE:-2000}
DURATION=${DURATION:-10}
REPS=${REPS:-5}
PROXY_CPU=0
LOAD_CPU=1
UP_PORT=18080
UP_H2_PORT=18084
ADMIN_PORT=19901
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-profile.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit
OUT=${OUT:-$ROOT/docs/profile.md}

log() { echo "[profile] $*" >&2; }

require_tools "apt-get install linux-perf strace nginx util-linux python3 iproute2" perf strace nginx taskset python3 nstat
require_oha
if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi

upstream_conf "$WORK/up" $UP_PORT $UP_H2_PORT
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)
portico_conf "$WORK/portico.yaml" 18081 $UP_PORT $UP_H2_PORT
nginx_proxy_conf "$WORK/ngx" 18082 $UP_PORT
read -r PORTICO_PID _ < <(python3 "$ROOT/bench/conns.py" ready taskset -c $PROXY_CPU "$PROXY_BIN" \
    --config "$WORK/portico.yaml" --workers 1 --admin-addr 127.0.0.1:$ADMIN_PORT --log-level warn)
PIDS+=("$PORTICO_PID")
taskset -c $PROXY_CPU nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" &
NGINX_MASTER=$!
PIDS+=("$NGINX_MASTER")
for p in $UP_PORT 18081 18082; do wait_port "$p"; done
sleep 1
declare -A PID=([portico]=$PORTICO_PID [nginx]=$(pgrep -P "$NGINX_MASTER" | head -1))
declare -A PORT=([portico]=18081 [nginx]=18082)

# load PORT: oha at RATE req/s for DURATION s in the background (64 connections); its JSON
# goes to $WORK/oha.json. Sets LOAD.
load() {
    taskset -c $LOAD_CPU "$OHA" --no-tui -z "${DURATION}s" -c 64 -q "$RATE" --output-format json \
        "http://127.0.0.1:$1/" > "$WORK/oha.json" 2>/dev/null &
    LOAD=$!
}
# requests: the successful requests of the last load.
requests() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(v for k, v in d["statusCodeDistribution"].items() if k.startswith("2")))' "$WORK/oha.json"; }

declare -A SYSCALLS MIG
# col PROXY N: the median of column N of the per-round user/kernel/segments figures.
col() { awk -v c="$2" '{print $c}' "$WORK/$1.split" | median; }
# ticks PID: the user and system clock ticks the process has used (/proc/PID/stat, all threads).
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
for t in portico nginx; do
    log "$t (PID ${PID[$t]}): warm-up"
    taskset -c $LOAD_CPU "$OHA" --no-tui -z 2s -c 64 -q "$RATE" "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1 || true
    MIG[$t]=0
done
# perf stat: REPS interleaved rounds (portico, nginx, portico, ...); the table takes medians
# of the per-request figures, as single runs here differ by ±10%.
for rep in $(seq 1 "$REPS"); do
    for t in portico nginx; do
        log "$t: perf stat $rep/$REPS, ${DURATION}s at $RATE req/s"
        read -r u0 s0 < <(ticks "${PID[$t]}")
        nstat -n >/dev/null 2>&1 || true
        load "${PORT[$t]}"
        perf stat -x, -e task-clock,context-switches,cpu-migrations -p "${PID[$t]}" -o "$WORK/$t.stat" -- sleep "$DURATION" || true
        wait "$LOAD" || true
        read -r u1 s1 < <(ticks "${PID[$t]}")
        segs=$(nstat -z 2>/dev/null | awk '$1 == "TcpOutSegs" {print $2}')
        n=$(requests)
        awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" -v g="${segs:-0}" \
            'BEGIN { if (n > 0) printf "%.5f %.5f %.2f\n", u * 1000 / hz / n, s * 1000 / hz / n, g / n }' >> "$WORK/$t.split"
        awk -F, -v n="$n" '$3 == "task-clock" && n > 0 {printf "%.5f\n", $1 / n}' "$WORK/$t.stat" >> "$WORK/$t.cpu"
        awk -F, -v n="$n" '$3 == "context-switches" && n > 0 {printf "%.4f\n", $1 / n}' "$WORK/$t.stat" >> "$WORK/$t.csw"
        MIG[$t]=$((MIG[$t] + $(awk -F, '$3 == "cpu-migrations" {print $1 + 0}' "$WORK/$t.stat")))
    done
done

for t in portico nginx; do
    pid=${PID[$t]}
    log "$t: strace -c"
    load "${PORT[$t]}"
    timeout -s INT "$DURATION" strace -c -f -q -p "$pid" -o "$WORK/$t.strace" || true
    wait "$LOAD" || true
    SYSCALLS[$t]=$(requests)

    log "$t: perf record"
    load "${PORT[$t]}"
    perf record -q -e cpu-clock -F 997 --call-graph dwarf,16384 -p "$pid" -o "$WORK/$t.data" -- sleep "$DURATION" 2>/dev/null || true
    wait "$LOAD" || true
    perf report -i "$WORK/$t.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -n 30 > "$WORK/$t.self" || true
    perf report -i "$WORK/$t.data" --no-children --sort dso --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -n 8 > "$WORK/$t.dso" || true
done

# syscalls PROXY: "call calls/request" for the ten busiest calls of the strace phase.
syscalls() {
    # Columns: % time, seconds, usecs/call, calls, [errors], syscall.
    awk -v n="$2" 'NR > 2 && $1 ~ /^[0-9.]+$/ && $NF != "total" { c[$NF] = $4 } END { for (k in c) printf "%s %.2f\n", k, (n > 0 ? c[k] / n : 0) }' "$WORK/$1.strace" |
        sort -k2 -gr | head -n 10
}

{
    echo "# Where the CPU goes: portico-proxy and nginx at $RATE req/s"
    echo
    echo "Written by \`bench/profile.sh\` ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?');"
    echo "portico-proxy binary built $(date -u -r "$PROXY_BIN" '+%Y-%m-%d %H:%M UTC'))."
    echo "Each proxy runs one worker pinned to core $PROXY_CPU in front of the same nginx upstream"
    echo "(1 KiB body, keep-alive), loaded by oha at $RATE req/s over 64 connections from core $LOAD_CPU,"
    echo "as \`make bench\` runs them. Separate ${DURATION}-second phases per proxy: perf stat ($REPS rounds), strace -c,"
    echo "perf record (cpu-clock at 997 Hz, DWARF call stacks). Load average at start: $LOADAVG_START;"
    echo "$(nproc) cores; $(uname -r)."
    echo
    echo "Medians of $REPS interleaved perf stat rounds (each round's figure in brackets; user and kernel"
    echo "time from /proc/PID/stat and the machine's TCP segments from nstat over the same rounds):"
    echo
    echo "| | portico | nginx | portico / nginx |"
    echo "|---|---:|---:|---:|"
    pc=$(med portico.cpu); nc=$(med nginx.cpu)
    echo "| CPU ms per request | $pc [$(paste -sd' ' "$WORK/portico.cpu")] | $nc [$(paste -sd' ' "$WORK/nginx.cpu")] | $(ratio "$pc" "$nc") |"
    ps=$(med portico.csw); ns=$(med nginx.csw)
    echo "| context switches per request | $ps | $ns | $(ratio "$ps" "$ns") |"
    echo "| CPU migrations, all rounds | ${MIG[portico]} | ${MIG[nginx]} | |"
    pu=$(col portico 1); nu=$(col nginx 1); pk=$(col portico 2); nk=$(col nginx 2)
    echo "| user CPU ms per request (/proc/PID/stat, $((1000 / $(getconf CLK_TCK))) ms ticks) | $pu | $nu | $(ratio "$pu" "$nu") |"
    echo "| kernel CPU ms per request (same) | $pk | $nk | $(ratio "$pk" "$nk") |"
    pg=$(col portico 3); ng=$(col nginx 3)
    echo "| TCP segments sent per request, all sockets on the machine (nstat) | $pg | $ng | $(ratio "$pg" "$ng") |"
    echo
    # The floor: the kernel's share is work both proxies do alike (the same segments), so the
    # goal of issue 18 (0.85× nginx's CPU) leaves portico-proxy this much for its own code.
    awk -v nc="$nc" -v pk="$pk" -v nk="$nk" -v pu="$pu" -v nu="$nu" 'BEGIN {
        if (nc > 0 && pu > 0 && nu > 0) {
            goal = 0.85 * nc
            printf "0.85× nginx'"'"'s CPU per request is %.5f ms. Less the kernel time portico-proxy spends per request\n", goal
            printf "(%.5f ms; nginx %.5f ms), that leaves %.5f ms per request for its own code: %.0f%% of the\n", pk, nk, goal - pk, 100 * (goal - pk) / pu
            printf "%.5f ms it uses now, and %.0f%% of nginx'"'"'s own %.5f ms.\n", pu, 100 * (goal - pk) / nu, nu
        } }'
    echo
    for t in portico nginx; do
        echo "## $t"
        echo
        echo "System calls per request (strace -c, ${SYSCALLS[$t]} requests; strace slows the proxy, the counts hold):"
        echo
        echo '| call | per request |'
        echo '|---|---:|'
        syscalls "$t" "${SYSCALLS[$t]}" | awk '{printf "| %s | %s |\n", $1, $2}'
        echo
        echo "Self time by library (perf record):"
        echo
        echo '```'
        sed -E 's/^ +//; s/ +$//' "$WORK/$t.dso"
        echo '```'
        echo
        echo "Self time by function, top 30:"
        echo
        echo '```'
        # perf pads columns (and adds empty srcline columns for some binaries).
        sed -E 's/^ +//; s/( +-)+ *$//; s/ +$//; s/   +/  /g' "$WORK/$t.self" | cut -c1-150
        echo '```'
        echo
    done
} > "$OUT"
log "wrote $OUT"
