#!/usr/bin/env bash
# Sidecar-to-sidecar cost, mesh mTLS against plaintext (`make bench` runs it after
# bench/run.sh; alone: `bench/mesh.sh`). Writes docs/benchmarks-mesh.md.
#
# In a private network namespace (`unshare --net`: its own loopback, and the iptables rule below
# lives and dies with it), two release portico-proxy processes stand for two meshed pods:
#
#   load generator ─► proxy A (the caller's sidecar: HTTP and TCP listeners whose backend is the
#   (CPU 1)            other pod, 127.0.0.2:8080; in the mTLS run the endpoint carries the
#                      identity spiffe://bench/ns/bench/sa/b and A holds sa/a's certificate)
#                  ─► iptables nat OUTPUT REDIRECT 127.0.0.2:8080 → 127.0.0.1:4143, as portico-init
#                     redirects a pod's inbound traffic
#                  ─► proxy B (the callee's sidecar: INBOUND listener, sa/b's certificate; no
#                     inbound policy: the default mesh, permissive)
#                  ─► nginx on 127.0.0.1:8080 (the app: 1 KiB body), CPU 1
#
# A and B run with one worker each, both pinned to CPU 0; their CPU time is summed. Certificates
# come from openssl (an Ed25519 root, ECDSA P-256 workload keys, as in a cluster) and are loaded with the proxy's
# --identity-cert/--identity-key/--trust-anchors. Needs root (a network namespace).
#
#   REPS=3 RATE_DURATION=5 DURATION=10 bench/mesh.sh
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
if [[ -z ${PORTICO_BENCH_NETNS:-} ]]; then
    [[ $(id -u) -eq 0 ]] || { echo "bench/mesh.sh needs root (a private network namespace)" >&2; exit 1; }
    exec env PORTICO_BENCH_NETNS=1 unshare --net -- "$0" "$@"
fi
ip link set lo up

REPS=${REPS:-3}
DURATION=${DURATION:-10}
RATE_DURATION=${RATE_DURATION:-5}
RATE=2000
CONNS=64
NEW_CONNS=16
PROXY_CPU=0
LOAD_CPU=1
APP_PORT=8080
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-bench-mesh.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit
log() { echo "[bench mesh] $*" >&2; }

require_tools "bench/run.sh installs the tools" wrk nginx openssl iptables taskset python3
require_oha
if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi
HELPER="python3 $ROOT/bench/conns.py"

# --- certificates: a root, and workload certificates for sa/a and sa/b ----------------------
# As in a cluster: an Ed25519 root that is the issuer (the chart's), ECDSA P-256 workload keys
# (the proxies').
openssl req -x509 -newkey ed25519 -nodes -days 2 \
    -subj /CN=bench-mesh-root -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign -keyout "$WORK/ca.key" -out "$WORK/ca.crt" 2>/dev/null
for id in a b; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$id" \
        -keyout "$WORK/$id.key" -out "$WORK/$id.csr" 2>/dev/null
    printf 'subjectAltName=URI:spiffe://bench/ns/bench/sa/%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
        "$id" > "$WORK/$id.ext"
    openssl x509 -req -in "$WORK/$id.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" -days 2 \
        -extfile "$WORK/$id.ext" -out "$WORK/$id.crt" 2>/dev/null
done
identity() { echo --identity-cert "$WORK/$1.crt" --identity-key "$WORK/$1.key" --trust-anchors "$WORK/ca.crt"; }

# --- the app, the redirect, the two sidecars ------------------------------------------------
upstream_conf "$WORK/app" $APP_PORT
taskset -c $LOAD_CPU nginx -p "$WORK/app" -c "$WORK/app/nginx.conf" &
PIDS+=($!)
iptables -t nat -A OUTPUT -p tcp -d 127.0.0.2 --dport $APP_PORT -j REDIRECT --to-ports 4143

cat > "$WORK/b.yaml" <<CONF
apiVersion: portico.dev/proxy/v1
listeners: [{ name: inbound, address: "127.0.0.1:4143", protocol: INBOUND }]
CONF
# caller_conf FILE HTTP_PORT TCP_PORT [IDENTITY]
caller_conf() {
    cat > "$1" <<CONF
apiVersion: portico.dev/proxy/v1
listeners:
  - { name: web, address: "127.0.0.1:$2", protocol: HTTP }
  - { name: tcp, address: "127.0.0.1:$3", protocol: TCP, backend: b }
routes: [{ name: b, rules: [{ backends: [{ backend: b }] }] }]
backends: [{ name: b, endpoints: [{ address: "127.0.0.2:$APP_PORT"${4:+, identity: \"$4\"} }] }]
CONF
}
caller_conf "$WORK/a-plain.yaml" 18091 18093
caller_conf "$WORK/a-mtls.yaml" 18092 18094 spiffe://bench/ns/bench/sa/b

start() { # start NAME ADMIN_PORT ARGS... → the pid
    taskset -c $PROXY_CPU "$PROXY_BIN" --workers 1 --log-level warn --admin-addr "127.0.0.1:$2" "${@:3}" \
        > "$WORK/$1.log" 2>&1 &
    echo $!
}
declare -A PID
# Two B processes, one per run, so each run's CPU is its own: plaintext B has no identity (a
# mesh without mTLS), mTLS B has sa/b's.
PID[b-plain]=$(start b-plain 19913 --config "$WORK/b.yaml")
PIDS+=("${PID[b-plain]}")
wait_port 4143
PID[a-plain]=$(start a-plain 19911 --config "$WORK/a-plain.yaml")
PID[a-mtls]=$(start a-mtls 19912 --config "$WORK/a-mtls.yaml" $(identity a))
PIDS+=("${PID[a-plain]}" "${PID[a-mtls]}")
wait_port 18091; wait_port 18092; wait_port 18093; wait_port 18094; wait_port $APP_PORT
# Both B variants listen on 4143 in turn: `use_b plain|mtls` swaps them.
use_b() {
    local want=$1 other=plain
    [[ $want == plain ]] && other=mtls
    if [[ -n ${PID[b-$other]:-} ]]; then
        # SIGKILL: a SIGTERM'd proxy drains A's idle pooled connections for up to 15 s first.
        kill -KILL "${PID[b-$other]}" 2>/dev/null || true
        for _ in $(seq 1 500); do kill -0 "${PID[b-$other]}" 2>/dev/null || break; sleep 0.01; done
        unset "PID[b-$other]"
    fi
    if [[ -z ${PID[b-$want]:-} ]]; then
        if [[ $want == mtls ]]; then
            PID[b-mtls]=$(start b-mtls 19914 --config "$WORK/b.yaml" $(identity b))
        else
            PID[b-plain]=$(start b-plain 19913 --config "$WORK/b.yaml")
        fi
        PIDS+=("${PID[b-$want]}")
        wait_port 4143
        sleep 0.5
    fi
}
metric() { # metric ADMIN_PORT SERIES → value (0 when absent)
    python3 - "$1" "$2" <<'PY'
import sys, urllib.request
port, series = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
print(next((l.rsplit(" ", 1)[1] for l in text.splitlines() if l.startswith(series + " ")), "0"))
PY
}
declare -A HTTP_PORT=([plain]=18091 [mtls]=18092) TCP_PORT=([plain]=18093 [mtls]=18094) ADMIN=([plain]=19911 [mtls]=19912)
HANDSHAKES='portico_tls_handshakes_total{direction="outbound",result="ok"}'

# Check the paths before measuring: 200 through both, and the mTLS one really is mTLS.
for v in plain mtls; do
    use_b $v
    code=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:${HTTP_PORT[$v]}/').status)")
    [[ $code == 200 ]] || { echo "the $v path answered $code" >&2; exit 1; }
done
HS=$(metric 19912 "$HANDSHAKES")
[[ ${HS%.*} -ge 1 ]] || { echo "the mTLS caller made no mTLS handshake" >&2; exit 1; }

pair_cpu() { echo $(( $(cpu_ns "${PID[a-$1]}") + $(cpu_ns "${PID[b-$1]}") )); }

for rep in $(seq 1 "$REPS"); do
    for v in plain mtls; do
        use_b $v
        # (1) keep-alive requests at a fixed rate: latency and CPU of the two sidecars.
        log "oha -q $RATE $v rep $rep"
        taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z 1s -c $CONNS -q $RATE \
            "http://127.0.0.1:${HTTP_PORT[$v]}/" >/dev/null 2>&1 || true
        before=$(pair_cpu $v)
        taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z "${RATE_DURATION}s" -c $CONNS \
            -q $RATE --latency-correction "http://127.0.0.1:${HTTP_PORT[$v]}/" > "$WORK/oha.json" 2>/dev/null || true
        after=$(pair_cpu $v)
        read -r n p50 p99 _ < <($HELPER oha "$WORK/oha.json")
        echo "$p50" >> "$WORK/$v.p50"; echo "$p99" >> "$WORK/$v.p99"
        awk -v d=$((after - before)) -v n="$n" 'BEGIN { if (n > 0) printf "%.4f\n", d / 1e9 / n * 1000 }' >> "$WORK/$v.cpu"
        # (2) peak keep-alive throughput, closed loop.
        log "wrk $v rep $rep"
        taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s "http://127.0.0.1:${HTTP_PORT[$v]}/" |
            awk '/^Requests\/sec:/ {print $2}' >> "$WORK/$v.rps"
        # (3) new connections: each client connection to A's TCP listener is a new A → B
        # connection (with mTLS: a full TLS 1.3 handshake, both certificates verified).
        log "new connections $v rep $rep"
        hs0=$(metric "${ADMIN[$v]}" "$HANDSHAKES")
        before=$(pair_cpu $v)
        taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z "${RATE_DURATION}s" -c $NEW_CONNS \
            --disable-keepalive "http://127.0.0.1:${TCP_PORT[$v]}/" > "$WORK/oha.json" 2>/dev/null || true
        after=$(pair_cpu $v)
        hs1=$(metric "${ADMIN[$v]}" "$HANDSHAKES")
        read -r n _ _ _ < <($HELPER oha "$WORK/oha.json")
        awk -v n="$n" -v s="$RATE_DURATION" 'BEGIN { printf "%.0f\n", n / s }' >> "$WORK/$v.conns"
        awk -v d=$((after - before)) -v n="$n" 'BEGIN { if (n > 0) printf "%.4f\n", d / 1e9 / n * 1000 }' >> "$WORK/$v.conn_cpu"
        echo "$(( ${hs1%.*} - ${hs0%.*} )) $n" >> "$WORK/$v.handshakes"
    done
done

hs_per_conn() { awk '{h += $1; n += $2} END { if (n > 0) printf "%.2f", h / n; else print "—" }' "$WORK/$1.handshakes"; }
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
{
    echo "# Benchmarks: sidecar to sidecar, mTLS against plaintext"
    echo
    echo "Generated by \`bench/mesh.sh\` (part of \`make bench\`) on $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($CPU_MODEL); load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    echo "Two release portico-proxy processes stand for two meshed pods in a private network"
    echo "namespace: the caller's sidecar A (an HTTP listener and a TCP listener whose backend is the"
    echo "other pod) and the callee's sidecar B (its INBOUND listener, reached through an iptables"
    echo "REDIRECT as portico-init installs it), then nginx as the app (1 KiB body). A and B run one"
    echo "worker each on CPU $PROXY_CPU; the load generator and nginx on CPU $LOAD_CPU. **plaintext**: neither"
    echo "sidecar has an identity. **mTLS**: both hold workload certificates (ECDSA P-256 keys under"
    echo "an Ed25519 root, as the chart's issuer and the proxies make them), A connects to B with TLS 1.3, ALPN \`portico.mesh/h1\` or \`portico.mesh/tcp\`, both"
    echo "certificates verified; B terminates it and passes the caller's identity to the app. No"
    echo "inbound policy (the default mesh). CPU is A's plus B's. $REPS repetitions, medians."
    echo
    echo "| measurement | plaintext | mTLS | mTLS ÷ plaintext |"
    echo "|---|---:|---:|---:|"
    echo "| CPU-s per 1,000 requests at $RATE req/s (keep-alive, $CONNS connections) | $(med plain.cpu) | $(med mtls.cpu) | $(ratio "$(med mtls.cpu)" "$(med plain.cpu)") |"
    echo "| p50 ms at $RATE req/s (\`oha --latency-correction\`) | $(med plain.p50) | $(med mtls.p50) | $(ratio "$(med mtls.p50)" "$(med plain.p50)") |"
    echo "| p99 ms at $RATE req/s | $(med plain.p99) | $(med mtls.p99) | $(ratio "$(med mtls.p99)" "$(med plain.p99)") |"
    echo "| peak req/s, closed loop (\`wrk -c$CONNS\`, ${DURATION}s) | $(med plain.rps) | $(med mtls.rps) | $(ratio "$(med mtls.rps)" "$(med plain.rps)") |"
    echo "| new connections per second, closed loop (\`oha --disable-keepalive -c $NEW_CONNS\` through A's TCP listener: one A → B connection each) | $(med plain.conns) | $(med mtls.conns) | $(ratio "$(med mtls.conns)" "$(med plain.conns)") |"
    echo "| CPU-s per 1,000 new connections | $(med plain.conn_cpu) | $(med mtls.conn_cpu) | $(ratio "$(med mtls.conn_cpu)" "$(med plain.conn_cpu)") |"
    echo "| mTLS handshakes per new connection (A's \`portico_tls_handshakes_total\`) | $(hs_per_conn plain) | $(hs_per_conn mtls) | |"
    echo
    echo "Goal (issue 16): within 1.5× of plaintext. Keep-alive requests ride one pooled mTLS"
    echo "connection per pair of proxies, so their extra cost is the record encryption; a new"
    echo "connection pays a full TLS 1.3 handshake on both sides (two signatures, four verifications,"
    echo "X25519), which costs several times a loopback TCP connect: the goal is met for requests, not"
    echo "for new connections (no session resumption: every connection checks the peer's certificate)."
} > "$WORK/report.md"
cp "$WORK/report.md" "$ROOT/docs/benchmarks-mesh.md"
log "wrote docs/benchmarks-mesh.md"
cat "$ROOT/docs/benchmarks-mesh.md"
