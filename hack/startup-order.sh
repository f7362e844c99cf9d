#!/usr/bin/env bash
# Regenerates sidecar/startup.order: the functions portico-proxy runs from exec until it idles
# (parse the flags and the config, start the runtime, bind, then the config file poll), which
# sidecar/build.rs hands to the linker (lld's --symbol-ordering-file) so that they sit together
# at the start of .text. An idle proxy then maps a few hundred kB of contiguous code instead of
# pieces of almost every 64 kB of its 5 MB of code (the kernel maps file pages around each
# fault), which is most of its resident memory.
#
# Symbol names carry hashes that change with the compiler and dependency versions, and an
# ordering file only ever names functions: a stale or partial one costs memory, never
# correctness. Rerun after a toolchain or dependency update, or when hack/idle-rss.sh shows the
# binary's code growing again:
#
#   cargo build --release -p portico-proxy && hack/startup-order.sh [path/to/portico-proxy]
#   cargo build --release -p portico-proxy     # relink with the new order
set -euo pipefail

cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-$PWD/target}/release/portico-proxy}
BIN=$(realpath "$BIN")
OUT=sidecar/startup.order
if ! command -v valgrind >/dev/null; then
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind
fi
WORK=$(mktemp -d /tmp/portico-order.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# Under callgrind the proxy runs some 50 times slower: 10 s covers the start and a few polls of
# the config file. SIGTERM makes it drain and exit, and callgrind writes its profile.
timeout -s TERM 10 valgrind -q --tool=callgrind --demangle=no --compress-strings=no \
    --compress-pos=no --callgrind-out-file="$WORK/callgrind.out" \
    "$BIN" --config hack/idle.yaml --workers 1 --admin-addr 127.0.0.1:19901 --log-level warn || true

# The functions of the binary that ran, by symbol name (what the linker matches).
python3 - "$BIN" "$WORK/callgrind.out" "$OUT" <<'PY'
import re, subprocess, sys

binary, profile, out = sys.argv[1:]
ran, obj = set(), None
for line in open(profile, errors="replace"):
    if line.startswith("ob="):
        obj = line[3:].strip()
    elif line.startswith("fn=") and obj == binary:
        ran.add(re.sub(r"'\d+$", "", line[3:].strip()))
nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True)
functions = {line.split(" ", 2)[2] for line in nm.stdout.splitlines() if line.split(" ")[1] in "tTwW"}
names = sorted(ran & functions)
if len(names) < 100:  # the proxy did not get far (a port in use?): keep the old list
    sys.exit(f"only {len(names)} functions ran; {out} left as it was")
with open(out, "w") as f:
    f.write("".join(name + "\n" for name in names))
print(f"{out}: {len(names)} functions", file=sys.stderr)
PY
