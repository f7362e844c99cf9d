#!/usr/bin/env bash
# Idle resident memory of portico-proxy, as `make bench` measures it (RssAnon + RssFile +
# RssShmem 1 s after start, same config and flags), with a per-mapping breakdown from smaps so
# a change can be traced to the binary, libc, ld.so, the heap or the stacks.
#
#   hack/idle-rss.sh [path/to/portico-proxy]   # default: the release build in $CARGO_TARGET_DIR
#                                               # or target/ (`make bench` builds in target/proxy)
#   RUNS=5 hack/idle-rss.sh                     # the median of several starts
#   COLD=0 hack/idle-rss.sh                     # keep the binary's pages cached (see evict)
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/portico-proxy}
BIN=$(realpath "$BIN")
RUNS=${RUNS:-3}
PID=
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null || true
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 500); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.01
    done
    echo "port $1 never opened" >&2; return 1
}

# Rss per mapping (binary, libc, ld.so, other libraries, [heap], [stack], anonymous), in kB.
# The binary's read-only part includes its RELRO pages, which the dynamic loader wrote and so
# count as anonymous memory.
breakdown() {
    awk -v bin="$BIN" '
        /^[0-9a-f]+-[0-9a-f]+ / {
            name = $6
            if (name == "") name = "anon"
            else if (name == bin) name = "binary"
            key = name " " $2
            next
        }
        /^Rss:/ { rss[key] += $2 }
        END { for (k in rss) if (rss[k] > 0) printf "  %-50s %6d kB\n", k, rss[k] }
    ' "/proc/$1/smaps" | sort -k3 -n -r
}

# How much of the binary a start maps depends on how its file sits in the page cache (the
# kernel maps whole large folios, and a freshly written file has other folios than one read
# back); drop the file's cached pages before each start, as on a node that runs it for the
# first time, so that runs compare. COLD=0 keeps them.
evict() {
    python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$1"
}

results=()
for run in $(seq 1 "$RUNS"); do
    [[ ${COLD:-1} == 1 ]] && evict "$BIN"
    taskset -c 0 "$BIN" --config hack/idle.yaml --workers 1 \
        --admin-addr 127.0.0.1:19901 --log-level warn &
    PID=$!
    wait_port 18081
    sleep 1
    read -r anon file < <(awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} /^RssShmem:/ {f += $2}
        END {print a + 0, f + 0}' "/proc/$PID/status")
    echo "run $run: anon $anon kB, file $file kB, total $((anon + file)) kB, threads $(ls /proc/$PID/task | wc -l)"
    if [[ $run == 1 ]]; then breakdown "$PID"; fi
    results+=("$anon $file")
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
done
# The start-up functions sidecar/build.rs asked the linker to put first: when many are missing
# (their names changed with a dependency or compiler update), rerun hack/startup-order.sh.
if [[ -f sidecar/startup.order ]]; then
    found=$(nm --defined-only "$BIN" | awk 'NR == FNR {want[$1] = 1; next} $3 in want' \
        sidecar/startup.order - | wc -l)
    echo "sidecar/startup.order: $found of $(wc -l < sidecar/startup.order) functions in the binary"
fi
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
anon=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | median)
file=$(printf '%s\n' "${results[@]}" | awk '{print $2}' | median)
total=$(printf '%s\n' "${results[@]}" | awk '{print $1 + $2}' | median)
awk -v a="$anon" -v f="$file" -v t="$total" \
    'BEGIN {printf "median of %d: anon %d kB, file %d kB, total %d kB (%.2f MB)\n", '"$RUNS"', a, f, t, t / 1024}'
