# Shared by bench/run.sh (`make bench`) and bench/compare.sh: the upstream and proxy configs of
# the benchmark setup, and the measurements both take. Sourced, not run.

# Processes to stop when the script exits.
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

# The top of an nginx.conf in DIR: one worker, keep-alive to clients raised, no access log.
# The caller closes the `http` block.
nginx_head() {
    cat <<CONF
daemon off;
worker_processes 1;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
CONF
}

# The upstream: nginx with one worker serving a 1 KiB body, keep-alive, TCP_NODELAY.
# upstream_conf DIR PORT [H2_PORT]
upstream_conf() {
    local dir=$1 port=$2 h2=${3:-}
    chmod 755 "$(dirname "$dir")" # nginx workers run as nobody when started by root
    mkdir -p "$dir/logs" "$dir/html"
    head -c 1024 /dev/zero | tr '\0' 'x' > "$dir/html/index.html"
    # A 16 KB JSON document under /json (for the compression figures).
    python3 -c 'import json; print(json.dumps([{"id": i, "name": "item %d" % i, "tags": ["a", "b"], "price": i * 1.5} for i in range(290)]))' > "$dir/html/data.json"
    {
        nginx_head "$dir"
        cat <<CONF
    tcp_nodelay on;
    server {
        listen 127.0.0.1:$port;
        ${h2:+listen 127.0.0.1:$h2 http2;}
        root $dir/html;
        location / { try_files /index.html =404; }
        location /json { default_type application/json; try_files /data.json =404; }
        error_page 405 =200 /index.html;
    }
}
CONF
    } > "$dir/nginx.conf"
}

# The top of a haproxy.cfg: NBTHREAD threads, keep-alive both ways, idle upstream connections
# shared between clients (`http-reuse always`). The caller adds frontends and backends.
# haproxy_head NBTHREAD MAXCONN
haproxy_head() {
    cat <<CONF
global
    nbthread $1
    maxconn $2
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    option http-keep-alive
    http-reuse always
CONF
}

# nginx as the reference proxy: one worker, upstream keep-alive, `keepalive_requests` raised.
# nginx_proxy_conf DIR LISTEN_PORT UPSTREAM_PORT
nginx_proxy_conf() {
    local dir=$1 port=$2 up=$3
    mkdir -p "$dir/logs"
    {
        nginx_head "$dir"
        cat <<CONF
    upstream up { server 127.0.0.1:$up; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
CONF
    } > "$dir/nginx.conf"
}

# portico-proxy's config: one HTTP listener routing everything to the upstream, and /grpc to the
# upstream's HTTP/2 port when there is one.
# portico_conf FILE LISTEN_PORT UPSTREAM_PORT [UPSTREAM_H2_PORT]
portico_conf() {
    local file=$1 port=$2 up=$3 h2=${4:-}
    {
        echo "apiVersion: portico.dev/proxy/v1"
        echo "listeners: [{ name: web, address: \"127.0.0.1:$port\", protocol: HTTP }]"
        echo "routes:"
        echo "  - name: bench"
        echo "    rules:"
        if [[ -n $h2 ]]; then
            echo "      - matches: [{ path: { type: PathPrefix, value: /grpc } }]"
            echo "        backends: [{ backend: up-h2 }]"
        fi
        echo "      - backends: [{ backend: up }]"
        echo "backends:"
        echo "  - { name: up, endpoints: [{ address: \"127.0.0.1:$up\" }] }"
        if [[ -n $h2 ]]; then
            echo "  - { name: up-h2, protocol: http2, endpoints: [{ address: \"127.0.0.1:$h2\" }] }"
        fi
    } > "$file"
}

# Waits (up to 5 s) until something accepts connections on 127.0.0.1:PORT.
wait_port() {
    for _ in $(seq 1 500); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.01
    done
    echo "port $1 never opened" >&2
    return 1
}

# CPU time on all threads of a process, in ns (schedstat is exact; /proc/PID/stat counts ticks).
cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }

# Busy and total jiffies of one core, from /proc/stat ("busy total"): busy is user, nice,
# system, irq and softirq; idle, iowait and steal (the hypervisor running someone else while
# this guest wanted the core) are not (guest time is already counted in user).
core_jiffies() { awk -v c="cpu$1" '$1 == c { print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat; }

# wrk and h2load latencies like 812.00us / 1.23ms / 1.01s, in ms.
to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# User and system CPU ticks of a process ("user system"): coarse (a tick is 10 ms and short runs
# between ticks go uncounted), used only for the kernel's share of a proxy's CPU time.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }

# Resident memory as "anon file" kB: anonymous pages (heap, stacks: what the proxy allocates)
# and file-backed pages (the mapped binary and libraries, shared with the page cache).
mem() { awk '/^RssAnon:/ {a = $2} /^RssFile:/ {f = $2} /^RssShmem:/ {f += $2} END {print a + 0, f + 0}' "/proc/$1/status"; }

# The oha binary: on PATH, or built by `make bench` into ~/.cache/portico; empty if neither.
find_oha() {
    local root=${OHA_ROOT:-$HOME/.cache/portico}
    if command -v oha; then return; fi
    if [[ -x $root/bin/oha ]]; then echo "$root/bin/oha"; fi
}

# require_tools HINT TOOL...: stops the script when a tool is missing, saying where to get it
# (HINT: the apt packages, or the script that installs them).
require_tools() {
    local hint=$1
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "${0##*/}: $tool is missing ($hint)" >&2; exit 1; }
    done
}

# require_oha: sets OHA to the oha binary, or stops the script (bench/run.sh builds it).
require_oha() {
    OHA=$(find_oha)
    [[ -n $OHA ]] || { echo "${0##*/}: oha not found (bench/run.sh builds it into ~/.cache/portico/bin)" >&2; exit 1; }
}

# Report helpers: the median of numbers on stdin ("nan" for none); the median of a file of
# numbers in $WORK; A / B to two places ("—" when B is 0 or A is not a number).
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
med() { if [[ -s "$WORK/$1" ]]; then median < "$WORK/$1"; else echo nan; fi; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a == a + 0) printf "%.2f", a / b; else print "—" }'; }

# One fixed-rate run: oha at RATE req/s (CONNS connections, 64 unless set; latency-corrected) for DURATION s
# against URL, after a 1 s warm-up, on the load core; prints
# `LABEL cpu_s_per_1k X p50_ms Y p99_ms Z` with the CPU time of process PID per 1,000 requests.
# Needs OHA, LOAD_CPU, ROOT and WORK.
# rate_run LABEL URL PID RATE DURATION [OHA-ARGS...]
rate_run() {
    local label=$1 url=$2 pid=$3 rate=$4 duration=$5 c0 c1 n p50 p99
    shift 5
    taskset -c "$LOAD_CPU" "$OHA" --no-tui -z 1s -c "${CONNS:-64}" -q "$rate" "$@" "$url" >/dev/null 2>&1 || true
    c0=$(cpu_ns "$pid")
    taskset -c "$LOAD_CPU" "$OHA" --no-tui --output-format json -z "${duration}s" -c "${CONNS:-64}" \
        -q "$rate" --latency-correction "$@" "$url" > "$WORK/oha.json" 2>/dev/null || true
    c1=$(cpu_ns "$pid")
    read -r n p50 p99 _ < <(python3 "$ROOT/bench/conns.py" oha "$WORK/oha.json")
    awk -v t="$label" -v n="$n" -v c=$((c1 - c0)) -v p50="$p50" -v p99="$p99" 'BEGIN {
        printf "%s cpu_s_per_1k %.4f p50_ms %s p99_ms %s\n", t, c / 1e9 / n * 1000, p50, p99 }'
}
