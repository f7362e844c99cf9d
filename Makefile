# Portico's entry points. `make test` is what CI runs (through .ci/run).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all build test unit e2e test-images lint fmt crds crds-check k8s-bins cluster-up cluster-down demo demo-down conformance bench profile instructions floor bench-control-plane images

all: build

## build: compile every crate (debug)
build:
	$(CARGO) build --workspace --all-targets

## test: lint, CRD drift check, unit tests, then end-to-end tests on a real control plane
test: lint crds-check unit e2e

## unit: unit and in-process integration tests (no Kubernetes needed)
unit:
	$(CARGO) test --workspace --exclude portico-tests

## e2e: end-to-end tests against etcd + kube-apiserver + controller-manager + scheduler, with
## kwok (Portico's processes run locally) and with a real kubelet node (Portico installed by its
## chart runs in containers: tests/tests/realnode.rs), images built by hack/images.sh
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
e2e: k8s-bins test-images
	$(CARGO) test -p portico-tests --no-run
	PORTICO_IMAGES_DIR=$(abspath $(TARGET_DIR))/images-debug \
	  hack/in-netns.sh $(CARGO) test --offline -p portico-tests -- --test-threads=2

## test-images: the images of the real node (debug builds, like the rest of the tests)
test-images:
	$(CARGO) build -p portico-proxy -p portico-operator
	$(CARGO) build -p portico-tests --bin portico-echo
	hack/images.sh $(TARGET_DIR)/images-debug debug

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## crds: regenerate crds/*.yaml and the chart's copy from operator/api
crds:
	$(CARGO) run -q -p portico-api --bin portico-crdgen -- crds charts/portico/crds

## crds-check: fail when the committed CRD YAML is stale
crds-check:
	$(CARGO) run -q -p portico-api --bin portico-crdgen -- --check crds charts/portico/crds

## k8s-bins: build and cache etcd, kube-apiserver & co, kwok and helm from Go modules
k8s-bins:
	hack/k8s-bins.sh >/dev/null

## cluster-up: a development control plane in the network namespace portico-dev
cluster-up:
	hack/cluster.sh up

## cluster-down: stop it and remove the namespace
cluster-down:
	hack/cluster.sh down

## demo: the local control plane with Portico's CRDs and the examples applied
demo:
	hack/demo.sh up

demo-down:
	hack/demo.sh down

## conformance: the upstream Gateway API conformance suite (GATEWAY-HTTP, v1.6.3) against Portico
## installed by its chart on the local cluster with a real node; report in docs/conformance/.
## Not part of `make test`: minutes long (docs/conformance/README.md has the figures).
## CONFORMANCE_RUN=HTTPRouteSimpleSameNamespace runs one test, CONFORMANCE_ARGS passes flags to
## the suite, KEEP=1 leaves the cluster up.
conformance: k8s-bins
	hack/conformance.sh

## bench: data-plane benchmark (portico-proxy vs direct, nginx, haproxy), then HTTP/2, TLS
## termination and two workers against the same (bench/protocols.sh), then sidecar to
## sidecar with mTLS vs plaintext (bench/mesh.sh, in a private network namespace), then the
## serving stall while a 10,000-route config is reloaded (bench/reload-stall.py), and what a rule's
## policies cost (bench/policies.sh: plain rule vs header edits + mirror + retry policy)
bench:
	bench/run.sh
	bench/protocols.sh
	bench/policies.sh
	bench/mesh.sh
	python3 bench/reload-stall.py $(or $(CARGO_TARGET_DIR),target/proxy)/release/portico-proxy 10000

## profile: where portico-proxy's and nginx's CPU goes at fixed rates (perf stat, strace -c,
## perf record; DURATION=10), at 2,000 req/s to docs/profile.md and at 10,000 to
## docs/profile-10k.md
profile:
	bench/profile.sh
	RATE=10000 OUT=$(CURDIR)/docs/profile-10k.md bench/profile.sh

## instructions: user-space instructions per request of portico-proxy and nginx (callgrind), a
## figure the host's speed does not move; `bench/instructions.sh BIN_A BIN_B` is an A/B of builds
instructions:
	bench/instructions.sh

## floor: CPU per request of a forwarder that only moves bytes (bench/floor: epoll, io_uring, tokio)
## next to portico-proxy and nginx at 2,000 and 10,000 req/s: how low any proxy gets on this host
floor:
	bench/floor.sh

## bench-control-plane: index and fan-out figures at scale (1,000 Services, 10,000 endpoints,
## 50 proxies), a proxy applying a one-endpoint backend update vs a whole config, EndpointSlice →
## proxy propagation p50/p99 over 200 changes on a real control plane, and the release operator
## binary at scale against the real apiserver: 1,000 sidecar streams each subscribed on demand
## to 10 Services, 100 changes one at a time, then 100 changes/s for 60 s (RSS, CPU and bytes
## per change, first/each/every interested stream p50/p99; scale with PORTICO_BENCH_SERVICES,
## _ENDPOINTS, _CLIENTS, _SUBSCRIBE, _CHANGES, _CHURN_RATE, _CHURN_SECONDS, _UPDATES)
# Optimized, but without the data plane's fat LTO: the propagation test links the whole
# Kubernetes client into one test binary, and LTO there would add minutes and change nothing
# measured here (one setting for every step, so everything is built once).
BENCH_RELEASE := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
bench-control-plane: k8s-bins
	$(BENCH_RELEASE) $(CARGO) test --release -p portico-operator scale -- --nocapture --test-threads=1
	$(BENCH_RELEASE) $(CARGO) test --release -p portico-proxy --test config a_one_endpoint_update -- --nocapture
	$(BENCH_RELEASE) $(CARGO) test --release -p portico-tests --test operator --no-run
	$(BENCH_RELEASE) hack/in-netns.sh $(CARGO) test --release --offline -p portico-tests --test operator -- --nocapture endpointslice_changes_reach_proxy_routing
	$(BENCH_RELEASE) $(CARGO) build --release -p portico-operator -p portico-tests --bin portico-operator --bin portico-bench-control-plane
	hack/in-netns.sh "$${CARGO_TARGET_DIR:-target}/release/portico-bench-control-plane"

## images: OCI image tarballs (operator, proxy with iptables, and the test images pause, echo,
## nginx) written by hack/images.sh, no container engine; import with hack/images-import.sh
images:
	$(CARGO) build --release -p portico-operator -p portico-proxy
	$(CARGO) build --release -p portico-tests --bin portico-echo
	hack/images.sh "$${CARGO_TARGET_DIR:-target}/images" release
	@echo "images: $${CARGO_TARGET_DIR:-target}/images/*.tar (listed in images.txt; import: hack/images-import.sh SOCKET $${CARGO_TARGET_DIR:-target}/images)"
