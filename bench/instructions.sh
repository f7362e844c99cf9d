#!/usr/bin/env bash
# User-space instructions per request (`make instructions`): portico-proxy and nginx, each one
# worker in front of the same nginx upstream (as `make bench` runs them), counted by callgrind
# over N requests at a low rate after a warm-up. Unlike CPU time, an instruction count does not
# move with the host's speed: the same binary gives the same figure within a fraction of a
# percent, so a change to the proxy's own code can be judged by it when bench/compare.sh's
# time figures (±5–10% run to run here) cannot tell. It says nothing about the kernel's share
# (the same for both proxies: see docs/profile.md) or about cache misses.
#
# Prints one table; with more than one binary, each is counted in turn (an A/B):
#
#   bench/instructions.sh                         # build, then portico-proxy and nginx
#   bench/instructions.sh BIN_A BIN_B [...]       # these builds and nginx
#   N=3000 RATE=300 TOP=25 bench/instructions.sh  # requests, rate, functions listed per binary
#
# Loopback only. Needs valgrind (apt-get install valgrind).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
N=${N:-3000}
RATE=${RATE:-300}
TOP=${TOP:-0}
UP_PORT=28080
PORT=28081
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-instructions.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit

log() { echo "[instructions] $*" >&2; }

require_tools "apt-get install valgrind nginx curl python3" valgrind callgrind_control callgrind_annotate nginx curl python3
require_oha
BINS=("$@")
if [[ ${#BINS[@]} -eq 0 ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    BINS=("$CARGO_TARGET_DIR/release/portico-proxy")
fi

upstream_conf "$WORK/up" $UP_PORT
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)
portico_conf "$WORK/portico.yaml" $PORT $UP_PORT
nginx_proxy_conf "$WORK/ngx" $PORT $UP_PORT
# One process: the worker is the process callgrind watches.
sed -i 's/^daemon off;/daemon off;\nmaster_process off;/' "$WORK/ngx/nginx.conf"
wait_port $UP_PORT

# count NAME CMD...: runs CMD under callgrind, loads it, and prints "NAME instructions/request";
# the profile is kept in $WORK/NAME.out.
count() {
    local name=$1
    shift
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.out" "$@" > "$WORK/$name.log" 2>&1 &
    local vg=$!
    PIDS+=("$vg")
    for _ in $(seq 1 300); do
        curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break
        sleep 0.2
    done
    # Warm-up: connections, the pools and the allocator's free lists are in place before the
    # counted requests.
    "$OHA" --no-tui -n 300 -c 16 -q "$RATE" "http://127.0.0.1:$PORT/" > /dev/null
    callgrind_control -z "$vg" > /dev/null
    "$OHA" --no-tui -n "$N" -c 16 -q "$RATE" --output-format json "http://127.0.0.1:$PORT/" > "$WORK/$name.json"
    callgrind_control -d "$vg" > /dev/null
    kill "$vg"
    wait "$vg" 2>/dev/null || true
    local ok
    ok=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sum(v for k, v in d["statusCodeDistribution"].items() if k.startswith("2")))' "$WORK/$name.json")
    if [[ $ok -ne $N ]]; then
        log "$name: only $ok of $N requests succeeded"
        exit 1
    fi
    # The dump holds the counted phase (the final profile, written at exit, holds the rest).
    local total
    total=$(callgrind_annotate "$WORK/$name.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    awk -v n="$N" -v t="$total" -v name="$name" 'BEGIN { printf "%s %.0f\n", name, t / n }' | tee -a "$WORK/table"
}

i=0
for bin in "${BINS[@]}"; do
    i=$((i + 1))
    name=portico
    [[ ${#BINS[@]} -gt 1 ]] && name=portico-$i
    log "$name: $bin"
    count "$name" "$bin" --config "$WORK/portico.yaml" --workers 1 --log-level warn > /dev/null
done
log "nginx"
count nginx nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" > /dev/null

echo
echo "User-space instructions per request (callgrind, $N requests at $RATE req/s over 16 connections"
echo "after 300 of warm-up; 1 KiB body, keep-alive both ways; $(date -u '+%Y-%m-%d %H:%M UTC')):"
echo
echo "| proxy | binary | instructions per request | / nginx |"
echo "|---|---|---:|---:|"
ngx=$(awk '$1 == "nginx" {print $2}' "$WORK/table")
i=0
while read -r name per; do
    bin=nginx
    if [[ $name != nginx ]]; then
        bin=${BINS[$i]}
        i=$((i + 1))
    fi
    echo "| $name | \`$bin\` | $per | $(ratio "$per" "$ngx") |"
done < "$WORK/table"
if [[ $TOP -gt 0 ]]; then
    for name in $(awk '$1 != "nginx" {print $1}' "$WORK/table"); do
        echo
        echo "$name, inclusive, top $TOP:"
        echo
        echo '```'
        callgrind_annotate --auto=no --inclusive=yes "$WORK/$name.out.1" 2>/dev/null |
            grep -E '^ *[0-9,]+ \(' | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##; s# \[[^]]*\]$##' |
            awk '!/libc-start|below main|__rust_begin_short_backtrace|::main$|:main$|0x0000/' | head -n "$TOP" | cut -c1-160
        echo '```'
    done
fi
