#!/usr/bin/env bash
# Runs a command inside a private network namespace where all of 198.18.0.0/15 is local
# (see shared/TESTENV.md: Kubernetes rejects loopback pod and endpoint addresses, and test
# traffic must stay on this machine), and inside a private PID namespace so that every process
# the command leaves behind (etcd, kube-apiserver, proxies...) dies with it, even after a panic
# or a kill -9 of the test runner.
set -euo pipefail
if [[ $# -eq 0 ]]; then
  echo "usage: hack/in-netns.sh COMMAND [ARGS...]" >&2
  exit 2
fi
exec unshare --net --pid --fork --kill-child --mount-proc -- \
  bash -c 'ip link set lo up && ip route add local 198.18.0.0/15 dev lo && exec "$@"' in-netns "$@"
