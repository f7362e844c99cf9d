#!/usr/bin/env bash
# make demo: Portico as a user installs it. Builds the images, starts a local cluster with a real
# kubelet node (make cluster-up: network namespace portico-dev), installs Portico with
# `helm install`, runs demo backends as Deployments, applies examples/ (the operator then runs the
# Gateway's proxy pods), runs a meshed namespace whose pods get the sidecar injected, sends
# requests north–south (through the gateway) and east–west (from an app through its sidecar),
# and prints which backend answered what. Everything keeps running; `make demo-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
# NETNS, DIR, KC, BIN, IN_NS, k, helm, step, install_portico
# shellcheck source=hack/dev-cluster-lib.sh
source hack/dev-cluster-lib.sh

down() {
  hack/cluster.sh down
}

# echo_app NAMESPACE NAME REPLICAS: a Deployment of portico-echo answering as NAME, and its
# Service (port 80 → 8080).
echo_app() {
  local ns=$1 name=$2 replicas=$3
  k apply -n "$ns" -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $name}
spec:
  replicas: $replicas
  selector: {matchLabels: {app: $name}}
  template:
    metadata: {labels: {app: $name}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
        - name: app
          image: localhost/portico/echo:v1
          args: ["$name", "0.0.0.0:8080"]
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: $name}
spec:
  selector: {app: $name}
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
}

up() {
  step "a cluster with a real node (builds the images and the Kubernetes components once)"
  hack/cluster.sh up

  step "helm install portico charts/portico"
  install_portico

  step "demo backends (portico-echo pods) and examples/ (Gateway, Routes, ServicePolicy)"
  k create namespace demo --dry-run=client -o yaml | k apply -f - >/dev/null
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
    -subj "/CN=shop.example.com" -addext "subjectAltName=DNS:shop.example.com" \
    -keyout "$DIR/shop.key" -out "$DIR/shop.crt" 2>/dev/null
  k -n demo create secret tls shop-tls --cert "$DIR/shop.crt" --key "$DIR/shop.key" \
    --dry-run=client -o yaml | k apply -f - >/dev/null
  local svc
  for svc in orders:1 orders-v1:2 orders-v2:1 admin:1 orders-shadow:1; do
    echo_app demo "${svc%:*}" "${svc#*:}"
  done
  k apply -n demo --server-side --field-manager=portico-demo -f examples/
  for svc in orders orders-v1 orders-v2 admin orders-shadow; do
    k -n demo rollout status "deployment/$svc" --timeout=120s >/dev/null
  done
  printf 'waiting for the operator to create the gateway Deployment'
  until k -n demo get deployment portico-gateway-public >/dev/null 2>&1; do printf .; sleep 1; done
  echo
  k -n demo rollout status deployment/portico-gateway-public --timeout=120s
  local gw
  gw="$(k -n demo get service portico-gateway-public -o jsonpath='{.spec.clusterIP}')"
  for _ in $(seq 60); do
    $IN_NS curl -sf -o /dev/null -H 'host: shop.example.com' "http://$gw:8080/robots.txt" && break
    sleep 1
  done

  step "a meshed namespace: pods get portico-init and the portico-proxy sidecar"
  k create namespace shop-mesh --dry-run=client -o yaml | k apply -f - >/dev/null
  k label namespace shop-mesh portico.dev/inject=enabled --overwrite >/dev/null
  echo_app shop-mesh inventory 2
  echo_app shop-mesh storefront 1
  k apply -n shop-mesh -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: nginx
          image: localhost/portico/nginx:v1
          ports: [{containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
YAML
  for d in inventory storefront web; do
    k -n shop-mesh rollout status "deployment/$d" --timeout=120s >/dev/null
  done
  k -n shop-mesh get pods -o custom-columns='POD:.metadata.name,INIT+SIDECAR:.spec.initContainers[*].name,CONTAINERS:.spec.containers[*].name,IP:.status.podIP'
  local app
  app="$(k -n shop-mesh get pods -l app=storefront -o jsonpath='{.items[0].status.podIP}')"

  step "requests"
  printf '%-60s %s\n' "north–south: curl → gateway Service $gw:8080" "status × count, answered by"
  gateway_request "GET /api/orders (x20: 90/10 split)" 20 -H 'host: shop.example.com' "http://$gw:8080/api/orders"
  gateway_request "GET /api/orders with x-canary: true (x5)" 5 -H 'host: shop.example.com' -H 'x-canary: true' "http://$gw:8080/api/orders"
  gateway_request "GET /catalogue/shoes (redirect)" 1 -H 'host: shop.example.com' "http://$gw:8080/catalogue/shoes"
  gateway_request "GET /robots.txt (direct response)" 1 -H 'host: shop.example.com' "http://$gw:8080/robots.txt"
  gateway_request "GET /api/catalog (x5: cached 30s, x-portico-cache)" 5 -H 'host: shop.example.com' "http://$gw:8080/api/catalog"
  gateway_request "GET /admin/ without an API key" 1 -H 'host: shop.example.com' "http://$gw:8080/admin/"
  # The limit is per gateway replica (two here, without a shared store): 14 at once pass 10.
  gateway_request "GET /admin/ with x-api-key (x14: 5/s per key and replica)" 14 -H 'host: shop.example.com' -H 'x-api-key: demo-key-ops-0f3a9c' "http://$gw:8080/admin/"
  gateway_request "GET /nowhere on another host (no route)" 1 -H 'host: other.example.com' "http://$gw:8080/nowhere"
  printf '%-60s %s\n' "east–west: the storefront app → its sidecar → ..." ""
  mesh_request "GET http://inventory/ (x10, 2 pods)" 10 "$app" "http://inventory/"
  mesh_request "GET http://web/ (nginx, x3)" 3 "$app" "http://web/"
  mesh_request "GET http://orders.demo/ (unmeshed Service, x3)" 3 "$app" "http://orders.demo/"

  step "status written by the operator"
  k get portico -n demo
  cat <<MSG

Everything keeps running in the network namespace "$NETNS" (make demo-down removes it all):
  $IN_NS $BIN/kubectl --kubeconfig $KC get pods -A
  $IN_NS $BIN/kubectl --kubeconfig $KC get portico -A
  $IN_NS curl -s -H 'host: shop.example.com' http://$gw:8080/api/orders
  $IN_NS curl -s 'http://$app:8080/call?url=http://inventory/'
  $IN_NS $BIN/kubectl --kubeconfig $KC -n shop-mesh logs deploy/storefront -c portico-proxy
  $IN_NS $BIN/helm --kubeconfig $KC -n portico-system status portico
Logs of the cluster's processes: $DIR/logs/ and $DIR/node/logs/.
MSG
}

# gateway_request LABEL COUNT CURL-ARGS...: one table row, counting which backend answered.
gateway_request() {
  local label=$1 count=$2
  shift 2
  local tally
  tally=$(for ((i = 0; i < count; i++)); do
    $IN_NS curl -s -o /dev/null -w '%{http_code} %header{x-backend}%header{location}%header{x-portico-error} %header{x-portico-cache}\n' "$@"
  done | sort | uniq -c | awk '{c=$1; $1=""; sub(/^ /,""); printf "%s×%s; ", c, $0}')
  printf '  %-58s %s\n' "$label" "$tally"
}

# mesh_request LABEL COUNT APP-IP URL: the app at APP-IP calls URL (portico-echo's /call), so
# the request leaves its pod through the injected sidecar.
mesh_request() {
  local label=$1 count=$2 app=$3 url=$4
  local tally
  tally=$(for ((i = 0; i < count; i++)); do
    $IN_NS curl -s "http://$app:8080/call?url=$url" |
      python3 -c 'import json,sys,re; v=json.load(sys.stdin); b=v.get("body",""); m=re.search(r"\"backend\":\"([^\"]+)\"",b); print(v.get("status"), m.group(1) if m else ("nginx" if "nginx" in b else v.get("error","")))'
  done | sort | uniq -c | awk '{c=$1; $1=""; sub(/^ /,""); printf "%s×%s; ", c, $0}')
  printf '  %-58s %s\n' "$label" "$tally"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*)
  echo "usage: hack/demo.sh up|down" >&2
  exit 2
  ;;
esac
