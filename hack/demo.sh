#!/usr/bin/env bash
# make demo: the local control plane with Portico's CRDs installed and the examples applied.
# (The operator, gateway proxy and demo backends join this script as they land.)
set -euo pipefail
cd "$(dirname "$0")/.."
NETNS=portico-dev
KC="$(pwd)/target/dev-cluster/kubeconfig"
KUBECTL="${PORTICO_BIN_DIR:-$HOME/.cache/portico/bin}/kubectl"
k() { ip netns exec "$NETNS" "$KUBECTL" --kubeconfig "$KC" "$@"; }

case "${1:-up}" in
up)
  hack/cluster.sh up
  k create namespace demo --dry-run=client -o yaml | k apply -f - >/dev/null
  k apply -n demo --server-side --field-manager=portico-demo -f examples/
  echo
  echo "== kubectl get portico -n demo"
  k get portico -n demo
  echo
  echo "== an invalid Route is rejected at admission, with the field named:"
  k apply -n demo -f - <<'YAML' 2>&1 | sed 's/^/   /' || true
apiVersion: portico.dev/v1alpha1
kind: Route
metadata: {name: broken}
spec:
  parentRefs: [{kind: Gateway, name: public}]
  rules:
    - filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]
      backendRefs: [{name: web, port: 80}]
YAML
  echo
  echo "The demo keeps running. Try:  ip netns exec $NETNS $KUBECTL --kubeconfig $KC explain route.spec.rules"
  echo "Stop it with: make demo-down"
  ;;
down)
  hack/cluster.sh down
  ;;
*)
  echo "usage: hack/demo.sh up|down" >&2
  exit 2
  ;;
esac
