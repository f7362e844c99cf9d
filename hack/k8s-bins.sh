#!/usr/bin/env bash
# Builds (once) and caches the real Kubernetes components Portico's tests run against:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm and h2spec, and for
# the real node kubelet, kube-proxy, containerd (+ ctr, shim), runc and CoreDNS.
# Everything comes from Go modules; nothing is downloaded from release pages. The node's CNI
# plugins, iptables and libseccomp (runc's cgo) come from Debian packages.
#
# Usage: hack/k8s-bins.sh            build what is missing, print the bin directory
# Cache: ${PORTICO_CACHE:-~/.cache/portico}/bin/<component>-<version>
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
# h2spec, the HTTP/2 conformance tester the proxy is tested with (tests/tests/h2spec.rs); it has
# no go.mod, hence +incompatible.
H2SPEC_VERSION="${H2SPEC_VERSION:-v2.2.1+incompatible}"
CONTAINERD_VERSION="${CONTAINERD_VERSION:-v2.4.2}"
RUNC_VERSION="${RUNC_VERSION:-v1.5.3}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
K8S_COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

CACHE="${PORTICO_CACHE:-$HOME/.cache/portico}"
BIN="$CACHE/bin"
mkdir -p "$BIN"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod" GOTOOLCHAIN=local

log() { printf '[k8s-bins %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# have NAME VERSION: the versioned binary exists (a marker is written only after a good build).
have() { [[ -x "$BIN/$1-$2" && -f "$BIN/.$1-$2.ok" ]]; }

link() { ln -sf "$1-$2" "$BIN/$1"; touch "$BIN/.$1-$2.ok"; }

build_kubernetes() {
  local missing=0 c
  for c in "${K8S_COMPONENTS[@]}"; do
    have "$c" "$K8S_VERSION" || missing=1
  done
  ((missing)) || return 0
  log "building Kubernetes $K8S_VERSION (cold: 15-30 min on 2 cores)"
  local work="$CACHE/build/kubernetes-$K8S_VERSION"
  mkdir -p "$work"
  local gomod
  gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  [[ -f "$gomod" ]] || { log "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION"; exit 1; }
  local staging_version="v0.${K8S_VERSION#v1.}"
  {
    echo "module portico.dev/k8s-build"
    echo
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module k8s.io/kubernetes replaces with a local folder, pinned to its
    # published version instead. Generated from the go.mod itself, never hand-copied.
    grep -E '^\s*k8s.io/[^ ]+ => \./staging/' "$gomod" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } >"$work/go.mod"
  log "wrapper module lists $(grep -c '^replace' "$work/go.mod") staging replacements"
  local pkgs=("${K8S_COMPONENTS[@]/#/k8s.io/kubernetes/cmd/}")
  (cd "$work" && go get "${pkgs[@]/%/@$K8S_VERSION}")
  local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  mkdir -p "$work/out"
  (cd "$work" && go build -trimpath -ldflags "$ld" -o out/ "${pkgs[@]}")
  for c in "${K8S_COMPONENTS[@]}"; do
    mv "$work/out/$c" "$BIN/$c-$K8S_VERSION"
    link "$c" "$K8S_VERSION"
  done
  log "Kubernetes built"
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return 0
  log "building etcd $ETCD_VERSION"
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  local gomod
  gomod="$(go mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module portico.dev/etcd-build"
    echo
    grep -E '^go [0-9]' "$gomod"
    echo
    # etcd's own go.mod replaces its sibling modules with folders; require them at the same tag.
    for m in go.etcd.io/etcd/server/v3 go.etcd.io/etcd/api/v3 go.etcd.io/etcd/client/pkg/v3 \
      go.etcd.io/etcd/client/v3 go.etcd.io/etcd/pkg/v3; do
      echo "require $m $ETCD_VERSION"
    done
  } >"$work/go.mod"
  (cd "$work" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd "$work" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3)
  link etcd "$ETCD_VERSION"
}

build_plain() { # name version package
  have "$1" "$2" && return 0
  log "building $1 $2"
  local gobin="$CACHE/build/$1-$2"
  mkdir -p "$gobin"
  local ld="-s -w"
  if [[ $1 == helm ]]; then
    local minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    ld+=" -X helm.sh/helm/v3/internal/version.version=$2"
    ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
  fi
  GOBIN="$gobin" go install -trimpath -ldflags "$ld" "$3@$2"
  mv "$gobin/$1" "$BIN/$1-$2"
  link "$1" "$2"
}

# kwok's binary has no built-in stages: the node and pod lifecycles (node Ready, pod Running
# with an IP, deletion) come from the Stage manifests shipped in its module.
kwok_stages() {
  local out="$BIN/kwok-stages-$KWOK_VERSION.yaml"
  [[ -s $out ]] && return 0
  local dir
  dir="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  local s="$dir/kustomize/stage"
  local f first=1
  : >"$out.tmp"
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    ((first)) || echo "---" >>"$out.tmp"
    first=0
    cat "$s/$f" >>"$out.tmp"
  done
  mv "$out.tmp" "$out"
  ln -sf "kwok-stages-$KWOK_VERSION.yaml" "$BIN/kwok-stages.yaml"
}

# containerd, ctr and the runc shim: pure Go (no btrfs, no docs generator; the shim without grpc).
build_containerd() {
  local c missing=0
  for c in containerd ctr containerd-shim-runc-v2; do have "$c" "$CONTAINERD_VERSION" || missing=1; done
  ((missing)) || return 0
  log "building containerd $CONTAINERD_VERSION"
  local gobin="$CACHE/build/containerd-$CONTAINERD_VERSION" m=github.com/containerd/containerd/v2
  mkdir -p "$gobin"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w -X $m/version.Version=$CONTAINERD_VERSION" \
    -tags "urfave_cli_no_docs no_btrfs" "$m/cmd/containerd@$CONTAINERD_VERSION" "$m/cmd/ctr@$CONTAINERD_VERSION"
  GOBIN="$gobin" go install -trimpath -ldflags "-s -w" -tags "urfave_cli_no_docs no_btrfs no_grpc" \
    "$m/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  for c in containerd ctr containerd-shim-runc-v2; do
    mv "$gobin/$c" "$BIN/$c-$CONTAINERD_VERSION"
    link "$c" "$CONTAINERD_VERSION"
  done
}

# runc needs cgo (its nsexec C code) and libseccomp; upstream's libpathrs tag is left out (that
# library is not packaged here).
build_runc() {
  have runc "$RUNC_VERSION" && return 0
  log "building runc $RUNC_VERSION"
  local gobin="$CACHE/build/runc-$RUNC_VERSION"
  mkdir -p "$gobin"
  CGO_ENABLED=1 GOBIN="$gobin" go install -trimpath -ldflags "-s -w" -tags "seccomp urfave_cli_no_docs" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  mv "$gobin/runc" "$BIN/runc-$RUNC_VERSION"
  link runc "$RUNC_VERSION"
}

# CoreDNS (the cluster DNS of the real node) with only the plugins it needs: the full build
# pulls in every cloud provider's SDK. The main package is CoreDNS's documented way to choose
# plugins at compile time.
build_coredns() {
  have coredns "$COREDNS_VERSION" && return 0
  log "building CoreDNS $COREDNS_VERSION"
  local work="$CACHE/build/coredns-$COREDNS_VERSION"
  mkdir -p "$work"
  cat >"$work/main.go" <<'EOF'
// CoreDNS with the plugins a test cluster's DNS needs.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	// The order a query passes the plugins in (CoreDNS's plugin.cfg order, these only).
	dnsserver.Directives = []string{"bind", "ready", "health", "errors", "log", "cache", "kubernetes"}
}

func main() { coremain.Run() }
EOF
  local gomod
  gomod="$(go mod download -json "github.com/coredns/coredns@$COREDNS_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  {
    echo "module portico.dev/coredns-build"
    echo
    grep -E '^go [0-9]' "$gomod"
    echo
    echo "require github.com/coredns/coredns $COREDNS_VERSION"
  } >"$work/go.mod"
  (cd "$work" && go mod tidy && go build -trimpath -ldflags "-s -w" -o "$BIN/coredns-$COREDNS_VERSION" .)
  link coredns "$COREDNS_VERSION"
}

# Debian packages the node needs: CNI plugins (bridge, host-local, portmap in /usr/lib/cni),
# iptables (kube-proxy, the sidecar's init container), libseccomp (runc), busybox-static
# (a shell for test images), gcc (the pause image), nginx (a real backend image), redis-server
# (the store of shared rate limits, started by the tests).
node_packages() {
  local need=()
  [[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
  command -v iptables >/dev/null || need+=(iptables)
  [[ -e /usr/include/seccomp.h ]] || need+=(libseccomp-dev)
  [[ -x /bin/busybox ]] || need+=(busybox-static)
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  command -v nsenter >/dev/null || need+=(util-linux)
  [[ -x /usr/sbin/nginx ]] || need+=(nginx)
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v curl >/dev/null || need+=(curl)
  ((${#need[@]})) || return 0
  log "installing Debian packages: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

start=$(date +%s)
node_packages
build_etcd
build_plain kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
kwok_stages
build_plain helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_plain h2spec "$H2SPEC_VERSION" github.com/summerwind/h2spec/cmd/h2spec
build_kubernetes
build_containerd
build_runc
build_coredns
log "all components ready in $BIN ($(($(date +%s) - start)) s)"
echo "$BIN"
