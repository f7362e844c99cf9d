#!/usr/bin/env bash
# make conformance: the upstream Gateway API conformance suite (Go module
# sigs.k8s.io/gateway-api/conformance, the version hack/conformance/go.mod pins, matching the
# vendored CRDs) against Portico installed by its chart on the development cluster with a real
# kubelet node (make cluster-up). The suite's YAML report goes to docs/conformance/.
#
# Steps: build the suite (`go test -c` of hack/conformance) and its backends (echo-basic from the
# same module, and CoreDNS for the DNS backend the base manifests also deploy), cached by version
# outside the checkout; write them as OCI images under the references the suite's manifests name
# (hack/images.sh ... binary), so the kubelet finds them and never pulls; start the cluster and
# import the images; `helm install` Portico with its GatewayClass "portico"; check that an
# echo-basic pod answers on its pod IP; run the suite inside the network namespace (it sends
# its requests to the Gateways' addresses, ClusterIPs that kube-proxy routes there); copy the
# report; collect logs; stop the cluster (unless it was already running or KEEP=1).
#
# Environment:
#   CONFORMANCE_RUN=Name   run one test of the suite (its -run-test flag), e.g.
#                          HTTPRouteSimpleSameNamespace; the report then stays in target/.
#   CONFORMANCE_ARGS="..." more flags for the suite (e.g. -debug, -skip-tests=A,B,
#                          -supported-features=..., -timeout-config-overrides=...,
#                          -test.run=...); the report then stays in target/ too.
#   CONFORMANCE_FEATURES   a comma-separated list of features to test instead of those the
#                          GatewayClass publishes in status.supportedFeatures (the default).
#   CONFORMANCE_TIMEOUT    the test binary's -test.timeout (default 90m).
#   KEEP=1                 leave the cluster and the suite's base resources up afterwards.
#   PORTICO_CACHE          build cache (default ~/.cache/portico), PORTICO_BIN_DIR, CARGO_TARGET_DIR.
# Output: target/conformance/ (suite.log, report.yaml, cluster diagnostics);
# docs/conformance/portico-v<appVersion>-<PROFILES>.yaml after a full run.
# Needs: root, Go (GOTOOLCHAIN=local, the Go module proxy), what make cluster-up needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# NETNS, DIR, KC, BIN, IN_NS, CONTAINERD_SOCKET, k, helm, step, install_portico
# shellcheck source=hack/dev-cluster-lib.sh
source hack/dev-cluster-lib.sh

OUT="$ROOT/target/conformance"
HARNESS="$ROOT/hack/conformance"
CACHE="${PORTICO_CACHE:-$HOME/.cache/portico}/conformance"
KEEP=${KEEP:-0}
# The harness builds from its committed go.mod and go.sum as they are (-mod=readonly: a
# missing entry fails instead of editing the checkout).
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly

START=$(date +%s)
LAST=$START
# lap LABEL: how long the step that just ended took (the figures in docs/conformance/README.md).
lap() {
  local now
  now=$(date +%s)
  printf '   (%s: %ss)\n' "$1" $((now - LAST))
  LAST=$now
}
die() { echo "conformance.sh: $*" >&2; exit 1; }

SUITE_VERSION=$(awk '$1 == "sigs.k8s.io/gateway-api/conformance" { print $2 }' "$HARNESS/go.mod")
[[ -n $SUITE_VERSION ]] || die "hack/conformance/go.mod does not require sigs.k8s.io/gateway-api/conformance"
APP_VERSION=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' charts/portico/Chart.yaml)
# The CoreDNS source the cluster's DNS is built from (hack/k8s-bins.sh): already downloaded.
# shellcheck disable=SC2016 # the pattern matches a literal ${...} in that script
COREDNS_VERSION=${COREDNS_VERSION:-$(sed -n 's/^COREDNS_VERSION="${COREDNS_VERSION:-\(v[^}]*\)}"$/\1/p' hack/k8s-bins.sh)}
[[ -n $COREDNS_VERSION ]] || die "no COREDNS_VERSION in hack/k8s-bins.sh"
mkdir -p "$OUT" "$CACHE"

# ---------------------------------------------------------------------------------------------
step "the suite $SUITE_VERSION and its echo-basic server (go test -c, cached)"
MODDIR=$(cd "$HARNESS" && go mod download -json "sigs.k8s.io/gateway-api/conformance@$SUITE_VERSION" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -f $MODDIR/base/manifests.yaml ]] || die "no base/manifests.yaml in the conformance module ($MODDIR)"
# Keyed by everything that goes into the binaries: the harness's sources and go.sum, and Go.
KEY=$(cat "$HARNESS"/go.mod "$HARNESS"/go.sum "$HARNESS"/*.go <(go version) | sha256sum | cut -c1-12)
SUITE_DIR="$CACHE/suite-$SUITE_VERSION-$KEY"
if [[ ! -f $SUITE_DIR/.ok ]]; then
  echo "building into $SUITE_DIR (cold: several minutes on 2 cores)"
  rm -rf "$SUITE_DIR"
  mkdir -p "$SUITE_DIR"
  (cd "$HARNESS" && go test -c -o "$SUITE_DIR/conformance.test" .)
  # As upstream's Dockerfile builds it: static, stripped, no build ID.
  (cd "$HARNESS" && CGO_ENABLED=0 go build -trimpath -ldflags '-buildid= -s -w' \
    -o "$SUITE_DIR/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic)
  touch "$SUITE_DIR/.ok"
fi
SUITE="$SUITE_DIR/conformance.test"
lap suite

# ---------------------------------------------------------------------------------------------
step "CoreDNS $COREDNS_VERSION with the plugins of the suite's DNS backend (cached)"
# The base manifests run CoreDNS (registry.k8s.io/coredns/coredns) as the UDPRoute tests'
# backend, and the suite waits for every pod of its namespaces to be ready before any test,
# so it must run here too. Its Corefile uses `forward`, `log`, `errors` and `whoami`: the
# cluster's own CoreDNS build has none of `forward` and `whoami`, hence this one. (Its upstreams,
# 8.8.8.8 and 9.9.9.9, are unreachable from the network namespace, which has no link out; only
# a UDP test queries it.) The plugins in the order a query passes them (CoreDNS's plugin.cfg
# order); a change to the list builds anew.
DNS_PLUGINS=(errors log forward whoami)
COREDNS="$CACHE/coredns-$COREDNS_VERSION-$(IFS=-; echo "${DNS_PLUGINS[*]}")/coredns"
if [[ ! -x $COREDNS ]]; then
  work="$(dirname "$COREDNS")/build"
  mkdir -p "$work"
  {
    echo "// CoreDNS with the plugins the Gateway API conformance suite's DNS backend uses."
    echo "package main"
    echo
    echo "import ("
    echo '	"github.com/coredns/coredns/core/dnsserver"'
    echo '	"github.com/coredns/coredns/coremain"'
    echo
    printf '\t_ "github.com/coredns/coredns/plugin/%s"\n' "${DNS_PLUGINS[@]}"
    echo ")"
    echo
    printf 'func init() { dnsserver.Directives = []string{%s} }\n' \
      "$(printf '"%s", ' "${DNS_PLUGINS[@]}" | sed 's/, $//')"
    echo
    echo "func main() { coremain.Run() }"
  } >"$work/main.go"
  gomod=$(cd "$work" && go mod download -json "github.com/coredns/coredns@$COREDNS_VERSION" |
    sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module portico.dev/coredns-conformance"
    echo
    grep -E '^go [0-9]' "$gomod"
    echo
    echo "require github.com/coredns/coredns $COREDNS_VERSION"
  } >"$work/go.mod"
  (cd "$work" && GOFLAGS=-mod=mod go mod tidy && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$COREDNS.tmp" .)
  mv "$COREDNS.tmp" "$COREDNS"
fi
lap coredns

# ---------------------------------------------------------------------------------------------
step "images under the references of the suite's manifests"
# Every echo-basic tag the suite's manifests name (base and per-test; several releases' tags,
# all served by this one build), and the base manifests' CoreDNS. Their pull policy is
# IfNotPresent (unset with a non-latest tag, or explicit), so imported images are used as they
# are and the upstream manifests run unchanged. echo-advanced (mesh/manifests.yaml, the MESH
# profiles only) is not in this module and is not built.
mapfile -t ECHO_REFS < <(grep -rhoE 'image: *registry\.k8s\.io/gateway-api/echo-basic:[^[:space:]]+' \
  "$MODDIR/base" "$MODDIR/tests" | sed 's/^image: *//' | sort -u)
mapfile -t DNS_REFS < <(grep -hoE 'image: *[^[:space:]]+/coredns:[^[:space:]]+' "$MODDIR/base/manifests.yaml" |
  sed 's/^image: *//' | sort -u)
[[ ${#ECHO_REFS[@]} -gt 0 ]] || die "no echo-basic image in the suite's manifests"
if grep -rhE 'image: *registry\.k8s\.io/gateway-api/echo-basic:' "$MODDIR/base" "$MODDIR/tests" | grep -q ':latest'; then
  die "a manifest names echo-basic:latest, which the kubelet would pull (Always): not handled"
fi
# echo-basic runs as nonroot like upstream's distroless image; CoreDNS as root so that the
# manifest's NET_BIND_SERVICE (the only capability it keeps) lets it bind port 53 (upstream's
# image gives its binary that file capability; these tarballs carry no xattrs).
hack/images.sh "$OUT/images/echo-basic" binary "$SUITE_DIR/echo-basic" 65532:65532 "${ECHO_REFS[@]}"
if [[ ${#DNS_REFS[@]} -gt 0 ]]; then
  hack/images.sh "$OUT/images/coredns" binary "$COREDNS" "" "${DNS_REFS[@]}"
fi
lap images

# ---------------------------------------------------------------------------------------------
step "the development cluster (make cluster-up)"
WAS_UP=0
if ip netns list | grep -qw "$NETNS" && k get --raw /readyz >/dev/null 2>&1; then
  WAS_UP=1
  echo "already running: it stays up afterwards"
fi
# shellcheck disable=SC2317 # run by the EXIT trap
finish() {
  local rc=$?
  if [[ -s $KC ]] && k get --raw /readyz >/dev/null 2>&1; then
    # What is needed to understand a failure after the cluster is gone.
    {
      k get gatewayclasses,gateways.gateway.networking.k8s.io,httproutes,grpcroutes -A -o yaml
      k get pods,services,deployments -A -o wide
      k get events -A --sort-by=.lastTimestamp
    } >"$OUT/cluster-state.txt" 2>&1 || true
    k -n portico-system logs -l app.kubernetes.io/name=portico,app.kubernetes.io/component=operator --all-containers --prefix \
      --tail=-1 >"$OUT/operator.log" 2>&1 || true
  fi
  if [[ $KEEP == 1 || $WAS_UP == 1 ]]; then
    echo "the cluster keeps running (make cluster-down stops it)"
  elif ip netns list | grep -qw "$NETNS"; then
    step "make cluster-down"
    hack/cluster.sh down || true
  fi
  echo "total: $(($(date +%s) - START))s"
  exit "$rc"
}
trap finish EXIT
hack/cluster.sh up >"$OUT/cluster-up.log" 2>&1 || { cat "$OUT/cluster-up.log" >&2; die "make cluster-up failed"; }
tail -n 3 "$OUT/cluster-up.log" | head -n 1
hack/images-import.sh "$CONTAINERD_SOCKET" "$OUT/images/echo-basic"
if [[ ${#DNS_REFS[@]} -gt 0 ]]; then
  hack/images-import.sh "$CONTAINERD_SOCKET" "$OUT/images/coredns"
fi
lap cluster

# ---------------------------------------------------------------------------------------------
step "helm install portico charts/portico, with the GatewayClass \"portico\""
install_portico --set gatewayAPI.gatewayClass.create=true
lap install

# ---------------------------------------------------------------------------------------------
step "echo-basic answers on its pod IP (before spending minutes in the suite)"
# One pod per echo-basic reference, as the base manifests run it (POD_NAME, NAMESPACE, port
# 3000): a broken image or import fails here in seconds, with its reason.
PRE=portico-conformance-preflight
k create namespace "$PRE" --dry-run=client -o yaml | k apply -f - >/dev/null
for i in "${!ECHO_REFS[@]}"; do
  k apply -n "$PRE" -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: echo-basic-$i, labels: {app: echo-basic}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: echo-basic
      image: ${ECHO_REFS[$i]}
      env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
YAML
done
if ! k -n "$PRE" wait pod -l app=echo-basic --for=condition=Ready --timeout=120s >/dev/null; then
  k -n "$PRE" get pods -o wide
  k -n "$PRE" describe pods | tail -n 30
  die "echo-basic pods did not get ready"
fi
for i in "${!ECHO_REFS[@]}"; do
  ip=$(k -n "$PRE" get pod "echo-basic-$i" -o jsonpath='{.status.podIP}')
  body=$($IN_NS curl -s --max-time 5 --retry 5 --retry-connrefused --retry-delay 1 "http://$ip:3000/preflight") ||
    die "echo-basic-$i (${ECHO_REFS[$i]}) at $ip:3000 did not answer"
  grep -q "\"pod\": *\"echo-basic-$i\"" <<<"$body" || die "echo-basic-$i answered unexpectedly: $body"
  printf '  %-58s %s:3000 answered as pod echo-basic-%s\n' "${ECHO_REFS[$i]}" "$ip" "$i"
done
k delete namespace "$PRE" --wait=false >/dev/null
lap preflight

# ---------------------------------------------------------------------------------------------
step "the suite (inside the network namespace $NETNS)"
gwc_status() {
  k get gatewayclass portico -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {end}' 2>/dev/null
}
echo "GatewayClass portico: $(gwc_status)"
args=()
FILTERED=0
if [[ -n ${CONFORMANCE_RUN:-} ]]; then
  args+=("-run-test=$CONFORMANCE_RUN")
  FILTERED=1
  # The suite infers features from the GatewayClass only for a whole run; one test gets the
  # same list from here, so an extended test is run, not skipped.
  if [[ -z ${CONFORMANCE_FEATURES:-} ]]; then
    CONFORMANCE_FEATURES=$(k get gatewayclass portico -o jsonpath='{range .status.supportedFeatures[*]}{.name}{","}{end}' | sed 's/,$//')
  fi
fi
if [[ -n ${CONFORMANCE_ARGS:-} ]]; then
  read -r -a extra <<<"$CONFORMANCE_ARGS"
  args+=("${extra[@]}")
  FILTERED=1
fi
if [[ $KEEP == 1 ]]; then
  args+=(-cleanup-base-resources=false)
fi
REPORT="$OUT/report.yaml"
LOG="$OUT/suite.log"
rm -f "$REPORT"
echo "log: $LOG"
set +e
# -test.v: the suite's progress (tlog) is only printed in verbose mode.
(cd "$OUT" && $IN_NS env KUBECONFIG="$KC" PORTICO_VERSION="$APP_VERSION" \
  CONFORMANCE_FEATURES="${CONFORMANCE_FEATURES:-}" \
  "$SUITE" -test.v -test.timeout="${CONFORMANCE_TIMEOUT:-90m}" -report-output="$REPORT" \
  "${args[@]}") 2>&1 | tee "$LOG" | grep --line-buffered -E '^\s*(=== RUN|--- (PASS|FAIL|SKIP)|PASS|FAIL|ok )|Test Setup|Error:|Messages:'
SUITE_RC=${PIPESTATUS[0]}
set -e
lap suite-run

# ---------------------------------------------------------------------------------------------
step "result"
pass=$(grep -cE '^\s+--- PASS' "$LOG" || true)
fail=$(grep -cE '^\s+--- FAIL' "$LOG" || true)
echo "suite exit code $SUITE_RC; subtests: $pass passed, $fail failed (log: $LOG)"
if grep -q 'GatewayClass to have Accepted condition' "$LOG"; then
  cat <<MSG
The suite stopped in its setup: GatewayClass "portico" never got Accepted=True (with
observedGeneration current) from a controller named portico.dev/gateway-controller, so no test
ran. Status now: $(gwc_status)
The operator must serve the Gateway API kinds for this to pass (see docs/conformance/README.md).
MSG
elif grep -q 'namespaces to be ready' "$LOG"; then
  # The suite polls each namespace's Gateways (Accepted, then Programmed, both with the current
  # observedGeneration) and then its pods; its last complaint says which one held it up.
  last=$(grep -E 'Gateway not (Accepted|Programmed) yet|Gateway .* expected observedGeneration|Pod .* not ready|ready yet' "$LOG" | tail -n 1 | sed 's/^ *//')
  cat <<MSG
The suite stopped in its setup: the base manifests' Gateways and pods did not all get ready
within its timeout, so no test ran. Its last complaint: ${last:-none logged}
State of the Gateways and pods: $OUT/cluster-state.txt (written on exit).
MSG
fi
if [[ -s $REPORT ]] && grep -qE '^  name: ' "$REPORT"; then
  if ((FILTERED)); then
    echo "report (a filtered run, kept out of docs/): $REPORT"
  else
    profiles=$(sed -n 's/^  name: \(.*\)$/\1/p' "$REPORT" | sort | paste -sd+)
    dest="docs/conformance/portico-v${APP_VERSION}-${profiles:-GATEWAY-HTTP}.yaml"
    mkdir -p docs/conformance
    cp "$REPORT" "$dest"
    echo "report: $dest"
  fi
  sed -n '/^profiles:/,$p' "$REPORT" | grep -E '^  name:|^    result:|^      (Passed|Failed|Skipped):' || true
else
  echo "no report with results was written (the suite stops before any test when its setup fails)"
fi
exit "$SUITE_RC"
