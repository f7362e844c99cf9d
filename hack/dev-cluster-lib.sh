# shellcheck shell=bash disable=SC2034 # sourced: the scripts that source it use its variables
# hack/dev-cluster-lib.sh: what hack/demo.sh and hack/conformance.sh share about the development
# cluster of `make cluster-up` (hack/cluster.sh): where it lives, how to reach it, and how Portico
# is installed on it. Sourced (from the repository's root), never run.
#
# The cluster's processes and pods live in the network namespace "portico-dev"; kubectl, helm,
# curl and the conformance suite reach the apiserver, pod IPs and ClusterIPs from inside it,
# entered with `nsenter --net` (not `ip netns exec`, which remounts /sys: shared/REALNODE.md).
# Environment: PORTICO_BIN_DIR (kubectl, helm, ctr; default ~/.cache/portico/bin).

NETNS=portico-dev
DIR="$(pwd)/target/dev-cluster"
KC="$DIR/kubeconfig"
BIN="${PORTICO_BIN_DIR:-$HOME/.cache/portico/bin}"
IN_NS="nsenter --net=/run/netns/$NETNS"
# The node's containerd, where images are imported (tests/src/node.rs puts it there).
CONTAINERD_SOCKET="$DIR/node/containerd/containerd.sock"

k() { $IN_NS "$BIN/kubectl" --kubeconfig "$KC" "$@"; }
helm() { $IN_NS "$BIN/helm" --kubeconfig "$KC" "$@"; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# install_portico [HELM-ARGS...]: Portico from charts/portico as a user installs it (the images
# are the ones hack/cluster.sh imported), waiting for the operator's pods; extra arguments go to
# helm (e.g. `--set gatewayAPI.gatewayClass.create=true`).
install_portico() {
  helm upgrade --install portico charts/portico -n portico-system --create-namespace \
    --wait --timeout 5m "$@"
  k -n portico-system get pods -o wide
}
