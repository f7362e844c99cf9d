#!/usr/bin/env bash
# Protocols benchmark: portico-proxy next to nginx and haproxy, in one run, for
#   (1) HTTP/2 clients (h2c prior knowledge and TLS/ALPN h2) to an HTTP/1.1 upstream and to an
#       h2c upstream with gRPC-shaped requests,
#   (2) TLS termination: HTTP/1.1 and h2 over TLS, keep-alive and one new TLS connection per
#       request,
#   (3) two workers on the machine's two cores against one worker, HTTP/1.1 keep-alive.
# Each proxy has one worker pinned to CPU 0 (except in (3)); the upstream (the nginx of
# `make bench`, bench/lib.sh) and the load generators run on CPU 1. Repetitions are interleaved
# across targets, medians reported. Loopback only. Writes docs/benchmarks-protocols.md and exits
# non-zero when portico-proxy fails a case (the report says which and why).
#
#   REPS=5 DURATION=3 RATE_DURATION=3 WARMUP=1 bench/protocols.sh
#   PROXY_BIN=target/proxy/release/portico-proxy bench/protocols.sh   # skip the build
#
# A default run takes about 15½ minutes: per repetition 22 closed-loop runs of WARMUP + DURATION
# seconds and 24 fixed-rate runs of WARMUP + RATE_DURATION seconds (46 × 4 s × 5 repetitions).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOADAVG_START=$(cut -d" " -f1-3 /proc/loadavg)
STARTED=$(date +%s)
REPS=${REPS:-5}
DURATION=${DURATION:-3}           # seconds per closed-loop run, after WARMUP
RATE_DURATION=${RATE_DURATION:-3} # seconds per fixed-rate run (requests or new connections)
WARMUP=${WARMUP:-1}               # seconds of warm-up before every measurement
H2_RATE=${H2_RATE:-5000}          # (1) fixed rate, HTTP/2 requests per second
CONN_RATE=${CONN_RATE:-400}       # (2) new TLS connections per second (one request each)
H1_RATE=${H1_RATE:-10000}         # (3) fixed rate, HTTP/1.1 requests per second
CONNS=64                          # closed loop: connections (HTTP/2: 10 streams each)
STREAMS=10
H2_OHA_CONNS=4                    # fixed rate over HTTP/2: 4 connections × 16 streams
H2_OHA_STREAMS=16
PROXY_CPU=0
LOAD_CPU=1
UP_PORT=18500
UP_H2_PORT=18501
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-protocols.XXXXXX)
# shellcheck disable=SC1091 # checked on its own; sets PIDS and stops them on exit
source "$ROOT/bench/lib.sh"
mkdir -p "$WORK/r"
NCPU=$(nproc) # before this script pins itself to one CPU
# This script's own work (polling, curl, sampling) stays on the load core, off the proxies' core.
taskset -cp $LOAD_CPU $$ >/dev/null

log() { echo "[protocols] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_tools "bench/run.sh installs it: nginx, haproxy, nghttp2-client, wrk, curl, openssl, python3, util-linux" \
    nginx haproxy h2load wrk curl openssl python3 taskset
require_oha
if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi
[[ -x $PROXY_BIN ]] || die "no portico-proxy binary at $PROXY_BIN"
BIN_MTIME=$(stat -c %Y "$PROXY_BIN") # of the binary started below
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PER_REP=$((22 * (WARMUP + DURATION) + 24 * (WARMUP + RATE_DURATION)))
log "work dir $WORK; about $((REPS * PER_REP / 60 + 1)) minutes ($REPS repetitions of ~${PER_REP} s)"

# --- upstream: the nginx of `make bench` (1 KiB body; its http2 port answers POST with 200) ----
upstream_conf "$WORK/up" $UP_PORT $UP_H2_PORT
# At info level while the cases are checked (nginx logs why it refused a request only at info),
# back to warn before anything is measured.
sed -i 's|logs/error.log warn;|logs/error.log info;|' "$WORK/up/nginx.conf"
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)

# --- certificate: self-signed, ECDSA P-256 ---------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
chmod 644 "$WORK/tls.key" # nginx's workers run as nobody
cat "$WORK/tls.crt" "$WORK/tls.key" > "$WORK/tls.pem"
# A gRPC-shaped request body: one length-prefixed message of 32 bytes.
{ printf '\x00\x00\x00\x00\x20'; head -c 32 /dev/zero | tr '\0' 'g'; } > "$WORK/grpc.bin"

# --- proxies -----------------------------------------------------------------------------------
# Instances: portico, nginx, haproxy (one worker, CPU 0: sections 1, 2 and the one-worker half of
# 3) and portico2, nginx2, haproxy2 (two workers, CPUs 0-1: section 3), all running throughout.
PROXIES=(portico nginx haproxy)
declare -A HTTP_PORT=([portico]=18510 [nginx]=18520 [haproxy]=18530 [portico2]=18512 [nginx2]=18522 [haproxy2]=18532)
declare -A H2C_PORT=([portico]=18510 [nginx]=18523 [haproxy]=18530) # nginx: h2c needs its own port
declare -A TLS_PORT=([portico]=18511 [nginx]=18521 [haproxy]=18531)

# portico-proxy: one HTTP listener (HTTP/1.1 and h2c), one HTTPS listener (ALPN h2, http/1.1);
# `/grpc` goes to the upstream's h2c port through a `protocol: http2` backend.
portico_conf "$WORK/portico.yaml" "${HTTP_PORT[portico]}" $UP_PORT $UP_H2_PORT
sed -i "s|protocol: HTTP }]|protocol: HTTP }, { name: tls, address: \"127.0.0.1:${TLS_PORT[portico]}\", protocol: HTTPS, tls: { cert: { file: $WORK/tls.crt }, key: { file: $WORK/tls.key } } }]|" \
    "$WORK/portico.yaml"
grep -q 'protocol: HTTPS' "$WORK/portico.yaml" || die "could not add the HTTPS listener to portico.yaml (portico_conf changed?)"
portico_conf "$WORK/portico2.yaml" "${HTTP_PORT[portico2]}" $UP_PORT

# nginx: the `make bench` proxy setup plus h2c and TLS listeners; `/grpc` by grpc_pass (nginx
# speaks HTTP/2 to an upstream only through the gRPC module). TLS 1.3 enabled explicitly: nginx
# 1.22's default ssl_protocols stop at TLS 1.2.
mkdir -p "$WORK/ngx/logs"
{
    nginx_head "$WORK/ngx"
    cat <<CONF
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 10000000; }
    upstream up_h2 { server 127.0.0.1:$UP_H2_PORT; keepalive 128; keepalive_requests 10000000; }
    ssl_certificate $WORK/tls.crt;
    ssl_certificate_key $WORK/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:${HTTP_PORT[nginx]};
        listen 127.0.0.1:${H2C_PORT[nginx]} http2;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location /grpc { grpc_pass grpc://up_h2; }
    }
}
CONF
} > "$WORK/ngx/nginx.conf"
# Two workers, each accepting on its own socket (reuseport: the kernel spreads connections).
nginx_proxy_conf "$WORK/ngx2" "${HTTP_PORT[nginx2]}" $UP_PORT
sed -i "s|worker_processes 1;|worker_processes 2;|; s|listen 127.0.0.1:${HTTP_PORT[nginx2]};|listen 127.0.0.1:${HTTP_PORT[nginx2]} reuseport;|" \
    "$WORK/ngx2/nginx.conf"

# haproxy: an HTTP bind (HTTP/1.1, and h2c detected by its preface), a TLS bind with ALPN;
# `/grpc` to the upstream's h2c port (`proto h2`).
haproxy_cfg() { # FILE NBTHREAD HTTP_PORT [TLS_PORT]
    {
        haproxy_head "$2" 8000
        cat <<CONF
frontend fe
    bind 127.0.0.1:$3
${4:+    bind 127.0.0.1:$4 ssl crt $WORK/tls.pem alpn h2,http/1.1}
    use_backend be_h2 if { path_beg /grpc }
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
backend be_h2
    server up_h2 127.0.0.1:$UP_H2_PORT proto h2
CONF
    } > "$1"
}
haproxy_cfg "$WORK/haproxy.cfg" 1 "${HTTP_PORT[haproxy]}" "${TLS_PORT[haproxy]}"
haproxy_cfg "$WORK/haproxy2.cfg" 2 "${HTTP_PORT[haproxy2]}"

wait_port $UP_PORT
wait_port $UP_H2_PORT
declare -A MAIN_PID # the process to signal / check
declare -A CPU_PIDS # the processes whose CPU time is the proxy's (nginx: the workers)
start_portico() { # INSTANCE CPUS WORKERS ADMIN_PORT
    taskset -c "$2" "$PROXY_BIN" --config "$WORK/$1.yaml" --workers "$3" \
        --admin-addr "127.0.0.1:$4" --log-level warn >> "$WORK/$1.log" 2>&1 &
    MAIN_PID[$1]=$!; PIDS+=($!); CPU_PIDS[$1]=$!
}
start_nginx() { # INSTANCE DIR CPUS
    taskset -c "$3" nginx -p "$WORK/$2" -c "$WORK/$2/nginx.conf" &
    MAIN_PID[$1]=$!; PIDS+=($!)
}
start_haproxy() { # INSTANCE CPUS
    taskset -c "$2" haproxy -f "$WORK/$1.cfg" -db >> "$WORK/$1.log" 2>&1 &
    MAIN_PID[$1]=$!; PIDS+=($!)
}
start_portico portico $PROXY_CPU 1 19510
start_portico portico2 $PROXY_CPU,$LOAD_CPU 2 19512
start_nginx nginx ngx $PROXY_CPU
start_nginx nginx2 ngx2 $PROXY_CPU,$LOAD_CPU
start_haproxy haproxy $PROXY_CPU
start_haproxy haproxy2 $PROXY_CPU,$LOAD_CPU
for i in portico nginx haproxy portico2 nginx2 haproxy2; do
    wait_port "${HTTP_PORT[$i]}" || die "$i did not open port ${HTTP_PORT[$i]} (logs in $WORK)"
done
for t in "${PROXIES[@]}"; do wait_port "${TLS_PORT[$t]}" || die "$t did not open TLS port ${TLS_PORT[$t]}"; done
wait_port "${H2C_PORT[nginx]}"
sleep 1
for i in nginx nginx2; do
    CPU_PIDS[$i]=$(pgrep -P "${MAIN_PID[$i]}" | tr '\n' ' ' || true)
    [[ -n ${CPU_PIDS[$i]// /} ]] || die "no worker process under $i's master"
done
[[ $(wc -w <<< "${CPU_PIDS[nginx2]}") -eq 2 ]] || die "nginx2 should have two workers, has: ${CPU_PIDS[nginx2]}"
for i in haproxy haproxy2; do # -db stays in the foreground; a forked worker would be the child
    w=$(pgrep -P "${MAIN_PID[$i]}" | head -1 || true)
    CPU_PIDS[$i]=${w:-${MAIN_PID[$i]}}
done
portico_alive() {
    local i
    for i in portico portico2; do
        kill -0 "${MAIN_PID[$i]}" 2>/dev/null ||
            die "portico-proxy ($i) exited during the run; its log ($WORK/$i.log) ends with: $(tail -3 "$WORK/$i.log" | tr '\n' ' ')"
    done
}

# --- measurements ------------------------------------------------------------------------------
# Results: $WORK/r/CASE.PROXY.METRIC, one line per repetition; CASE.PROXY.fail holds why a cell
# could not be measured (the cell is then skipped in the later repetitions).
PORTICO_FAILS=()
fail_cell() { # CASE PROXY REASON
    local f="$WORK/r/$1.$2.fail" reason
    reason=$(tr '\n|' ' /' <<< "$3" | sed 's/  */ /g; s/ $//')
    [[ -e $f ]] && return 0
    echo "$reason" > "$f"
    log "FAILED: $2, case $1: $reason"
    if [[ $2 == portico ]]; then PORTICO_FAILS+=("${LABEL[$1]:-$1}: $reason"); fi
}
failed() { [[ -e "$WORK/r/$1.$2.fail" ]]; }
# Some answers of a run were errors, not most: its figures are kept and marked, the reason noted.
# GROUP: "rate" for the fixed-rate figures, "run" for the others.
warn_run() { # CASE PROXY GROUP REASON
    local reason runs
    reason=$(tr '\n|' ' /' <<< "$4" | sed 's/  */ /g; s/ $//')
    echo "repetition $rep: $reason" >> "$WORK/r/$1.$2.$3.warn"
    log "ERRORS: $2, case $1 ($3): $reason"
    runs="fixed-rate run"
    [[ $3 == run ]] && runs="closed-loop or new-connection run"
    if [[ $2 == portico ]]; then PORTICO_FAILS+=("${LABEL[$1]:-$1} ($runs, repetition $rep): $reason"); fi
}
# The proxies' own logs, for the reason of an error: an offset before a run, the last error line
# after it.
declare -A LOG_FILE=([portico]=$WORK/portico.log [portico2]=$WORK/portico2.log [nginx]=$WORK/ngx/logs/error.log
    [nginx2]=$WORK/ngx2/logs/error.log [haproxy]=$WORK/haproxy.log [haproxy2]=$WORK/haproxy2.log)
log_mark() { # INSTANCE ("" for none)
    [[ -n $1 ]] || { echo 0; return 0; }
    stat -c %s "${LOG_FILE[$1]:-/dev/null}" 2>/dev/null || echo 0
}
log_since() { # INSTANCE OFFSET
    local line
    [[ -n $1 ]] || return 0
    line=$(tail -c +$(($2 + 1)) "${LOG_FILE[$1]:-/dev/null}" 2>/dev/null | grep -i -E 'error|warn|crit|alert' | tail -1 |
        sed -E 's/^[0-9\/: ]+\[[a-z]+\] [0-9]+#[0-9]+: (\*[0-9]+ )?//; s/, client: .*$//' | cut -c1-300 || true)
    if [[ -n $line ]]; then echo "; $1 logged: $line"; fi
}
add() { echo "$4" >> "$WORK/r/$1.$2.$3"; } # CASE PROXY METRIC VALUE
cpu_of() { # INSTANCE: CPU ns of its processes, all threads (0 for none)
    local s=0 p pids
    [[ -n $1 ]] || { echo 0; return 0; }
    read -ra pids <<< "${CPU_PIDS[$1]}"
    for p in "${pids[@]}"; do s=$((s + $(cpu_ns "$p"))); done
    echo "$s"
}
per1k() { awk -v d="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.4f\n", d / 1e9 / n * 1000; else print "nan" }'; }

# Cases. Section 1: CLIENT_UPSTREAM; section 2: tls11_ka, tls11_new, tls2_new (h2 over TLS
# keep-alive is section 1's tls_h1); section 3: w1, w2 (HTTP/1.1, one and two workers).
S1_CASES=(h2c_h1 h2c_grpc tls_h1 tls_grpc)
declare -A LABEL=(
    [h2c_h1]="h2c (prior knowledge) → HTTP/1.1 upstream, GET"
    [h2c_grpc]="h2c (prior knowledge) → h2c upstream, gRPC-shaped POST"
    [tls_h1]="h2 over TLS (ALPN) → HTTP/1.1 upstream, GET"
    [tls_grpc]="h2 over TLS (ALPN) → h2c upstream, gRPC-shaped POST"
    [tls11_ka]="HTTP/1.1 over TLS, keep-alive"
    [tls11_new]="HTTP/1.1 over TLS, new connection per request"
    [tls2_new]="h2 over TLS, new connection per request"
    [w1]="HTTP/1.1 keep-alive, one worker"
    [w2]="HTTP/1.1 keep-alive, two workers"
)
case_url() { # CASE PROXY
    local path=/
    [[ $1 == *_grpc ]] && path=/grpc
    case $1 in
        h2c_*) echo "http://127.0.0.1:${H2C_PORT[$2]}$path" ;;
        w1) echo "http://127.0.0.1:${HTTP_PORT[$2]}/" ;;
        w2) echo "http://127.0.0.1:${HTTP_PORT[${2}2]}/" ;;
        *) echo "https://127.0.0.1:${TLS_PORT[$2]}$path" ;;
    esac
}
case_inst() { if [[ $1 == w2 ]]; then echo "${2}2"; else echo "$2"; fi; } # CASE PROXY
# Client arguments for CASE: H2LOAD_ARGS, OHA_ARGS, CURL_ARGS, WANT_VERSION (curl's), WANT_ALPN
# (h2load's "Application protocol").
case_setup() {
    H2LOAD_ARGS=(); OHA_ARGS=(); CURL_ARGS=(); WANT_VERSION=2; WANT_ALPN=h2
    case $1 in
        h2c_*) CURL_ARGS=(--http2-prior-knowledge); OHA_ARGS=(--http2); WANT_ALPN=h2c ;;
        tls_* | tls2_*) CURL_ARGS=(-k --http2); OHA_ARGS=(--http2 --insecure) ;;
        tls11_*) CURL_ARGS=(-k --http1.1); H2LOAD_ARGS=(--h1); WANT_VERSION=1.1; WANT_ALPN=http/1.1 ;;
        w1 | w2) WANT_VERSION=1.1; WANT_ALPN=http/1.1 ;;
    esac
    if [[ $1 == *_grpc ]]; then
        H2LOAD_ARGS+=(-H "content-type: application/grpc" -d "$WORK/grpc.bin")
        OHA_ARGS+=(-m POST -H "content-type: application/grpc" -D "$WORK/grpc.bin")
        CURL_ARGS+=(-H "content-type: application/grpc" --data-binary "@$WORK/grpc.bin")
    fi
}

# One request with curl before anything is measured: status 200 and the expected HTTP version,
# else the cell fails with what went wrong (the upstream's own complaint when it refused it).
preflight() { # CASE PROXY
    local c=$1 t=$2 url out code ver reason="" size server why
    url=$(case_url "$c" "$t")
    case_setup "$c"
    for _ in 1 2 3; do
        size=$(stat -c %s "$WORK/up/logs/error.log")
        out=$(curl -sS --max-time 5 -o "$WORK/pre.body" -D "$WORK/pre.head" -w '%{http_code} %{http_version}' \
            "${CURL_ARGS[@]}" "$url" 2> "$WORK/pre.err" || true)
        read -r code ver <<< "$out"
        if [[ $code == 200 && $ver == "$WANT_VERSION" ]]; then return 0; fi
        if [[ $code == 000 || -z $code ]]; then
            reason="no response: $(head -c 200 "$WORK/pre.err")"
        elif [[ $code != 200 ]]; then
            server=$(awk -F': *' 'tolower($1) == "server" { sub(/\r$/, "", $2); print $2 }' "$WORK/pre.head" | head -1)
            sleep 0.1
            why=$(tail -c +$((size + 1)) "$WORK/up/logs/error.log" | grep -E '\[(info|warn|error|crit)\]' |
                grep -v -E 'keepalive connection|closed connection' | tail -1 |
                sed -E 's/^[0-9\/: ]+\[[a-z]+\] [0-9]+#[0-9]+: (\*[0-9]+ )?//; s/, client: .*$//' || true)
            reason="HTTP $code to \`curl ${CURL_ARGS[*]//$WORK/\$WORK} $url\` (response header server: ${server:-none})${why:+; the upstream nginx logged: $why}"
        else
            reason="answered over HTTP/$ver, expected HTTP/$WANT_VERSION"
        fi
        sleep 0.2
    done
    fail_cell "$c" "$t" "$reason"
}

# The outcome of an h2load run in $WORK/gen.out: "done ok alpn". ok: done less failed (h2load counts
# error statuses and broken streams as failed; its per-status tally is not used, as it misses the
# answers whose headers came during the warm-up). alpn: "h2c" when h2load reported none.
h2load_counts() {
    awk '/^requests:/ { d = $6; f = $10 } /^Application protocol:/ { a = $3 }
        END { print d + 0, d - f, (a == "" ? "h2c" : a) }' "$WORK/gen.out"
}
# Whether to keep a run's figures: not when the protocol was not the one asked for or under 90% of
# the answers were 2xx (the cell fails); kept but marked when under 99.9% were.
h2load_check() { # CASE PROXY INSTANCE LOG_OFFSET DONE OK ALPN
    local detail
    if [[ $7 != "$WANT_ALPN" ]]; then fail_cell "$1" "$2" "h2load negotiated $7, expected $WANT_ALPN"; return 1; fi
    detail=$(grep -E '^(requests|status codes):' "$WORK/gen.out" | tr '\n' ';' || true)
    if (($5 == 0 || $6 * 10 < $5 * 9)); then
        fail_cell "$1" "$2" "h2load: ${detail:-no summary: $(tail -2 "$WORK/gen.out" | tr '\n' ' ')}$(log_since "$3" "$4")"
        return 1
    fi
    if (($6 * 1000 < $5 * 999)); then
        warn_run "$1" "$2" run "h2load: $(($5 - $6)) of $5 requests failed ($detail)$(log_since "$3" "$4")"
    fi
}

# Closed loop, h2load: CONNS connections (HTTP/2: STREAMS streams each), WARMUP s of warm-up
# then DURATION s measured; CPU sampled when h2load announces the start and end of the
# measured phase. Records req/s and CPU-s per 1,000 requests.
run_h2load_closed() { # CASE PROXY
    local c=$1 t=$2 inst url gen c0="" c1="" ndone ok alpn m=$STREAMS mark
    failed "$c" "$t" && return 0
    inst=$(case_inst "$c" "$t"); url=$(case_url "$c" "$t")
    case_setup "$c"
    mark=$(log_mark "$inst")
    [[ $c == tls11_* ]] && m=1
    log "h2load $c $t rep $rep"
    : > "$WORK/gen.out"
    taskset -c $LOAD_CPU h2load -t1 -c $CONNS -m $m -D "$DURATION" --warm-up-time "$WARMUP" \
        "${H2LOAD_ARGS[@]}" "$url" > "$WORK/gen.out" 2>&1 &
    gen=$!
    sleep "$(awk -v w="$WARMUP" 'BEGIN { print (w > 0.1 ? w - 0.05 : 0) }')"
    while kill -0 $gen 2>/dev/null; do
        if [[ -z $c0 ]] && grep -q 'Main benchmark duration is started' "$WORK/gen.out"; then
            c0=$(cpu_of "$inst")
            sleep "$(awk -v d="$DURATION" 'BEGIN { print (d > 0.1 ? d - 0.05 : 0) }')"
        fi
        if [[ -n $c0 ]] && grep -q 'Main benchmark duration is over' "$WORK/gen.out"; then c1=$(cpu_of "$inst"); break; fi
        sleep 0.005
    done
    wait $gen || true
    [[ -n $c0 ]] || c0=0
    [[ -n $c1 ]] || c1=$(cpu_of "$inst")
    read -r ndone ok alpn < <(h2load_counts)
    h2load_check "$c" "$t" "$inst" "$mark" "$ndone" "$ok" "$alpn" || return 0
    if [[ $url == https:* ]]; then
        grep -E '^(TLS Protocol|Cipher|Server Temp Key):' "$WORK/gen.out" | awk -F': ' '{printf "%s ", $2}' > "$WORK/r/tls.$t" || true
    fi
    add "$c" "$t" rps "$(awk '/^finished in/ { print $4 }' "$WORK/gen.out")"
    add "$c" "$t" cpu "$(per1k $((c1 - c0)) "$ndone")"
}

# New TLS connections at a fixed rate: h2load in rate mode starts CONN_RATE/100 clients every
# 10 ms, CONN_RATE × RATE_DURATION in all, each making one request on its own connection (a full
# handshake: h2load does not resume TLS sessions) and closing it. Records connections per second
# achieved, CPU-s per 1,000 connections, mean connect (TCP + TLS) and first-byte times.
run_h2load_new() { # CASE PROXY
    local c=$1 t=$2 url n wn per c0 c1 ndone ok alpn secs gen_cpu mark TIMEFORMAT='%U %S'
    failed "$c" "$t" && return 0
    url=$(case_url "$c" "$t")
    case_setup "$c"
    per=$((CONN_RATE / 100)); ((per > 0)) || per=1
    n=$((per * 100 * RATE_DURATION)); wn=$((per * 100 * WARMUP))
    log "h2load new connections $c $t rep $rep"
    taskset -c $LOAD_CPU h2load -t1 -r $per --rate-period 10ms -c $wn -n $wn "${H2LOAD_ARGS[@]}" "$url" >/dev/null 2>&1 || true
    mark=$(log_mark "$t")
    c0=$(cpu_of "$t")
    { time taskset -c $LOAD_CPU h2load -t1 -r $per --rate-period 10ms -c $n -n $n "${H2LOAD_ARGS[@]}" "$url" \
        > "$WORK/gen.out" 2>&1 || true; } 2> "$WORK/time.out"
    c1=$(cpu_of "$t")
    gen_cpu=$(awk '{ printf "%.0f", ($1 + $2) * 1e9 }' "$WORK/time.out")
    read -r ndone ok alpn < <(h2load_counts)
    h2load_check "$c" "$t" "$t" "$mark" "$ndone" "$ok" "$alpn" || return 0
    secs=$(awk '/^finished in/ { v = $3; sub(/,$/, "", v); n = v + 0; if (v ~ /ms$/) n /= 1000; print n }' "$WORK/gen.out")
    add "$c" "$t" cps "$(awk -v d="$ndone" -v s="$secs" 'BEGIN { printf "%.1f\n", d / s }')"
    add "$c" "$t" cpu "$(per1k $((c1 - c0)) "$ndone")"
    add "$c" "$t" gencpu "$(per1k "$gen_cpu" "$ndone")"
    add "$c" "$t" connect_ms "$(to_ms "$(awk '/^time for connect:/ { print $6 }' "$WORK/gen.out")")"
    add "$c" "$t" ttfb_ms "$(to_ms "$(awk '/^time to 1st byte:/ { print $7 }' "$WORK/gen.out")")"
}

# oha's JSON: "answered 2xx p50_ms p99_ms errors" (errors: other than the requests cut off at the
# deadline).
oha_stats() {
    python3 - "$1" <<'PY'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    print("0 0 nan nan oha wrote no result")
    sys.exit()
codes = d.get("statusCodeDistribution", {})
n = sum(codes.values())
ok = sum(v for k, v in codes.items() if k.startswith("2"))
p = d.get("latencyPercentiles", {})
ms = lambda k: "nan" if p.get(k) is None else f"{p[k] * 1000:.3f}"
errs = {k: v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k}
other = {k: v for k, v in codes.items() if not k.startswith("2")}
print(n, ok, ms("p50"), ms("p99"), f"status {other} errors {errs}".replace("\n", " "))
PY
}

# Fixed rate, open loop (oha -q, --latency-correction), after a WARMUP s run at the same rate.
# Records p50/p99 (ms), requests answered per second and CPU-s per 1,000 requests.
run_oha_rate() { # CASE PROXY RATE
    local c=$1 t=$2 rate=$3 inst url c0 c1 n ok p50 p99 errs mark conn=(-c "$CONNS")
    failed "$c" "$t" && return 0
    inst=$(case_inst "$c" "$t"); url=$(case_url "$c" "$t")
    case_setup "$c"
    [[ $WANT_VERSION == 2 ]] && conn=(-c "$H2_OHA_CONNS" -p "$H2_OHA_STREAMS")
    log "oha -q $rate $c $t rep $rep"
    taskset -c $LOAD_CPU "$OHA" --no-tui -z "${WARMUP}s" "${conn[@]}" -q "$rate" "${OHA_ARGS[@]}" "$url" >/dev/null 2>&1 || true
    mark=$(log_mark "$inst")
    c0=$(cpu_of "$inst")
    taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z "${RATE_DURATION}s" "${conn[@]}" -q "$rate" \
        --latency-correction "${OHA_ARGS[@]}" "$url" > "$WORK/oha.json" 2>/dev/null || true
    c1=$(cpu_of "$inst")
    read -r n ok p50 p99 errs < <(oha_stats "$WORK/oha.json")
    if ((n == 0 || ok * 10 < n * 9)); then
        fail_cell "$c" "$t" "oha at $rate req/s: $ok of $n answers 2xx; $errs$(log_since "$inst" "$mark")"
        return 0
    fi
    if ((ok * 1000 < n * 999)); then
        warn_run "$c" "$t" rate "oha at $rate req/s: $((n - ok)) of $n answers not 2xx: $errs$(log_since "$inst" "$mark")"
    fi
    add "$c" "$t" p50 "$p50"
    add "$c" "$t" p99 "$p99"
    add "$c" "$t" answered "$(awk -v n="$n" -v d="$RATE_DURATION" 'BEGIN { printf "%.0f\n", n / d }')"
    add "$c" "$t" ratecpu "$(per1k $((c1 - c0)) "$n")"
}

# Closed loop, wrk (HTTP/1.1, as `make bench`), after a WARMUP s run.
run_wrk() { # CASE PROXY
    local c=$1 t=$2 inst url c0 c1 n non2xx mark
    failed "$c" "$t" && return 0
    if [[ $t == direct ]]; then
        inst=""; url="http://127.0.0.1:$UP_PORT/"
    else
        inst=$(case_inst "$c" "$t"); url=$(case_url "$c" "$t")
    fi
    log "wrk $c $t rep $rep"
    taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    mark=$(log_mark "$inst")
    c0=$(cpu_of "$inst")
    taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d"${DURATION}s" "$url" > "$WORK/gen.out" 2>&1 || true
    c1=$(cpu_of "$inst")
    n=$(awk '/ requests in / { print $1 }' "$WORK/gen.out")
    non2xx=$(awk '/^ *Non-2xx or 3xx responses:/ { print $NF }' "$WORK/gen.out")
    if [[ -z $n ]] || ((n == 0 || ${non2xx:-0} * 10 > n)); then
        fail_cell "$c" "$t" "wrk: ${n:-0} requests, ${non2xx:-0} non-2xx/3xx; $(grep -E 'Socket errors' "$WORK/gen.out" || true)$(log_since "$inst" "$mark")"
        return 0
    fi
    if ((${non2xx:-0} * 1000 > n)); then
        warn_run "$c" "$t" run "wrk: $non2xx of $n answers not 2xx/3xx$(log_since "$inst" "$mark")"
    fi
    add "$c" "$t" rps "$(awk '/^Requests\/sec:/ { print $2 }' "$WORK/gen.out")"
    add "$c" "$t" cpu "$(per1k $((c1 - c0)) "$n")"
}

# --- check every cell once, then measure -------------------------------------------------------
ALL_CASES=("${S1_CASES[@]}" tls11_ka tls11_new tls2_new w1 w2)
for c in "${ALL_CASES[@]}"; do
    for t in "${PROXIES[@]}"; do preflight "$c" "$t"; done
done
sed -i 's|logs/error.log info;|logs/error.log warn;|' "$WORK/up/nginx.conf"
nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" -s reload 2> "$WORK/reload.err" ||
    die "reloading the upstream failed: $(cat "$WORK/reload.err")"
sleep 1

for rep in $(seq 1 "$REPS"); do
    # (1) HTTP/2 clients: closed loop, then a fixed rate.
    for c in "${S1_CASES[@]}"; do for t in "${PROXIES[@]}"; do run_h2load_closed "$c" "$t"; done; done
    for c in "${S1_CASES[@]}"; do for t in "${PROXIES[@]}"; do run_oha_rate "$c" "$t" "$H2_RATE"; done; done
    # (2) TLS termination: HTTP/1.1 keep-alive, new connections (HTTP/1.1, h2).
    for t in "${PROXIES[@]}"; do run_h2load_closed tls11_ka "$t"; done
    for c in tls11_new tls2_new; do for t in "${PROXIES[@]}"; do run_h2load_new "$c" "$t"; done; done
    # (3) One worker and two, HTTP/1.1 keep-alive: closed loop, then a fixed rate.
    run_wrk w1 direct # the ceiling of the load core: wrk straight to the upstream
    for t in "${PROXIES[@]}"; do for c in w1 w2; do run_wrk "$c" "$t"; done; done
    for t in "${PROXIES[@]}"; do for c in w1 w2; do run_oha_rate "$c" "$t" "$H1_RATE"; done; done
    portico_alive
done
LOADAVG_END=$(cut -d" " -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - STARTED))

# --- report ------------------------------------------------------------------------------------
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == v + 0) printf "%.*f", d, v; else print "—" }'; }
# Median of a cell's metric (full precision: lib.sh's median rounds an even count's to 3 places),
# empty when the cell failed or has no figures.
val() { # CASE PROXY METRIC
    if failed "$1" "$2" || [[ ! -s "$WORK/r/$1.$2.$3" ]]; then return 0; fi
    sort -g "$WORK/r/$1.$2.$3" | awk '{ a[NR] = $1 } END {
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.10g\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
# Notes under a table: why a cell failed, or which of its runs had error answers. note_setup
# numbers them for the cases of one table (NOTE_ID[CASE.PROXY.KIND], KIND: fail, run.warn,
# rate.warn); the cells refer to them as [n].
declare -A NOTE_ID
NOTES=()
note_setup() { # CASES...
    local c t k what
    NOTE_ID=(); NOTES=()
    for c in "$@"; do
        for t in "${PROXIES[@]}"; do
            for k in fail run.warn rate.warn; do
                [[ -s "$WORK/r/$c.$t.$k" ]] || continue
                case $k in
                    fail) what="not measured" ;;
                    run.warn) what="error answers in the closed-loop runs" ;;
                    rate.warn) what="error answers in the fixed-rate runs" ;;
                esac
                [[ $c == *_new ]] && what=${what/closed-loop/new-connection}
                NOTES+=("$t, ${LABEL[$c]:-$c}, $what: $(awk '{ printf "%s%s", (NR > 1 ? "; " : ""), $0 }' "$WORK/r/$c.$t.$k")")
                NOTE_ID[$c.$t.$k]=${#NOTES[@]}
            done
        done
    done
}
print_notes() {
    local i
    ((${#NOTES[@]})) || return 0
    echo
    for i in "${!NOTES[@]}"; do echo "[$((i + 1))] ${NOTES[$i]}"; echo; done
}
# A table cell: the median to DECIMALS places (with each repetition's figure when REPS is set),
# "failed" when the cell could not be measured, and the note saying why.
cell() { # CASE PROXY METRIC DECIMALS [reps]
    local v reps kind=run.warn mark=""
    if failed "$1" "$2"; then echo "**failed** [${NOTE_ID[$1.$2.fail]:-?}]"; return 0; fi
    case $3 in p50 | p99 | ratecpu | answered) kind=rate.warn ;; esac
    [[ -n ${NOTE_ID[$1.$2.$kind]:-} ]] && mark=" ⚠ [${NOTE_ID[$1.$2.$kind]}]"
    v=$(val "$1" "$2" "$3")
    [[ -n $v ]] || { echo "—"; return 0; }
    if [[ -n ${5:-} ]]; then
        reps=$(awk -v d="$4" '{ printf "%s%.*f", (NR > 1 ? ", " : ""), d, $1 }' "$WORK/r/$1.$2.$3")
        echo "$(fmt "$v" "$4") ($reps)$mark"
    else
        echo "$(fmt "$v" "$4")$mark"
    fi
}
row() { # LABEL CASE METRIC DECIMALS [reps]
    local p n h
    p=$(val "$2" portico "$3"); n=$(val "$2" nginx "$3"); h=$(val "$2" haproxy "$3")
    echo "| $1 | $(cell "$2" portico "$3" "$4" "${5:-}") | $(cell "$2" nginx "$3" "$4" "${5:-}") | $(cell "$2" haproxy "$3" "$4" "${5:-}") | $(ratio "$p" "$n") | $(ratio "$p" "$h") |"
}
# Derived per proxy: FUNC of medians (scaling: case w2 over w1 of one metric).
scaling() { # METRIC PROXY
    local a b
    a=$(val w2 "$2" "$1"); b=$(val w1 "$2" "$1")
    [[ -n $a && -n $b ]] && ratio "$a" "$b"
    return 0
}
scaling_row() { # LABEL METRIC
    local p n h
    p=$(scaling "$2" portico); n=$(scaling "$2" nginx); h=$(scaling "$2" haproxy)
    echo "| $1 | ${p:-—} | ${n:-—} | ${h:-—} | $(ratio "${p:-x}" "${n:-0}") | $(ratio "${p:-x}" "${h:-0}") |"
}
# Connections per second a fully busy core would accept at the measured CPU cost.
implied_row() { # CASE
    local p n h
    implied() { local v; v=$(val "$1" "$2" cpu); [[ -n $v ]] && awk -v c="$v" 'BEGIN { if (c > 0) printf "%.0f", 1000 / c }'; return 0; }
    p=$(implied "$1" portico); n=$(implied "$1" nginx); h=$(implied "$1" haproxy)
    echo "| ↳ ceiling implied on one core (1,000 / CPU-s per 1,000), conn/s | ${p:-—} | ${n:-—} | ${h:-—} | $(ratio "${p:-x}" "${n:-0}") | $(ratio "${p:-x}" "${h:-0}") |"
}
short_rate_notes() { # CASES... : fixed-rate cells that answered < 95% of the offered rate
    local c t a rate first=1
    for c in "$@"; do
        rate=$H2_RATE; [[ $c == w* ]] && rate=$H1_RATE
        for t in "${PROXIES[@]}"; do
            a=$(val "$c" "$t" answered)
            [[ -n $a ]] || continue
            awk -v a="$a" -v r="$rate" 'BEGIN { exit !(a < 0.95 * r) }' || continue
            [[ -n $first ]] && echo && first=""
            echo "- $t, ${LABEL[$c]:-$c}: answered $(fmt "$a" 0) req/s of the $rate offered (median), so its latency and CPU figures are not at the nominal rate."
        done
    done
    return 0
}
HDR="| case / metric | portico | nginx | haproxy | portico / nginx | portico / haproxy |"
SEP="|---|---:|---:|---:|---:|---:|"
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain -- sidecar 2>/dev/null | wc -l)
BUILT=$(date -u -d "@$BIN_MTIME" '+%Y-%m-%d %H:%M UTC')
REBUILT=""
if [[ $(stat -c %Y "$PROXY_BIN" 2>/dev/null || echo 0) != "$BIN_MTIME" ]]; then
    REBUILT=" (the file was replaced during the run; the figures are of the binary started at the beginning)"
fi
tls_info() { if [[ -s "$WORK/r/tls.$1" ]]; then sed 's/ *$//' "$WORK/r/tls.$1"; else echo "not seen"; fi; }
{
    echo "# Benchmarks: HTTP/2, TLS termination, two workers"
    echo
    echo "Generated by \`bench/protocols.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in $((ELAPSED / 60)) min $((ELAPSED % 60)) s."
    echo
    echo "## Machine and method"
    echo
    echo "- Commit $COMMIT ($DIRTY uncommitted file(s) under sidecar/ when the run started); portico-proxy binary \`${PROXY_BIN#"$ROOT"/}\` built $BUILT$REBUILT."
    echo "- $NCPU CPUs ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)."
    echo "- Load average at the start: $LOADAVG_START; at the end: $LOADAVG_END. When other work runs on the machine, absolute figures move a lot between runs; compare the columns of one run."
    echo "- Tools: $(h2load --version | head -1), wrk $(wrk -v 2>&1 | awk 'NR == 1 {print $2}'), $("$OHA" --version | head -1), nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), haproxy $(haproxy -v | awk 'NR == 1 {print $3}'), $(openssl version | awk '{print $1, $2}'), curl $(curl --version | awk 'NR == 1 {print $2}')."
    echo "- Upstream: the nginx of \`make bench\` (bench/lib.sh \`upstream_conf\`): one worker on CPU $LOAD_CPU, 1 KiB body, keep-alive; its \`http2\` port (h2c) answers a POST with the same page and status 200 (\`error_page 405 =200\`). The gRPC-shaped requests are \`POST /grpc\` with \`content-type: application/grpc\` and a $(stat -c %s "$WORK/grpc.bin")-byte body (one length-prefixed message); the answer is that page, not a gRPC response (no trailers)."
    echo "- Proxies, one worker each pinned to CPU $PROXY_CPU (section 3 adds two-worker instances on CPUs $PROXY_CPU-$LOAD_CPU): portico-proxy \`--workers 1 --log-level warn\`, one HTTP listener (HTTP/1.1 and h2c) and one HTTPS listener (ALPN h2, http/1.1), \`/grpc\` to a \`protocol: http2\` backend; nginx \`worker_processes 1\`, upstream keep-alive, h2c on its own \`listen … http2\` port (nginx cannot serve HTTP/1.1 and h2c on one port), \`listen … ssl http2\`, \`ssl_protocols TLSv1.2 TLSv1.3\`, \`/grpc\` by \`grpc_pass grpc://\` (nginx speaks HTTP/2 upstream only through its gRPC module); haproxy \`nbthread 1\`, \`http-reuse always\`, h2c detected on the HTTP bind, \`bind … ssl alpn h2,http/1.1\`, \`/grpc\` to \`server … proto h2\`."
    echo "- TLS: a self-signed ECDSA P-256 certificate made by openssl for the run. Negotiated (h2load): portico $(tls_info portico); nginx $(tls_info nginx); haproxy $(tls_info haproxy)."
    echo "- Load generators on CPU $LOAD_CPU with the upstream. $REPS repetition(s) of every measurement, interleaved (repetition 1 of every case and proxy, then 2…); medians reported, and each repetition's figure for CPU. A warm-up of ${WARMUP} s before every measurement."
    echo "- Closed loop: \`h2load -t1 -c $CONNS -m $STREAMS -D $DURATION --warm-up-time $WARMUP\` (HTTP/2; \`--h1 -m 1\` for HTTP/1.1 over TLS), or \`wrk -t1 -c$CONNS -d${DURATION}s\` after a ${WARMUP} s wrk run (section 3)."
    echo "- Fixed rate, open loop: \`oha -q RATE -z ${RATE_DURATION}s --latency-correction\` after a ${WARMUP} s run at the same rate; HTTP/2 with \`--http2 -c $H2_OHA_CONNS -p $H2_OHA_STREAMS\` ($H2_OHA_CONNS connections, up to $H2_OHA_STREAMS streams each), HTTP/1.1 with \`-c $CONNS\`. Latency counts from when a request was due (coordinated omission corrected). Each run opens its connections at its start (over TLS: $H2_OHA_CONNS handshakes), which is part of its first milliseconds."
    echo "- New connections: \`h2load -r $((CONN_RATE / 100 > 0 ? CONN_RATE / 100 : 1)) --rate-period 10ms -c N -n N\` (\`--h1\` for HTTP/1.1): $CONN_RATE new TLS connections per second for ${RATE_DURATION} s, each making one request and closing; h2load does not resume TLS sessions (checked against nginx's \`\$ssl_session_reused\` when this script was written), so every connection is a full TLS 1.3 handshake (oha and wrk resume sessions, so neither is used here). This is a fixed offered rate, not a maximum: h2load (OpenSSL 3) spends more CPU per handshake than the proxies do (its own CPU per connection is in the table), so with one core for it a closed loop would measure h2load. The figure that tells the proxies apart is CPU per connection, and the one-core ceiling it implies. Connect and first-byte times are h2load's means (it prints no percentiles)."
    echo "- CPU: time on all threads of the proxy's processes (nginx: its workers; /proc/PID/task/*/schedstat) over the measured phase (h2load: between its \"main duration started\" and \"over\" lines), divided by the requests (or connections) it completed, per 1,000."
    echo "- Ratios are of medians: above 1 means portico-proxy's figure is higher (better for req/s and conn/s, worse for latency and CPU)."
    echo
    echo "## (1) HTTP/2 clients to the proxy"
    echo
    echo "Req/s: closed loop, $CONNS connections × $STREAMS streams. Latency and CPU at a fixed $H2_RATE req/s."
    echo
    note_setup "${S1_CASES[@]}"
    echo "$HDR"
    echo "$SEP"
    for c in "${S1_CASES[@]}"; do
        echo "| **${LABEL[$c]}** | | | | | |"
        row "req/s (closed loop)" "$c" rps 0
        row "CPU-s per 1,000 req, closed loop" "$c" cpu 4 reps
        row "p50 ms at $H2_RATE req/s" "$c" p50 3
        row "p99 ms at $H2_RATE req/s" "$c" p99 3
        row "CPU-s per 1,000 req at $H2_RATE req/s" "$c" ratecpu 4 reps
    done
    print_notes
    short_rate_notes "${S1_CASES[@]}"
    echo
    echo "## (2) TLS termination (to the HTTP/1.1 upstream)"
    echo
    note_setup tls11_ka tls_h1 tls11_new tls2_new
    echo "$HDR"
    echo "$SEP"
    echo "| **${LABEL[tls11_ka]}** ($CONNS connections, closed loop) | | | | | |"
    row "req/s" tls11_ka rps 0
    row "CPU-s per 1,000 req" tls11_ka cpu 4 reps
    echo "| **h2 over TLS, keep-alive** ($CONNS connections × $STREAMS streams; the runs of section 1) | | | | | |"
    row "req/s" tls_h1 rps 0
    row "CPU-s per 1,000 req" tls_h1 cpu 4 reps
    for c in tls11_new tls2_new; do
        echo "| **${LABEL[$c]}** ($CONN_RATE new connections/s offered) | | | | | |"
        row "conn/s achieved" "$c" cps 0
        row "CPU-s per 1,000 connections" "$c" cpu 4 reps
        implied_row "$c"
        row "the generator's CPU-s per 1,000 connections (h2load, CPU $LOAD_CPU)" "$c" gencpu 4
        row "mean connect (TCP + TLS handshake) ms" "$c" connect_ms 3
        row "mean time to first response byte ms" "$c" ttfb_ms 3
    done
    print_notes
    echo
    echo "## (3) Two workers on two cores (HTTP/1.1 keep-alive, $CONNS connections)"
    echo
    echo "One worker: the instances of sections 1 and 2, pinned to CPU $PROXY_CPU. Two workers: portico-proxy \`--workers 2\`, nginx \`worker_processes 2\` (\`listen … reuseport\`), haproxy \`nbthread 2\`, each allowed on CPUs $PROXY_CPU-$LOAD_CPU. Load: \`wrk -t1 -c$CONNS -d${DURATION}s\` (closed loop) and \`oha -c $CONNS -q $H1_RATE\` (fixed rate), HTTP/1.1 keep-alive."
    echo
    echo "**This machine has $NCPU cores, so two workers have no core to themselves.** wrk, oha and the upstream stay pinned to CPU $LOAD_CPU as in the other sections: a proxy's second worker shares that core with the load generator and the upstream, and every request the proxy serves there takes time from them. The scaling factor is therefore how much a second worker gains (or costs) on a machine already busy with its load, not how the proxy scales onto a free core; CPU per request says what the second worker costs in coordination (cross-thread wake-ups, work stealing, locks). For scale, wrk straight to the upstream (no proxy; wrk and the upstream alone on CPU $LOAD_CPU): $(fmt "$(val w1 direct rps)" 0) req/s (median; per repetition: $(paste -sd' ' "$WORK/r/w1.direct.rps" 2>/dev/null || echo none))."
    echo
    note_setup w1 w2
    echo "$HDR"
    echo "$SEP"
    row "req/s, 1 worker (wrk, closed loop)" w1 rps 0
    row "req/s, 2 workers" w2 rps 0
    scaling_row "scaling factor (2 workers / 1 worker), req/s" rps
    row "CPU-s per 1,000 req, closed loop, 1 worker" w1 cpu 4 reps
    row "CPU-s per 1,000 req, closed loop, 2 workers" w2 cpu 4 reps
    scaling_row "CPU per request, 2 workers / 1 worker, closed loop" cpu
    row "p50 ms at $H1_RATE req/s, 1 worker" w1 p50 3
    row "p50 ms at $H1_RATE req/s, 2 workers" w2 p50 3
    row "p99 ms at $H1_RATE req/s, 1 worker" w1 p99 3
    row "p99 ms at $H1_RATE req/s, 2 workers" w2 p99 3
    row "CPU-s per 1,000 req at $H1_RATE req/s, 1 worker" w1 ratecpu 4 reps
    row "CPU-s per 1,000 req at $H1_RATE req/s, 2 workers" w2 ratecpu 4 reps
    scaling_row "CPU per request at $H1_RATE req/s, 2 workers / 1 worker" ratecpu
    print_notes
    if failed w1 direct; then echo; echo "wrk straight to the upstream failed: $(cat "$WORK/r/w1.direct.fail")"; fi
    short_rate_notes w1 w2
    if ((${#PORTICO_FAILS[@]})); then
        echo
        echo "## portico-proxy failures"
        echo
        echo "The script exited with status 1: portico-proxy failed these cases (details in the notes above)."
        echo
        for f in "${PORTICO_FAILS[@]}"; do echo "- ${f%%:*}"; done
    fi
} > "$WORK/report.md"
cp "$WORK/report.md" "$ROOT/docs/benchmarks-protocols.md"
log "wrote docs/benchmarks-protocols.md (work dir $WORK, ${ELAPSED} s)"
if ((${#PORTICO_FAILS[@]})); then
    log "portico-proxy failed ${#PORTICO_FAILS[@]} case(s):"
    for f in "${PORTICO_FAILS[@]}"; do log "  $f"; done
    exit 1
fi
