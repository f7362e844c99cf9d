#!/usr/bin/env bash
# Portico benchmark (`make bench`): the same small upstream reached directly and through
# portico-proxy, nginx and haproxy, each proxy with one worker pinned to one core, the load
# generator and the upstream on the other core. Loopback only. Writes docs/benchmarks.md.
#
#   REPS=5 DURATION=10 RATE_DURATION=5 bench/run.sh
#   PROXY_BIN=path/to/portico-proxy bench/run.sh   # skip the build
set -euo pipefail

cd "$(dirname "$0")/.."
LOADAVG_START=$(cut -d" " -f1-3 /proc/loadavg)
ROOT=$PWD
REPS=${REPS:-5}
DURATION=${DURATION:-10}          # seconds per closed-loop run
RATE_DURATION=${RATE_DURATION:-5} # seconds per fixed-rate run
CONNS=64
PROXY_CPU=0
LOAD_CPU=1
UP_PORT=18080
UP_H2_PORT=18084
ADMIN_PORT=19901
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-bench.XXXXXX)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

log() { echo "[bench] $*" >&2; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi
HELPER="python3 $ROOT/bench/conns.py"

# --- upstream: nginx, 1 KiB body, keep-alive, TCP_NODELAY --------------------------------
chmod 755 "$WORK"  # nginx workers run as nobody when started by root
mkdir -p "$WORK/up/logs" "$WORK/up/html"
head -c 1024 /dev/zero | tr '\0' 'x' > "$WORK/up/html/index.html"
cat > "$WORK/up/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    tcp_nodelay on;
    server {
        listen 127.0.0.1:$UP_PORT;
        listen 127.0.0.1:$UP_H2_PORT http2;
        root $WORK/up/html;
        location / { try_files /index.html =404; }
        error_page 405 =200 /index.html;
    }
}
CONF
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)

# --- proxies -----------------------------------------------------------------------------
cat > "$WORK/portico.yaml" <<CONF
apiVersion: portico.dev/proxy/v1
listeners: [{ name: web, address: "127.0.0.1:18081", protocol: HTTP }]
routes:
  - name: bench
    rules:
      - matches: [{ path: { type: PathPrefix, value: /grpc } }]
        backends: [{ backend: up-h2 }]
      - backends: [{ backend: up }]
backends:
  - { name: up, endpoints: [{ address: "127.0.0.1:$UP_PORT" }] }
  - { name: up-h2, protocol: http2, endpoints: [{ address: "127.0.0.1:$UP_H2_PORT" }] }
CONF

mkdir -p "$WORK/ngx/logs"
cat > "$WORK/ngx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $WORK/ngx/nginx.pid;
error_log $WORK/ngx/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:18082;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF

cat > "$WORK/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:18083
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
CONF

wait_port() {
    for _ in $(seq 1 500); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.01
    done
    log "port $1 never opened"; return 1
}

wait_port $UP_PORT
# portico-proxy: time from exec to accepting connections.
read -r PORTICO_PID READY_MS < <($HELPER ready taskset -c $PROXY_CPU "$PROXY_BIN" \
    --config "$WORK/portico.yaml" --workers 1 --admin-addr 127.0.0.1:$ADMIN_PORT --log-level warn)
PIDS+=("$PORTICO_PID")
taskset -c $PROXY_CPU nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" &
NGINX_PID=$!; PIDS+=("$NGINX_PID")
taskset -c $PROXY_CPU haproxy -f "$WORK/haproxy.cfg" -db &
HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
for p in 18081 18082 18083; do wait_port $p; done
sleep 1
# nginx's master forks the worker that does the work; measure the worker.
NGINX_WORKER=$(pgrep -P "$NGINX_PID" | head -1)
# haproxy -db runs in the foreground; with a master-worker it may fork, so take the child if any.
HAPROXY_WORKER=$(pgrep -P "$HAPROXY_PID" | head -1 || true)
HAPROXY_WORKER=${HAPROXY_WORKER:-$HAPROXY_PID}

declare -A PORT=([direct]=$UP_PORT [portico]=18081 [nginx]=18082 [haproxy]=18083)
declare -A PID=([portico]=$PORTICO_PID [nginx]=$NGINX_WORKER [haproxy]=$HAPROXY_WORKER)
TARGETS=(direct portico nginx haproxy)

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
to_ms() { # wrk latency like 812.00us / 1.23ms / 1.01s -> ms
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
HZ=$(getconf CLK_TCK)

declare -A IDLE_RSS LOAD_RSS
for t in portico nginx haproxy; do IDLE_RSS[$t]=$(rss "${PID[$t]}"); done

# --- (1) peak throughput, closed loop (wrk) -----------------------------------------------
for t in "${TARGETS[@]}"; do
    taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null # warm-up
    for rep in $(seq 1 "$REPS"); do
        log "wrk $t rep $rep"
        out=$(taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s --latency "http://127.0.0.1:${PORT[$t]}/")
        echo "$out" | awk '/^Requests\/sec:/ {print $2}' >> "$WORK/$t.rps"
        echo "$out" | awk '$1 == "50%" {print $2}' | while read -r v; do to_ms "$v"; echo; done >> "$WORK/$t.wrk_p50"
        echo "$out" | awk '$1 == "99%" {print $2}' | while read -r v; do to_ms "$v"; echo; done >> "$WORK/$t.wrk_p99"
        if [[ $t != direct ]]; then
            r=$(rss "${PID[$t]}"); [[ $r -gt ${LOAD_RSS[$t]:-0} ]] && LOAD_RSS[$t]=$r
        fi
    done
done

# --- (2) latency at fixed rates, and (4) CPU per 1,000 requests at 2,000 req/s -----------
# h2load --rps paces each connection; it does not correct coordinated omission like oha would.
RATE_CONNS=40
for rate in 2000 10000; do
    per_conn=$((rate / RATE_CONNS))
    for t in "${TARGETS[@]}"; do
        for rep in $(seq 1 "$REPS"); do
            log "h2load --h1 ${rate}/s $t rep $rep"
            before=0; [[ $t != direct ]] && before=$(cpu_ticks "${PID[$t]}")
            rm -f "$WORK/log" # h2load appends to an existing log file
            out=$(taskset -c $LOAD_CPU h2load --h1 -c $RATE_CONNS --rps=$per_conn -D "$RATE_DURATION" \
                --log-file="$WORK/log" "http://127.0.0.1:${PORT[$t]}/" 2>&1)
            done_reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
            read -r p50 p99 p999 < <($HELPER pct "$WORK/log" 50 99 99.9)
            echo "$p50" >> "$WORK/$t.$rate.p50"; echo "$p99" >> "$WORK/$t.$rate.p99"; echo "$p999" >> "$WORK/$t.$rate.p999"
            if [[ $t != direct && $rate == 2000 ]]; then
                after=$(cpu_ticks "${PID[$t]}")
                awk -v d=$((after - before)) -v hz="$HZ" -v n="$done_reqs" \
                    'BEGIN { if (n > 0) printf "%.4f\n", d / hz / n * 1000 }' >> "$WORK/$t.cpu"
            fi
        done
    done
done

# --- (3) memory with 1,000 open client connections ---------------------------------------
declare -A CONN_RSS
for t in portico nginx haproxy; do
    echo "${PID[$t]}" > "$WORK/pid"
    CONN_RSS[$t]=$($HELPER hold "${PORT[$t]}" 1000 "$WORK/pid")
done

# --- HTTP/2 through portico-proxy (h2load) -----------------------------------------------
h2_rps() { taskset -c $LOAD_CPU h2load "$@" 2>&1 | awk '/^finished in/ {print $4}' | tr -d ',' || true; }
printf '\x00\x00\x00\x00\x00' > "$WORK/grpc-empty-message.bin" # one empty length-prefixed message
for rep in $(seq 1 "$REPS"); do
    log "h2load h2c rep $rep"
    h2_rps -c $CONNS -m 10 -D "$DURATION" "http://127.0.0.1:${PORT[direct]}/" >/dev/null || true
    h2_rps -c $CONNS -m 10 -D "$DURATION" "http://127.0.0.1:${PORT[portico]}/" >> "$WORK/h2_h1.rps"
    h2_rps -c $CONNS -m 10 -D "$DURATION" -H 'content-type: application/grpc' -d "$WORK/grpc-empty-message.bin" \
        "http://127.0.0.1:${PORT[portico]}/grpc" >> "$WORK/h2_h2.rps"
    h2_rps -c $CONNS -m 10 -D "$DURATION" "http://127.0.0.1:$UP_H2_PORT/" >> "$WORK/h2_direct.rps"
done

# --- report --------------------------------------------------------------------------------
med() { if [[ -s "$WORK/$1" ]]; then median < "$WORK/$1"; else echo nan; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "—" }'; }
mb() { awk -v k="$1" 'BEGIN { if (k > 0) printf "%.1f", k / 1024; else print "—" }'; }

RPS_DIRECT=$(med direct.rps)
RPS_NGINX=$(med nginx.rps)
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
{
    echo "# Benchmarks"
    echo
    echo "Generated by \`bench/run.sh\` (\`make bench\`) on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "## Machine and method"
    echo
    echo "- $(nproc) CPUs ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)."
    echo "- Load average when the run started: $LOADAVG_START (other work was running on this machine; ±15% between identical runs is normal here)."
    echo "- Upstream: nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), one worker, 1 KiB body, keep-alive, TCP_NODELAY, on CPU $LOAD_CPU."
    echo "- Proxies, each with one worker pinned to CPU $PROXY_CPU: portico-proxy (release, \`--workers 1\`: one current-thread runtime), nginx \`worker_processes 1\` (upstream keepalive, \`keepalive_requests\` raised), haproxy $(haproxy -v | awk 'NR==1 {print $3}') \`nbthread 1\` (\`http-reuse always\`)."
    echo "- Load generator on CPU $LOAD_CPU with the upstream. HTTP/1.1 keep-alive. $REPS repetitions of every measurement; medians reported."
    echo "- (1) closed loop: \`wrk -t1 -c$CONNS -d${DURATION}s\`. (2) fixed rate: \`h2load --h1 -c $RATE_CONNS --rps=rate/$RATE_CONNS -D $RATE_DURATION\`, percentiles from its per-request log. h2load paces requests per connection but does **not** correct coordinated omission (oha was not used), so tail figures at a fixed rate are optimistic for every contestant alike."
    echo "- (3) resident memory (VmRSS of the worker process): idle after start, the highest sample at the end of the wrk runs, and with 1,000 idle keep-alive client connections (each has made one request). (4) CPU (user+system) of the worker during the 2,000 req/s runs, per 1,000 requests."
    echo
    echo "## (1) Peak throughput, HTTP/1.1, 64 connections"
    echo
    echo "| target | req/s (median) | vs direct | vs nginx | wrk p50 ms | wrk p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        r=$(med $t.rps)
        echo "| $t | $r | $(ratio "$r" "$RPS_DIRECT") | $(ratio "$r" "$RPS_NGINX") | $(med $t.wrk_p50) | $(med $t.wrk_p99) |"
    done
    echo
    echo "## (2) Latency at fixed rates (ms, medians of $REPS runs)"
    echo
    echo "| target | 2k p50 | 2k p99 | 2k p99.9 | 10k p50 | 10k p99 | 10k p99.9 |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        echo "| $t | $(med $t.2000.p50) | $(med $t.2000.p99) | $(med $t.2000.p999) | $(med $t.10000.p50) | $(med $t.10000.p99) | $(med $t.10000.p999) |"
    done
    echo
    echo "Added p99 at 2,000 req/s over direct, per run (portico vs nginx):"
    echo
    echo "| run | portico added p99 ms | nginx added p99 ms |"
    echo "|---:|---:|---:|"
    paste -d' ' "$WORK/direct.2000.p99" "$WORK/portico.2000.p99" "$WORK/nginx.2000.p99" |
        awk '{ printf "| %d | %.3f | %.3f |\n", NR, $2 - $1, $3 - $1 }'
    echo
    echo "## (3) Memory and (4) CPU"
    echo
    echo "| proxy | RSS idle MB | RSS under load MB | RSS with 1,000 conns MB | KB per idle conn | CPU-s per 1,000 req at 2k/s |"
    echo "|---|---:|---:|---:|---:|---:|"
    for t in portico nginx haproxy; do
        per=$(awk -v a="${CONN_RSS[$t]}" -v b="${IDLE_RSS[$t]}" 'BEGIN { printf "%.1f", (a - b) / 1000 }')
        echo "| $t | $(mb "${IDLE_RSS[$t]}") | $(mb "${LOAD_RSS[$t]:-0}") | $(mb "${CONN_RSS[$t]}") | $per | $(med $t.cpu) |"
    done
    echo
    echo "portico-proxy accepted connections ${READY_MS} ms after exec (config parsed, listener bound)."
    echo
    echo "Per idle connection, hyper's HTTP/1 server keeps an 8 KiB read buffer and pre-allocates an"
    echo "8 KiB write buffer (neither can be configured below 8 KiB), so portico-proxy's floor is"
    echo "about 16 KiB plus the connection task; nginx and haproxy release buffers of idle connections."
    echo
    echo "## Goals (issue 3) against this run"
    echo
    P_RPS=$(med portico.rps)
    wins=$(paste -d' ' "$WORK/direct.2000.p99" "$WORK/portico.2000.p99" "$WORK/nginx.2000.p99" |
        awk '{ if ($2 - $1 <= $3 - $1) n++ } END { print n + 0 }')
    per_conn=$(awk -v a="${CONN_RSS[portico]}" -v b="${IDLE_RSS[portico]}" 'BEGIN { printf "%.1f", (a - b) / 1000 }')
    verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "**not met**") }'; }
    echo "| goal | measured | |"
    echo "|---|---:|---|"
    echo "| peak req/s ≥ 1.0× nginx | $(ratio "$P_RPS" "$RPS_NGINX")× | $(verdict "$(awk -v a="$P_RPS" -v b="$RPS_NGINX" 'BEGIN { print (a >= b) }')") |"
    echo "| peak req/s ≥ 0.8× direct | $(ratio "$P_RPS" "$RPS_DIRECT")× | $(verdict "$(awk -v a="$P_RPS" -v b="$RPS_DIRECT" 'BEGIN { print (a >= 0.8 * b) }')") |"
    echo "| added p99 at 2k req/s ≤ nginx's in ≥ 4 of 5 runs | $wins of $REPS | $(verdict "$((wins >= 4))") |"
    echo "| ≤ 5 MB resident idle | $(mb "${IDLE_RSS[portico]}") MB | $(verdict "$((IDLE_RSS[portico] <= 5120))") |"
    echo "| ≤ 20 MB under load | $(mb "${LOAD_RSS[portico]:-0}") MB | $(verdict "$((${LOAD_RSS[portico]:-0} <= 20480))") |"
    echo "| ≤ 16 KB per idle client connection | $per_conn KB | $(verdict "$(awk -v k="$per_conn" 'BEGIN { print (k <= 16) }')") |"
    echo "| ≤ 0.05 CPU-s per 1,000 requests at 2k req/s | $(med portico.cpu) | $(verdict "$(awk -v c="$(med portico.cpu)" 'BEGIN { print (c <= 0.05) }')") |"
    echo "| ready within 50 ms of start | $READY_MS ms | $(verdict "$(awk -v m="$READY_MS" 'BEGIN { print (m <= 50) }')") |"
    echo
    echo "## HTTP/2 through portico-proxy (h2load -c $CONNS -m 10, ${DURATION}s, medians)"
    echo
    echo "| path | req/s |"
    echo "|---|---:|"
    echo "| h2c client → nginx upstream directly (h2c) | $(med h2_direct.rps) |"
    echo "| h2c client → portico-proxy → HTTP/1.1 upstream | $(med h2_h1.rps) |"
    echo "| h2c client → portico-proxy → h2c upstream (gRPC-shaped POST, \`content-type: application/grpc\`) | $(med h2_h2.rps) |"
    echo
    echo "The gRPC-shaped run exercises HTTP/2 on both sides with streaming bodies; the upstream is"
    echo "nginx answering the 1 KiB page, not a gRPC server (no trailers)."
} > "$WORK/report.md"
cp "$WORK/report.md" "$ROOT/docs/benchmarks.md"
log "wrote docs/benchmarks.md"
cat "$ROOT/docs/benchmarks.md"
