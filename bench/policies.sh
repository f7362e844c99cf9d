#!/usr/bin/env bash
# What a rule's policies cost (`make bench`): one portico-proxy (one worker, pinned to one core)
# with rules to the same nginx upstream, a plain one (`/plain`) and one with the policies
# the request pipeline runs (`/policy`: request header edits, a response header edit, a 10%
# mirror to a second backend and a retry policy — 2 attempts on 5xx, none needed here), one
# that checks an RS256 JWT (`/jwt`, the token sent on every request), and a
# 16 KB JSON document as it is (`/json`) and gzip-compressed (`/jsonz`), and the 1 KiB page
# answered from the rule's response cache (`/cached`) next to nginx's `proxy_cache` answering it
# from its cache (same core, one worker), loaded alternately by oha at a fixed rate on the other
# core. Reports the proxy's CPU-seconds per
# 1,000 requests and p50/p99, medians of interleaved repetitions. Writes
# docs/benchmarks-policies.md. Loopback only.
#
#   REPS=7 RATE=2000 DURATION=5 bench/policies.sh
#   PROXY_BIN=path/to/portico-proxy bench/policies.sh   # skip the build
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
LOADAVG_START=$(cut -d" " -f1-3 /proc/loadavg)
REPS=${REPS:-7}
RATE=${RATE:-2000}
DURATION=${DURATION:-5}
PROXY_CPU=0
LOAD_CPU=1
UP_PORT=18280
PROXY_PORT=18281
ADMIN_PORT=19281
NGX_CACHE_PORT=18282
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/proxy}
WORK=$(mktemp -d /tmp/portico-policies.XXXXXX)
source "$ROOT/bench/lib.sh" # also stops the processes in PIDS on exit

require_tools "bench/run.sh installs it" nginx python3 taskset
require_oha
if [[ -z ${PROXY_BIN:-} ]]; then
    cargo build --release -q -p portico-proxy
    PROXY_BIN=$CARGO_TARGET_DIR/release/portico-proxy
fi

upstream_conf "$WORK/up" $UP_PORT
taskset -c $LOAD_CPU nginx -p "$WORK/up" -c "$WORK/up/nginx.conf" &
PIDS+=($!)
# A JWT-checked rule: an RS256 key made here (openssl), its JWKS inline in the config as the
# operator sends a Secret's, and one token valid for a day.
openssl genrsa -out "$WORK/jwt.key" 2048 2>/dev/null
read -r JWKS TOKEN < <(python3 - "$WORK/jwt.key" <<'PY'
import base64, json, subprocess, sys, time
key = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
modulus = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"],
                         capture_output=True, check=True, text=True).stdout.strip().split("=", 1)[1]
jwks = {"keys": [{"kty": "RSA", "kid": "bench", "use": "sig", "alg": "RS256",
                  "n": b64(bytes.fromhex(modulus)), "e": "AQAB"}]}
header = {"alg": "RS256", "typ": "JWT", "kid": "bench"}
claims = {"iss": "https://bench.example", "sub": "bench", "exp": int(time.time()) + 86400}
signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(),
                     capture_output=True, check=True).stdout
print(json.dumps(jwks, separators=(",", ":")), signing_input + "." + b64(sig))
PY
)
cat > "$WORK/portico.yaml" <<YAML
apiVersion: portico.dev/proxy/v1
listeners: [{ name: web, address: "127.0.0.1:$PROXY_PORT", protocol: HTTP }]
routes:
  - name: bench
    rules:
      - name: plain
        matches: [{ path: { type: PathPrefix, value: /plain } }]
        backends: [{ backend: up }]
      - name: policy
        matches: [{ path: { type: PathPrefix, value: /policy } }]
        filters:
          - { type: RequestHeaderModifier, set: [{ name: x-tenant, value: bench }], add: [{ name: x-trace, value: "1" }], remove: [x-debug] }
          - { type: ResponseHeaderModifier, set: [{ name: x-served-by, value: portico }] }
          - { type: RequestMirror, backend: shadow, percent: 10 }
        retry: { attempts: 2, retryOn: [5xx] }
        backends: [{ backend: up }]
      - name: jwt
        matches: [{ path: { type: PathPrefix, value: /jwt } }]
        authentication: { jwt: { issuer: "https://bench.example", jwks: '$JWKS' } }
        backends: [{ backend: up }]
      - name: json
        matches: [{ path: { type: PathPrefix, value: /json } }]
        backends: [{ backend: up }]
      - name: gzip
        matches: [{ path: { type: PathPrefix, value: /jsonz } }]
        compression: { encodings: [gzip] }
        backends: [{ backend: up }]
      - name: cached
        matches: [{ path: { type: PathPrefix, value: /cached } }]
        cache: { ttl: 1h }
        backends: [{ backend: up }]
backends:
  - { name: up, endpoints: [{ address: "127.0.0.1:$UP_PORT" }] }
  - { name: shadow, endpoints: [{ address: "127.0.0.1:$UP_PORT" }] }
YAML
# nginx's own response cache in front of the same upstream: one process (no master, so its CPU
# time is this PID's), on the proxy's core, answering from its cache after the first request.
mkdir -p "$WORK/ngx/logs" "$WORK/ngx/cache"
{
    echo "master_process off;"
    nginx_head "$WORK/ngx"
    cat <<CONF
    proxy_cache_path $WORK/ngx/cache keys_zone=c:10m;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 128; keepalive_requests 10000000; }
    server {
        listen 127.0.0.1:$NGX_CACHE_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache c;
            proxy_cache_valid 200 1h;
        }
    }
}
CONF
} > "$WORK/ngx/nginx.conf"
taskset -c $PROXY_CPU nginx -p "$WORK/ngx" -c "$WORK/ngx/nginx.conf" &
NGX_CACHE=$!
PIDS+=("$NGX_CACHE")
wait_port $UP_PORT
wait_port $NGX_CACHE_PORT
taskset -c $PROXY_CPU "$PROXY_BIN" --config "$WORK/portico.yaml" --workers 1 \
    --admin-addr 127.0.0.1:$ADMIN_PORT --log-level warn &
PROXY=$!
PIDS+=("$PROXY")
wait_port $PROXY_PORT
# The JWT rule must pass the token and refuse without it, or its row would measure 401s.
code() { curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$PROXY_PORT/jwt"; }
[[ $(code -H "authorization: Bearer $TOKEN") == 200 && $(code) == 401 ]] ||
    { echo "policies.sh: the jwt rule does not check the token as expected" >&2; exit 1; }

RESULTS=$WORK/results.txt
for rep in $(seq 1 "$REPS"); do
    for rule in plain policy; do
        rate_run "$rule" "http://127.0.0.1:$PROXY_PORT/$rule" "$PROXY" "$RATE" "$DURATION" |
            tee -a "$RESULTS"
    done
    rate_run jwt "http://127.0.0.1:$PROXY_PORT/jwt" "$PROXY" "$RATE" "$DURATION" \
        -H "authorization: Bearer $TOKEN" | tee -a "$RESULTS"
    # The 16 KB JSON document as it is, and gzip-compressed for a client that accepts it.
    rate_run json "http://127.0.0.1:$PROXY_PORT/json" "$PROXY" "$RATE" "$DURATION" \
        -H "accept-encoding: gzip" | tee -a "$RESULTS"
    rate_run gzip "http://127.0.0.1:$PROXY_PORT/jsonz" "$PROXY" "$RATE" "$DURATION" \
        -H "accept-encoding: gzip" | tee -a "$RESULTS"
    # The 1 KiB page from portico's response cache and from nginx's (hits after the warm-up).
    rate_run cached "http://127.0.0.1:$PROXY_PORT/cached" "$PROXY" "$RATE" "$DURATION" |
        tee -a "$RESULTS"
    rate_run nginx-cache "http://127.0.0.1:$NGX_CACHE_PORT/cached" "$NGX_CACHE" "$RATE" "$DURATION" |
        tee -a "$RESULTS"
done
# Every answer of the cached rule after the first was a hit.
cache_lookups=$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$ADMIN_PORT/metrics').read().decode())" |
    awk '/^portico_cache_lookups_total/ && /result="miss"/ {m += $NF} /^portico_cache_lookups_total/ && /result="hit"/ {h += $NF} END {print h + 0, "hits,", m + 0, "misses"}')
# No retry was needed: the policy's cost is its bookkeeping, not extra attempts.
retries=$(python3 -c "import urllib.request as u; print(u.urlopen('http://127.0.0.1:$ADMIN_PORT/metrics').read().decode())" |
    awk '/^portico_retries_total/ {s += $NF} END {print s + 0}')

for rule in plain policy jwt json gzip cached nginx-cache; do
    for col in 3 5 7; do awk -v r=$rule -v c=$col '$1 == r {print $c}' "$RESULTS" | median > "$WORK/$rule.$col"; done
done
v() { cat "$WORK/$1.$(( $2 * 2 - 1 ))"; }
gz_size=$(python3 -c "
import urllib.request as u
r = u.urlopen(u.Request('http://127.0.0.1:$PROXY_PORT/jsonz', headers={'accept-encoding': 'gzip'}))
assert r.headers.get('content-encoding') == 'gzip', r.headers
print(len(r.read()))")
OUT=docs/benchmarks-policies.md
{
    echo "# What a rule's policies cost"
    echo
    echo "Written by \`bench/policies.sh\` (part of \`make bench\`) on $(date -u +%Y-%m-%d),"
    echo "$(nproc) cores, load average at start $LOADAVG_START. One portico-proxy (\`--workers 1\`,"
    echo "pinned to core $PROXY_CPU), nginx upstream (1 KiB) and oha at $RATE req/s (64 connections,"
    echo "latency-corrected) on core $LOAD_CPU; $REPS interleaved repetitions of ${DURATION} s per rule,"
    echo "medians. \`policy\`: request header set/add/remove, a response header set, a 10% mirror to a"
    echo "second backend, a retry policy (2 attempts on 5xx; the upstream never fails, retries sent:"
    echo "$retries). \`jwt\`: an RS256 token (2048-bit key, JWKS inline as from a Secret) checked on"
    echo "every request (signature, \`iss\`, \`exp\`). All three run on the fast HTTP/1 path."
    echo
    echo "| rule | CPU-s per 1,000 req | p50 (ms) | p99 (ms) |"
    echo "|---|---:|---:|---:|"
    echo "| plain | $(v plain 2) | $(v plain 3) | $(v plain 4) |"
    echo "| policy | $(v policy 2) | $(v policy 3) | $(v policy 4) |"
    echo "| policy / plain | $(ratio "$(v policy 2)" "$(v plain 2)") | | $(ratio "$(v policy 4)" "$(v plain 4)") |"
    echo "| jwt | $(v jwt 2) | $(v jwt 3) | $(v jwt 4) |"
    echo "| jwt / plain | $(ratio "$(v jwt 2)" "$(v plain 2)") | | $(ratio "$(v jwt 4)" "$(v plain 4)") |"
    echo
    echo "The same proxy, a 16 KB JSON document (\`accept-encoding: gzip\` sent): \`json\` as it is,"
    echo "\`gzip\` compressed by the rule's \`compression\` (gzip level 5; $gz_size bytes on the wire)."
    echo "Request IDs and trace context are stamped on every request of every rule."
    echo
    echo "| rule | CPU-s per 1,000 req | p50 (ms) | p99 (ms) |"
    echo "|---|---:|---:|---:|"
    echo "| json | $(v json 2) | $(v json 3) | $(v json 4) |"
    echo "| gzip | $(v gzip 2) | $(v gzip 3) | $(v gzip 4) |"
    echo "| ratio | $(ratio "$(v gzip 2)" "$(v json 2)") | | $(ratio "$(v gzip 4)" "$(v json 4)") |"
    echo
    echo "The 1 KiB page answered from a response cache: \`cached\`, the rule's \`cache\` (\`ttl: 1h\`;"
    echo "such rules run on hyper's path; $cache_lookups), next to \`plain\` above (forwarded on the"
    echo "fast path), and \`nginx-cache\`, nginx's \`proxy_cache\` (one process, \`master_process off\`,"
    echo "pinned to the proxy's core) in front of the same upstream."
    echo
    echo "| target | CPU-s per 1,000 req | p50 (ms) | p99 (ms) |"
    echo "|---|---:|---:|---:|"
    echo "| plain (forwarded) | $(v plain 2) | $(v plain 3) | $(v plain 4) |"
    echo "| cached (portico hit) | $(v cached 2) | $(v cached 3) | $(v cached 4) |"
    echo "| nginx-cache (nginx hit) | $(v nginx-cache 2) | $(v nginx-cache 3) | $(v nginx-cache 4) |"
    echo "| cached / plain | $(ratio "$(v cached 2)" "$(v plain 2)") | | $(ratio "$(v cached 4)" "$(v plain 4)") |"
    echo "| cached / nginx-cache | $(ratio "$(v cached 2)" "$(v nginx-cache 2)") | | $(ratio "$(v cached 4)" "$(v nginx-cache 4)") |"
} > "$OUT"
cat "$OUT"
