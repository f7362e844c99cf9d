#!/usr/bin/env bash
# Portico benchmark (`make bench`): the same small upstream reached directly and through
# portico-proxy, nginx and haproxy, each proxy with one worker pinned to one core, the load
# generator and the upstream on the other core. Loopback only. Writes docs/benchmarks.md.
#
#   REPS=5 DURATION=10 RATE_DURATION=5 bench/run.sh
#   PROXY_BIN=path/to/portico-proxy bench/run.sh   # skip the build
#
# A default run takes about 10 minutes after the build: 4 × (2 + 5 × 10) s of wrk,
# 2 rates × 5 targets × (1 + 5 × 5) s of oha. The release build (fat LTO)
# takes 4–6 minutes on two cores, and the first run also builds oha (about 5 minutes on a quiet
# machine).
set -euo pipefail

cd "$(dirname "$0")/.."
LOADAVG_START=$(cut -d" " -f1-3 /proc/loadavg)
# Steal and total jiffies of all cores: how much of the run the hypervisor gave to other guests.
steal() { awk '$1 == "cpu" { print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }
read -r STEAL0 TOTAL0 < <(steal)
ROOT=$PWD
REPS=${REPS:-5}
DURATION=${DURATION:-10}          # seconds per closed-loop run
RATE_DURATION=${RATE_DURATION:-5} # seconds per fixed-rate run
CONNS=64
PROXY_CPU=0
LOAD_CPU=1
UP_PORT=18080
UP_H2_PORT=18084
SERVER_PORT=18085
ADMIN_PORT=19901
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-bench.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit

log() { echo "[bench] $*" >&2; }

# --- tools -------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v python3 >/dev/null || need+=(python3)
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
    log "installing ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# oha: the open-loop generator for fixed rates (corrects coordinated omission). Not packaged in
# Debian; built from crates.io into ~/.cache/portico once.
OHA_ROOT=${OHA_ROOT:-$HOME/.cache/portico}
OHA=$(find_oha)
if [[ -z $OHA ]]; then
    log "oha not found: building it with \`cargo install oha --locked --root $OHA_ROOT\` (one time, several minutes)"
    # In cargo's own temporary directory, not the proxy's target directory.
    env -u CARGO_TARGET_DIR cargo install oha --locked --root "$OHA_ROOT" >&2
    OHA=$OHA_ROOT/bin/oha
fi
log "using $OHA ($("$OHA" --version 2>/dev/null | head -1))"

if [[ -z ${PROXY_BIN:-} ]]; then
    log "building portico-proxy (release)"
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi
HELPER="python3 $ROOT/bench/conns.py"

# --- upstream: nginx, 1 KiB body, keep-alive, TCP_NODELAY --------------------------------
upstream_conf "$WORK/up" $UP_PORT $UP_H2_PORT
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)

# --- the floor: the same server answering clients itself, on the proxies' core ------------
# Not a proxy: one read and one write per request, half of a proxy's socket work. Measured at
# the fixed rates only, it shows what the machine charges for a request on that core at all.
upstream_conf "$WORK/srv" $SERVER_PORT
taskset -c $PROXY_CPU nginx -p "$WORK/srv" -c "$WORK/srv/nginx.conf" &
SERVER_MASTER=$!; PIDS+=("$SERVER_MASTER")

# --- proxies -----------------------------------------------------------------------------
portico_conf "$WORK/portico.yaml" 18081 $UP_PORT $UP_H2_PORT
nginx_proxy_conf "$WORK/ngx" 18082 $UP_PORT

# The same with an HTTPS listener added (ports 18086-18088; a self-signed ECDSA P-256
# certificate), for the memory of idle TLS client connections only: the other measurements run
# the plain configs, so they compare with earlier runs (loading a certificate pages in TLS code).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null
chmod 644 "$WORK/tls.key" # nginx's workers run as nobody
cat "$WORK/tls.crt" "$WORK/tls.key" > "$WORK/tls.pem"
sed "s|protocol: HTTP }]|protocol: HTTP }, { name: tls, address: \"127.0.0.1:18086\", protocol: HTTPS, tls: { cert: { file: $WORK/tls.crt }, key: { file: $WORK/tls.key } } }]|" \
    "$WORK/portico.yaml" > "$WORK/portico-tls.yaml"
nginx_proxy_conf "$WORK/ngx-tls" 18082 $UP_PORT
sed -i "s|listen 127.0.0.1:18082;|&\n        listen 127.0.0.1:18087 ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $WORK/tls.crt; ssl_certificate_key $WORK/tls.key;|" \
    "$WORK/ngx-tls/nginx.conf"

{
    haproxy_head 1 4000
    cat <<CONF
frontend fe
    bind 127.0.0.1:18083
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
CONF
} > "$WORK/haproxy.cfg"
sed "s|bind 127.0.0.1:18083|&\n    bind 127.0.0.1:18088 ssl crt $WORK/tls.pem|" "$WORK/haproxy.cfg" > "$WORK/haproxy-tls.cfg"

wait_port $UP_PORT
wait_port $SERVER_PORT
declare -A PORT=([direct]=$UP_PORT [portico]=18081 [nginx]=18082 [haproxy]=18083 [server]=$SERVER_PORT)
declare -A TLS_PORT=([portico]=18086 [nginx]=18087 [haproxy]=18088)
declare -A PID
PID[server]=$(pgrep -P "$SERVER_MASTER" | head -1)
# Starts the three proxies pinned to one core (`start_proxies tls`: the configs with an HTTPS
# listener). Sets PID (per proxy, the process doing the work) and READY_MS (portico-proxy's time
# from exec to accepting connections).
start_proxies() {
    local v=${1:+-tls}
    read -r PORTICO_PID READY_MS < <($HELPER ready taskset -c $PROXY_CPU "$PROXY_BIN" \
        --config "$WORK/portico$v.yaml" --workers 1 --admin-addr 127.0.0.1:$ADMIN_PORT --log-level warn)
    PIDS+=("$PORTICO_PID")
    taskset -c $PROXY_CPU nginx -p "$WORK/ngx$v" -c "$WORK/ngx$v/nginx.conf" &
    NGINX_PID=$!; PIDS+=("$NGINX_PID")
    taskset -c $PROXY_CPU haproxy -f "$WORK/haproxy$v.cfg" -db &
    HAPROXY_PID=$!; PIDS+=("$HAPROXY_PID")
    for p in 18081 18082 18083; do wait_port $p; done
    sleep 1
    # nginx's master forks the worker that does the work; measure the worker.
    PID[nginx]=$(pgrep -P "$NGINX_PID" | head -1)
    # haproxy -db runs in the foreground; with a master-worker it may fork, so take the child if any.
    local worker
    worker=$(pgrep -P "$HAPROXY_PID" | head -1 || true)
    PID[haproxy]=${worker:-$HAPROXY_PID}
    PID[portico]=$PORTICO_PID
}
stop_proxies() {
    kill "$PORTICO_PID" "$NGINX_PID" "$HAPROXY_PID" 2>/dev/null || true
    wait "$NGINX_PID" "$HAPROXY_PID" 2>/dev/null || true
    # portico-proxy was started by the helper, so it is not this shell's child to wait for.
    for _ in $(seq 1 500); do kill -0 "$PORTICO_PID" 2>/dev/null || break; sleep 0.01; done
}
TARGETS=(direct portico nginx haproxy)
RATE_TARGETS=("${TARGETS[@]}" server)


declare -A IDLE_ANON IDLE_FILE LOAD_ANON LOAD_FILE CONN_ANON CONN_FILE TLS_IDLE_ANON TLS_IDLE_FILE TLS_CONN_ANON
start_proxies
for t in portico nginx haproxy; do read -r IDLE_ANON[$t] IDLE_FILE[$t] < <(mem "${PID[$t]}"); done

# --- (3) memory with 1,000 open client connections ---------------------------------------
# On freshly started proxies, so the difference to idle is the cost of the connections and not
# of heap grown (and kept) under load; then the proxies are started again for the load, so the
# memory under load is not inflated by the 1,000 connections' freed buffers either.
for t in portico nginx haproxy; do
    log "1,000 idle keep-alive connections to $t"
    echo "${PID[$t]}" > "$WORK/pid"
    read -r CONN_ANON[$t] CONN_FILE[$t] < <($HELPER hold "${PORT[$t]}" 1000 "$WORK/pid")
done

stop_proxies
start_proxies tls
# The same over TLS (HTTPS listeners, TLS 1.3), again on freshly started proxies.
for t in portico nginx haproxy; do
    read -r TLS_IDLE_ANON[$t] TLS_IDLE_FILE[$t] < <(mem "${PID[$t]}")
    log "1,000 idle keep-alive TLS connections to $t"
    echo "${PID[$t]}" > "$WORK/pid"
    read -r TLS_CONN_ANON[$t] _ < <($HELPER hold "${TLS_PORT[$t]}" 1000 "$WORK/pid" tls)
done
stop_proxies
start_proxies

# --- (1) peak throughput, closed loop (wrk) -----------------------------------------------
# Repetitions are interleaved (rep 1 of every target, then rep 2...), so a slow drift of the
# machine (another job starting, the host's other guests) weighs on every target alike instead
# of on whichever target's block it falls into.
for t in "${TARGETS[@]}"; do
    taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d2s "http://127.0.0.1:${PORT[$t]}/" >/dev/null # warm-up
done
for rep in $(seq 1 "$REPS"); do
    for t in "${TARGETS[@]}"; do
        log "wrk $t rep $rep"
        read -r lb0 lt0 < <(core_jiffies $LOAD_CPU)
        read -r pb0 pt0 < <(core_jiffies $PROXY_CPU)
        c0=0; [[ $t != direct ]] && c0=$(cpu_ns "${PID[$t]}")
        taskset -c $LOAD_CPU wrk -t1 -c$CONNS -d${DURATION}s --latency "http://127.0.0.1:${PORT[$t]}/" > "$WORK/wrk.out" &
        wrk_pid=$!
        # Peak resident memory under load, sampled while wrk runs.
        while kill -0 $wrk_pid 2>/dev/null; do
            if [[ $t != direct ]]; then
                read -r a f < <(mem "${PID[$t]}")
                if ((a + f > ${LOAD_ANON[$t]:-0} + ${LOAD_FILE[$t]:-0})); then LOAD_ANON[$t]=$a; LOAD_FILE[$t]=$f; fi
            fi
            sleep 0.25
        done
        wait $wrk_pid
        c1=0; [[ $t != direct ]] && c1=$(cpu_ns "${PID[$t]}")
        read -r lb1 lt1 < <(core_jiffies $LOAD_CPU)
        read -r pb1 pt1 < <(core_jiffies $PROXY_CPU)
        out=$(cat "$WORK/wrk.out")
        echo "$out" | awk '/^Requests\/sec:/ {print $2}' >> "$WORK/$t.rps"
        # How busy each core was: the load core (wrk + upstream) at 100% means the generator
        # capped the figure; requests per CPU-second of the proxy is then the fair comparison.
        awk -v b=$((lb1 - lb0)) -v t=$((lt1 - lt0)) 'BEGIN { if (t > 0) printf "%.0f\n", 100 * b / t }' >> "$WORK/$t.load_busy"
        awk -v b=$((pb1 - pb0)) -v t=$((pt1 - pt0)) 'BEGIN { if (t > 0) printf "%.0f\n", 100 * b / t }' >> "$WORK/$t.proxy_busy"
        if [[ $t != direct ]]; then
            n=$(echo "$out" | awk '/requests in/ {print $1}')
            awk -v n="$n" -v c=$((c1 - c0)) 'BEGIN { if (c > 0) printf "%.0f\n", n / (c / 1e9) }' >> "$WORK/$t.per_cpu_s"
        fi
        echo "$out" | awk '$1 == "50%" {print $2}' | while read -r v; do to_ms "$v"; echo; done >> "$WORK/$t.wrk_p50"
        echo "$out" | awk '$1 == "99%" {print $2}' | while read -r v; do to_ms "$v"; echo; done >> "$WORK/$t.wrk_p99"
    done
done

# --- (2) latency at fixed rates (oha, open loop), and (4) CPU per 1,000 requests ---------
# oha sends on a schedule (-q) whether or not earlier answers came back, and with
# --latency-correction measures each request from the moment it was due, so a stall shows up in
# the tail instead of silently lowering the rate (coordinated omission).
for rate in 2000 10000; do
    for t in "${RATE_TARGETS[@]}"; do
        taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z 1s -c $CONNS -q "$rate" \
            "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1 || true # warm-up
    done
    for rep in $(seq 1 "$REPS"); do
        for t in "${RATE_TARGETS[@]}"; do
            log "oha -q $rate $t rep $rep"
            before=0; [[ $t != direct ]] && before=$(cpu_ns "${PID[$t]}") && read -r u0 s0 < <(ticks "${PID[$t]}")
            taskset -c $LOAD_CPU "$OHA" --no-tui --output-format json -z "${RATE_DURATION}s" -c $CONNS \
                -q "$rate" --latency-correction "http://127.0.0.1:${PORT[$t]}/" > "$WORK/oha.json" 2>/dev/null || true
            after=0; [[ $t != direct ]] && after=$(cpu_ns "${PID[$t]}") && read -r u1 s1 < <(ticks "${PID[$t]}")
            read -r n p50 p99 p999 < <($HELPER oha "$WORK/oha.json")
            echo "$p50" >> "$WORK/$t.$rate.p50"; echo "$p99" >> "$WORK/$t.$rate.p99"; echo "$p999" >> "$WORK/$t.$rate.p999"
            if [[ $t != direct ]]; then
                awk -v d=$((after - before)) -v n="$n" \
                    'BEGIN { if (n > 0) printf "%.4f\n", d / 1e9 / n * 1000 }' >> "$WORK/$t.$rate.cpu"
                echo "$((u1 - u0)) $((s1 - s0))" >> "$WORK/$t.$rate.ticks"
            fi
        done
    done
done

# --- report --------------------------------------------------------------------------------
# KB per connection: growth from IDLE_KB to WITH_KB over 1,000 connections.
per_conn_kb() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (a - b) / 1000 }'; }
# System ticks as a share of all ticks over the runs in FILE ("user system" per line).
kernel_share() { awk '{u += $1; s += $2} END { if (u + s > 0) printf "%.0f%%", 100 * s / (u + s); else print "—" }' "$WORK/$1"; }
mb() { awk -v k="$1" 'BEGIN { if (k > 0) printf "%.1f", k / 1024; else print "—" }'; }

RPS_DIRECT=$(med direct.rps)
RPS_NGINX=$(med nginx.rps)
RPS_HAPROXY=$(med haproxy.rps)
PER_CPU_S_NGINX=$(med nginx.per_cpu_s)
CPU_MODEL=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
read -r STEAL1 TOTAL1 < <(steal)
STEAL_PCT=$(awk -v s=$((STEAL1 - STEAL0)) -v t=$((TOTAL1 - TOTAL0)) 'BEGIN { if (t > 0) printf "%.1f", 100 * s / t; else print "?" }')
{
    echo "# Benchmarks"
    echo
    echo "Generated by \`bench/run.sh\` (\`make bench\`) on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "## Machine and method"
    echo
    echo "- $(nproc) CPUs ($CPU_MODEL), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, $(uname -sr)."
    echo "- Load average when the run started: $LOADAVG_START (when other work runs on the machine, absolute figures move a lot between runs; compare rows of one run). Time stolen by the hypervisor during the run: ${STEAL_PCT}% of both cores (/proc/stat)."
    echo "- Upstream: nginx $(nginx -v 2>&1 | sed 's/.*nginx\///'), one worker, 1 KiB body, keep-alive, TCP_NODELAY, on CPU $LOAD_CPU."
    echo "- Proxies, each with one worker pinned to CPU $PROXY_CPU: portico-proxy (release, \`--workers 1\`: one current-thread runtime), nginx \`worker_processes 1\` (upstream keepalive, \`keepalive_requests\` raised), haproxy $(haproxy -v | awk 'NR==1 {print $3}') \`nbthread 1\` (\`http-reuse always\`)."
    echo "- Load generators on CPU $LOAD_CPU with the upstream. HTTP/1.1 keep-alive, $CONNS connections. $REPS repetitions of every measurement, interleaved across targets (repetition 1 of each, then 2…); medians reported."
    echo "- (1) closed loop: \`wrk -t1 -c$CONNS -d${DURATION}s\`, after a 2 s warm-up."
    echo "- (2) fixed rate, open loop: \`$(basename "$OHA") -c $CONNS -q RATE -z ${RATE_DURATION}s --latency-correction\` ($("$OHA" --version 2>/dev/null | head -1)), after a 1 s warm-up: requests leave on schedule whether or not earlier ones were answered, and latency counts from when a request was due, so stalls are not hidden (coordinated omission)."
    echo "- (3) resident memory of the worker process, split into **anon** (heap, stacks: RssAnon) and **file** (mapped binary and libraries: RssFile + RssShmem; shared with the page cache, and grows with the code paths touched). Idle: 1 s after start. With 1,000 connections: 1,000 idle keep-alive client connections, each has made one request, opened one after the other on the freshly started proxy; per connection: the growth of anon over idle divided by 1,000 (the growth of file, the code the first requests page in, is a one-time cost, shown as the RSS figure). Under load: the highest sample (every 0.25 s) during the wrk runs, on proxies started again after the connection test."
    echo "- (4) CPU time (user + system, from /proc/PID/task/*/schedstat) of the worker during the fixed-rate runs, divided by the requests answered."
    echo
    echo "## (1) Peak throughput, HTTP/1.1, $CONNS connections"
    echo
    echo "| target | req/s (median) | vs direct | vs nginx | vs haproxy | req per proxy CPU-second | vs nginx | proxy core busy | load core busy | wrk p50 ms | wrk p99 ms |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        r=$(med $t.rps)
        e=$(med $t.per_cpu_s)
        echo "| $t | $r | $(ratio "$r" "$RPS_DIRECT") | $(ratio "$r" "$RPS_NGINX") | $(ratio "$r" "$RPS_HAPROXY") | $e | $(ratio "$e" "$PER_CPU_S_NGINX") | $(med $t.proxy_busy)% | $(med $t.load_busy)% | $(med $t.wrk_p50) | $(med $t.wrk_p99) |"
    done
    echo
    echo "Requests per proxy CPU-second: the requests of a run divided by the CPU time (user + system)"
    echo "of the proxy's worker in it. Core busy: the share of the core's time neither idle nor stolen by"
    echo "the hypervisor during the runs (/proc/stat), for CPU $PROXY_CPU (the proxy) and CPU $LOAD_CPU (wrk and the upstream). When the load"
    echo "core is near 100%, wrk and the upstream capped the req/s figure and a proxy's headroom shows"
    echo "in its own core's busy share and its requests per CPU-second, not in req/s."
    echo
    echo "## (2) Latency at fixed rates, open loop (ms, medians of $REPS runs)"
    echo
    echo "| target | 2k p50 | 2k p99 | 2k p99.9 | 10k p50 | 10k p99 | 10k p99.9 |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in "${RATE_TARGETS[@]}"; do
        echo "| $t | $(med $t.2000.p50) | $(med $t.2000.p99) | $(med $t.2000.p999) | $(med $t.10000.p50) | $(med $t.10000.p99) | $(med $t.10000.p999) |"
    done
    echo
    echo "**server** is not a proxy: the upstream's nginx config answering the clients itself, one"
    echo "worker on CPU $PROXY_CPU where the proxies run (direct is the upstream on CPU $LOAD_CPU, sharing the"
    echo "generator's core). It is the floor for one hop across the two cores."
    echo
    echo "Added p99 at 2,000 req/s over direct, per run (portico vs nginx):"
    echo
    echo "| run | portico added p99 ms | nginx added p99 ms |"
    echo "|---:|---:|---:|"
    paste -d' ' "$WORK/direct.2000.p99" "$WORK/portico.2000.p99" "$WORK/nginx.2000.p99" |
        awk '{ printf "| %d | %.3f | %.3f |\n", NR, $2 - $1, $3 - $1 }'
    echo
    echo "## (3) Memory (MB, anon + file = resident) and (4) CPU"
    echo
    echo "| proxy | idle anon | idle file | idle RSS | under load anon | under load RSS | 1,000 conns anon | 1,000 conns RSS | KB per idle conn (anon) | (RSS) | KB per idle HTTPS conn (anon) | CPU-s per 1,000 req at 2k/s | at 10k/s | kernel share of CPU at 2k/s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for t in portico nginx haproxy; do
        per=$(per_conn_kb "${CONN_ANON[$t]}" "${IDLE_ANON[$t]}")
        per_rss=$(per_conn_kb "$((CONN_ANON[$t] + CONN_FILE[$t]))" "$((IDLE_ANON[$t] + IDLE_FILE[$t]))")
        per_tls=$(per_conn_kb "${TLS_CONN_ANON[$t]}" "${TLS_IDLE_ANON[$t]}")
        echo "| $t | $(mb "${IDLE_ANON[$t]}") | $(mb "${IDLE_FILE[$t]}") | $(mb "$((IDLE_ANON[$t] + IDLE_FILE[$t]))") | $(mb "${LOAD_ANON[$t]:-0}") | $(mb "$((${LOAD_ANON[$t]:-0} + ${LOAD_FILE[$t]:-0}))") | $(mb "${CONN_ANON[$t]}") | $(mb "$((CONN_ANON[$t] + CONN_FILE[$t]))") | $per | $per_rss | $per_tls | $(med $t.2000.cpu) | $(med $t.10000.cpu) | $(kernel_share $t.2000.ticks) |"
    done
    echo
    echo "portico-proxy accepted connections ${READY_MS} ms after exec (config parsed, listener bound)."
    echo
    echo "Reading the memory columns: most of an idle proxy's resident memory is file-backed code"
    echo "(the binary and libc, paged in as touched, shared with the page cache and with other"
    echo "processes running the same binary); anon is what the process itself allocated. An idle"
    echo "HTTP/1.1 client connection in portico-proxy holds no buffer: its own HTTP/1.1 path takes"
    echo "a read buffer when a request arrives and gives it back when the response is sent (up to"
    echo "128 buffers of 8 KiB are kept per thread for reuse); what stays is the connection's task"
    echo "(the state of a request in progress is allocated per request) and its socket"
    echo "registration. Over TLS the connection's TLS state stays too (rustls), but no read buffer"
    echo "of the proxy's. Idle upstream connections are bare sockets in a pool. With the HTTPS"
    echo "listener configured (its certificate loaded, TLS code paged in), portico-proxy's idle RSS"
    echo "is $(mb "$((TLS_IDLE_ANON[portico] + TLS_IDLE_FILE[portico]))") MB ($(mb "${TLS_IDLE_ANON[portico]}") anon); nginx's $(mb "$((TLS_IDLE_ANON[nginx] + TLS_IDLE_FILE[nginx]))") MB, haproxy's $(mb "$((TLS_IDLE_ANON[haproxy] + TLS_IDLE_FILE[haproxy]))") MB."
    echo
    echo "Reading the CPU columns: at 2,000 req/s requests arrive one at a time, so each one costs"
    echo "a proxy two sleeps and wake-ups of its own and two wake-ups of processes on the other core"
    echo "(in this VM, waking an idle core is an exit to the hypervisor). That time is the kernel's;"
    echo "portico-proxy and nginx make the same system calls per request at this rate (strace -c,"
    echo "2026-11-27: 2 recvfrom, 2 writev and 1.4–1.8 epoll_wait per request for both)."
    echo
    echo "For scale, the floor: nginx answering the 1 KiB page itself on CPU $PROXY_CPU (no upstream: one"
    echo "read and one write per request, half of a proxy's socket work) took $(med server.2000.cpu)"
    echo "CPU-s per 1,000 requests at 2,000 req/s and $(med server.10000.cpu) at 10,000 req/s in this run"
    echo "(kernel share at 2k: $(kernel_share server.2000.ticks))."
    echo
    echo "## Goals (issue 3) against this run"
    echo
    P_RPS=$(med portico.rps)
    wins=$(paste -d' ' "$WORK/direct.2000.p99" "$WORK/portico.2000.p99" "$WORK/nginx.2000.p99" |
        awk '{ if ($2 - $1 <= $3 - $1) n++ } END { print n + 0 }')
    idle=$((IDLE_ANON[portico] + IDLE_FILE[portico]))
    load=$((${LOAD_ANON[portico]:-0} + ${LOAD_FILE[portico]:-0}))
    per_conn=$(per_conn_kb "${CONN_ANON[portico]}" "${IDLE_ANON[portico]}")
    per_conn_rss=$(per_conn_kb "$((CONN_ANON[portico] + CONN_FILE[portico]))" "$idle")
    per_tls=$(per_conn_kb "${TLS_CONN_ANON[portico]}" "${TLS_IDLE_ANON[portico]}")
    verdict() { awk -v ok="$1" 'BEGIN { print (ok ? "met" : "**not met**") }'; }
    echo "| goal | measured | |"
    echo "|---|---:|---|"
    echo "| peak req/s ≥ 1.0× nginx | $(ratio "$P_RPS" "$RPS_NGINX")× | $(verdict "$(awk -v a="$P_RPS" -v b="$RPS_NGINX" 'BEGIN { print (a >= b) }')") |"
    echo "| peak req/s ≥ 0.8× direct | $(ratio "$P_RPS" "$RPS_DIRECT")× | $(verdict "$(awk -v a="$P_RPS" -v b="$RPS_DIRECT" 'BEGIN { print (a >= 0.8 * b) }')") |"
    echo "| added p99 at 2k req/s ≤ nginx's in ≥ 4 of 5 runs | $wins of $REPS (medians $(med portico.2000.p99) and $(med nginx.2000.p99) ms) | $(verdict "$((wins >= 4))") |"
    echo "| ≤ 5 MB resident idle | $(mb "$idle") MB ($(mb "${IDLE_ANON[portico]}") anon) | $(verdict "$((idle <= 5120))") |"
    echo "| ≤ 20 MB under load | $(mb "$load") MB | $(verdict "$((load <= 20480))") |"
    echo "| ≤ 16 KB per idle client connection | $per_conn KB anon ($per_conn_rss KB RSS); HTTPS $per_tls KB anon | $(verdict "$(awk -v k="$per_conn" -v t="$per_tls" 'BEGIN { print (k <= 16 && t <= 16) }')") |"
    echo "| ≤ 0.05 CPU-s per 1,000 requests at 2k req/s | $(med portico.2000.cpu) (nginx $(med nginx.2000.cpu); a server alone, no proxy: $(med server.2000.cpu)) | $(verdict "$(awk -v c="$(med portico.2000.cpu)" 'BEGIN { print (c <= 0.05) }')") |"
    echo "| ready within 50 ms of start | $READY_MS ms | $(verdict "$(awk -v m="$READY_MS" 'BEGIN { print (m <= 50) }')") |"
    echo
    echo "## Goals (issue 18: CPU per request and peak) against this run"
    echo
    echo "| goal | measured | |"
    echo "|---|---:|---|"
    for rate in 2000 10000; do
        pc=$(med portico.$rate.cpu); nc=$(med nginx.$rate.cpu)
        echo "| CPU per request at $rate req/s ≤ 0.85× nginx's | $(ratio "$pc" "$nc")× ($pc vs $nc CPU-s per 1,000; runs: portico $(paste -sd' ' "$WORK/portico.$rate.cpu"), nginx $(paste -sd' ' "$WORK/nginx.$rate.cpu")) | $(verdict "$(awk -v a="$pc" -v b="$nc" 'BEGIN { print (a <= 0.85 * b) }')") |"
    done
    echo "| peak req/s ≥ haproxy's | $(ratio "$P_RPS" "$RPS_HAPROXY")× ($P_RPS vs $RPS_HAPROXY; load core busy $(med portico.load_busy)% and $(med haproxy.load_busy)%) | $(verdict "$(awk -v a="$P_RPS" -v b="$RPS_HAPROXY" 'BEGIN { print (a >= b) }')") |"
    pe=$(med portico.per_cpu_s); he=$(med haproxy.per_cpu_s)
    echo "| requests per proxy CPU-second at peak ≥ haproxy's | $(ratio "$pe" "$he")× ($pe vs $he; nginx $PER_CPU_S_NGINX) | $(verdict "$(awk -v a="$pe" -v b="$he" 'BEGIN { print (a >= b) }')") |"
    echo
    echo "HTTP/2, TLS termination and two workers: \`bench/protocols.sh\` (docs/benchmarks-protocols.md)."
} > "$WORK/report.md"
cp "$WORK/report.md" "$ROOT/docs/benchmarks.md"
log "wrote docs/benchmarks.md"
cat "$ROOT/docs/benchmarks.md"
