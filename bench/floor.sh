#!/usr/bin/env bash
# The floor under issue 18's CPU goal (`make floor`): CPU per request of a forwarder that does
# nothing but move bytes (bench/floor: no routing, no header edits, no IDs, no metrics, no
# timeouts) on a raw epoll loop, on io_uring and on tokio (the runtime portico-proxy runs on), next to portico-proxy and nginx in the same
# interleaved runs of bench/compare.sh at 2,000 and 10,000 req/s. What the least possible user
# space costs against nginx says how far the goal of 0.85× nginx's CPU can be reached on this
# host by any proxy that uses the kernel's TCP sockets.
#
#   bench/floor.sh                    # build the floors and portico-proxy, then measure
#   PROXY_BIN=path/to/portico-proxy REPS=8 bench/floor.sh
#
# Loopback only. About 11 minutes with REPS=8 after the builds.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
export REPS=${REPS:-8}
FLOOR_TARGET=${FLOOR_TARGET:-$ROOT/target/floor}

log() { echo "[floor] $*" >&2; }
source "$ROOT/bench/lib.sh" # find_oha

# What bench/compare.sh needs, installed as bench/run.sh does on a fresh machine.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [[ -z $(find_oha) ]]; then
    log "oha not found: building it into ${OHA_ROOT:-$HOME/.cache/portico} (one time, several minutes)"
    env -u CARGO_TARGET_DIR cargo install oha --locked --root "${OHA_ROOT:-$HOME/.cache/portico}" >&2
fi

log "building the floors (release)"
CARGO_TARGET_DIR=$FLOOR_TARGET cargo build --release -q --manifest-path bench/floor/Cargo.toml
if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy} cargo build --release -q -p portico-proxy
    PROXY_BIN=${CARGO_TARGET_DIR:-$ROOT/target/proxy}/release/portico-proxy
fi

for rate in 2000 10000; do
    log "$rate req/s, $REPS interleaved runs"
    bench/compare.sh rate "$rate" "$FLOOR_TARGET/release/floor-epoll" "$FLOOR_TARGET/release/floor-uring" \
        "$FLOOR_TARGET/release/floor-tokio" "$PROXY_BIN" nginx
done
