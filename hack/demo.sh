#!/usr/bin/env bash
# make demo: Portico end to end on a local control plane. Builds what it needs, starts the
# control plane (network namespace portico-dev), the operator, demo backends and a gateway proxy
# (local processes; kwok gives the pods their addresses), applies examples/, sends requests and
# prints which backend answered what. Everything keeps running; `make demo-down` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
NETNS=portico-dev
DIR="$(pwd)/target/dev-cluster"
DEMO="$DIR/demo"
KC="$DIR/kubeconfig"
BIN="${PORTICO_BIN_DIR:-$HOME/.cache/portico/bin}"
TARGET="${CARGO_TARGET_DIR:-target}"
[[ $TARGET = /* ]] || TARGET="$(pwd)/$TARGET"
k() { ip netns exec "$NETNS" "$BIN/kubectl" --kubeconfig "$KC" "$@"; }
in_ns() { ip netns exec "$NETNS" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# start NAME CMD...: a background process inside the namespace, PID recorded for demo-down.
start() {
  local name=$1
  shift
  setsid ip netns exec "$NETNS" "$@" >"$DEMO/logs/$name.log" 2>&1 </dev/null &
  echo "$name $!" >>"$DEMO/pids"
}

wait_for() { # DESCRIPTION SECONDS CMD...
  local what=$1 secs=$2
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2
  return 1
}

down() {
  if [[ -f $DEMO/pids ]]; then
    while read -r name pid; do
      kill "$pid" 2>/dev/null && echo "stopped $name" || true
    done <"$DEMO/pids"
    rm -f "$DEMO/pids"
  fi
  hack/cluster.sh down
}

up() {
  step "building portico-operator, portico-proxy and the demo backend"
  cargo build -q -p portico-operator -p portico-proxy -p portico-tests --bins
  [[ -f $DEMO/pids ]] && down >/dev/null 2>&1 || true
  hack/cluster.sh up
  mkdir -p "$DEMO/logs" "$DEMO/tls"

  step "certificates for the operator's config server"
  # A CA and a serving certificate signed by it (TLS verifiers refuse a CA as the server's cert).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=portico-demo-ca" -keyout "$DEMO/tls/ca.key" -out "$DEMO/tls/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=portico-operator" \
    -keyout "$DEMO/tls/tls.key" -out "$DEMO/tls/tls.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    >"$DEMO/tls/ext.cnf"
  openssl x509 -req -in "$DEMO/tls/tls.csr" -CA "$DEMO/tls/ca.crt" -CAkey "$DEMO/tls/ca.key" \
    -CAcreateserial -days 30 -extfile "$DEMO/tls/ext.cnf" -out "$DEMO/tls/tls.crt" 2>/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=shop.example.com" -addext "subjectAltName=DNS:shop.example.com" \
    -keyout "$DEMO/tls/shop.key" -out "$DEMO/tls/shop.crt" 2>/dev/null

  step "portico-operator"
  k create namespace portico-system --dry-run=client -o yaml | k apply -f - >/dev/null
  start operator "$TARGET/debug/portico-operator" --kubeconfig "$KC" \
    --config-tls-cert "$DEMO/tls/tls.crt" --config-tls-key "$DEMO/tls/tls.key" \
    --config-tls-ca "$DEMO/tls/ca.crt" \
    --admin-addr 127.0.0.1:9902 --config-addr 127.0.0.1:18443 \
    --control-plane-url https://127.0.0.1:18443 --lease-namespace portico-system \
    --proxy-image portico-proxy:dev
  wait_for "the operator to be ready" 60 in_ns curl -sf http://127.0.0.1:9902/ready
  echo "operator ready (admin http://127.0.0.1:9902, config server https://127.0.0.1:18443)"

  # Backends listen on 9080: in this one network namespace the gateway binds 0.0.0.0:8080.
  step "demo backends: Deployments whose kwok pods are served by portico-echo processes"
  k create namespace demo --dry-run=client -o yaml | k apply -f - >/dev/null
  k -n demo create secret tls shop-tls --cert "$DEMO/tls/shop.crt" --key "$DEMO/tls/shop.key" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  local svc replicas
  for svc in orders:1 orders-v1:2 orders-v2:1 admin:1 orders-shadow:1; do
    replicas=${svc#*:}
    svc=${svc%:*}
    k -n demo create deployment "$svc" --image=portico.dev/echo:demo --replicas="$replicas" \
      --port=9080 --dry-run=client -o yaml | k apply -f - >/dev/null
    k -n demo create service clusterip "$svc" --tcp=80:9080 --dry-run=client -o yaml \
      | k apply -f - >/dev/null
  done
  wait_for "backend pods" 60 bash -c "[[ \$(ip netns exec $NETNS $BIN/kubectl --kubeconfig $KC -n demo get pods --field-selector=status.phase=Running -o name | wc -l) -ge 6 ]]"
  k -n demo get pods -o jsonpath='{range .items[*]}{.metadata.labels.app} {.status.podIP}{"\n"}{end}' |
    while read -r app ip; do
      start "echo-$app-$ip" "$TARGET/debug/portico-echo" "$app" "$ip:9080"
      echo "  $app on $ip:9080"
    done

  step "applying examples/ (Gateway, Routes, ServicePolicy)"
  k apply -n demo --server-side --field-manager=portico-demo -f examples/
  wait_for "the Gateway's proxy ServiceAccount" 30 k -n demo get serviceaccount portico-gateway-public

  step "a gateway proxy for Gateway demo/public, fed by the operator's stream"
  k -n demo create token portico-gateway-public --audience portico --duration 24h >"$DEMO/tls/gateway.token"
  start gateway "$TARGET/debug/portico-proxy" --control-plane https://127.0.0.1:18443 \
    --gateway demo/public --token-file "$DEMO/tls/gateway.token" --ca-file "$DEMO/tls/ca.crt" \
    --admin-addr 127.0.0.1:9901
  wait_for "the gateway proxy to be ready" 60 in_ns curl -sf http://127.0.0.1:9901/ready
  wait_for "routes on the gateway" 30 in_ns curl -sf -o /dev/null -H 'host: shop.example.com' http://127.0.0.1:8080/robots.txt

  step "requests through the gateway (listener http, port 8080)"
  printf '%-52s %-8s %s\n' "request" "status" "answered by"
  demo_request "GET /api/orders (x20: 90/10 split)" 20 -H 'host: shop.example.com' http://127.0.0.1:8080/api/orders
  demo_request "GET /api/orders with x-canary: true (x5)" 5 -H 'host: shop.example.com' -H 'x-canary: true' http://127.0.0.1:8080/api/orders
  demo_request "GET /catalogue/shoes (redirect)" 1 -H 'host: shop.example.com' http://127.0.0.1:8080/catalogue/shoes
  demo_request "GET /robots.txt (direct response)" 1 -H 'host: shop.example.com' http://127.0.0.1:8080/robots.txt
  demo_request "GET /nowhere on another host (no route)" 1 -H 'host: other.example.com' http://127.0.0.1:8080/nowhere

  step "status written by the operator"
  k get portico -n demo
  cat <<MSG

Everything keeps running inside the network namespace "$NETNS":
  ip netns exec $NETNS $BIN/kubectl --kubeconfig $KC get portico -A
  ip netns exec $NETNS curl -s -H 'host: shop.example.com' http://127.0.0.1:8080/api/orders
  ip netns exec $NETNS curl -s http://127.0.0.1:9901/metrics | grep portico_requests_total
Logs: $DEMO/logs/. Stop it all with: make demo-down
MSG
}

# demo_request LABEL COUNT CURL-ARGS...: one table row, counting which backend answered.
demo_request() {
  local label=$1 count=$2
  shift 2
  local tally
  tally=$(for ((i = 0; i < count; i++)); do
    in_ns curl -s -o /dev/null -w '%{http_code} %header{x-backend}%header{location}%header{x-portico-error}\n' "$@"
  done | sort | uniq -c | awk '{c=$1; $1=""; sub(/^ /,""); printf "%s×%s; ", c, $0}')
  printf '%-52s %s\n' "$label" "$tally"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*)
  echo "usage: hack/demo.sh up|down" >&2
  exit 2
  ;;
esac
