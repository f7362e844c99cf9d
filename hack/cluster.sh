#!/usr/bin/env bash
# make cluster-up / cluster-down: a development control plane with one real kubelet node
# (containerd, runc, CNI bridge, kube-proxy, CoreDNS) in the named network namespace
# "portico-dev"; state and kubeconfig in target/dev-cluster/. Safe to run twice.
#
# The namespace is entered with `nsenter --net`, never `ip netns exec`: the latter remounts /sys,
# which hides the cgroup hierarchies kubelet, containerd and runc need (shared/REALNODE.md).
set -euo pipefail
cd "$(dirname "$0")/.."
NETNS=portico-dev
DIR="$(pwd)/target/dev-cluster"
TARGET="${CARGO_TARGET_DIR:-target}"
[[ $TARGET = /* ]] || TARGET="$(pwd)/$TARGET"
BIN="${PORTICO_BIN_DIR:-$HOME/.cache/portico/bin}"

case "${1:-}" in
up)
  hack/k8s-bins.sh >/dev/null
  # The debug images of the tests unless PORTICO_IMAGES_DIR names others (e.g. `make images`'
  # release builds in target/images).
  if [[ -z ${PORTICO_IMAGES_DIR:-} ]]; then
    if ! out="$(make -s test-images 2>&1)"; then
      echo "$out" >&2
      exit 1
    fi
    PORTICO_IMAGES_DIR="$TARGET/images-debug"
  fi
  cargo build -q -p portico-tests --bin portico-devcluster
  if ! ip netns list | grep -qw "$NETNS"; then
    ip netns add "$NETNS"
  fi
  PORTICO_IMAGES_DIR="$(realpath "$PORTICO_IMAGES_DIR")" \
    nsenter --net="/run/netns/$NETNS" "$TARGET/debug/portico-devcluster" up "$DIR"
  cat <<MSG

The cluster runs inside the network namespace "$NETNS" (pods 198.18.128.0/24, Services
198.19.0.0/16, node 198.18.255.1). Use it with:

  nsenter --net=/run/netns/$NETNS $BIN/kubectl --kubeconfig $DIR/kubeconfig get nodes,pods -A

Logs: $DIR/logs/ and $DIR/node/logs/. Stop it with: make cluster-down
MSG
  ;;
down)
  if [[ -f "$DIR/pids" || -f "$DIR/node/node.json" ]]; then
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
