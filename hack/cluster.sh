#!/usr/bin/env bash
# make cluster-up / cluster-down: a development control plane in the named network namespace
# "portico-dev", state and kubeconfig in target/dev-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."
NETNS=portico-dev
DIR=target/dev-cluster
TARGET="${CARGO_TARGET_DIR:-target}"

case "${1:-}" in
up)
  hack/k8s-bins.sh >/dev/null
  cargo build -q -p portico-tests --bin portico-devcluster
  if ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
  fi
  ip netns exec "$NETNS" ip link set lo up
  ip netns exec "$NETNS" ip route replace local 198.18.0.0/15 dev lo
  ip netns exec "$NETNS" "$TARGET/debug/portico-devcluster" up "$DIR"
  KC="$(pwd)/$DIR/kubeconfig"
  cat <<MSG

The control plane runs inside the network namespace "$NETNS". Use it with:

  ip netns exec $NETNS $HOME/.cache/portico/bin/kubectl --kubeconfig $KC get nodes
  ip netns exec $NETNS $HOME/.cache/portico/bin/kubectl --kubeconfig $KC get portico -A

Logs: $DIR/logs/. Stop it with: make cluster-down
MSG
  ;;
down)
  if [[ -f "$DIR/pids" ]]; then
    cargo build -q -p portico-tests --bin portico-devcluster
    "$TARGET/debug/portico-devcluster" down "$DIR"
  fi
  if ip netns list | grep -qw "$NETNS"; then
    ip netns del "$NETNS"
  fi
  echo "cluster down"
  ;;
*)
  echo "usage: hack/cluster.sh up|down" >&2
  exit 2
  ;;
esac
