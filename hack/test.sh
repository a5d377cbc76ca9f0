#!/usr/bin/env bash
# Runs every Sigil test: unit tests, the end-to-end tests against a real
# local control plane (etcd + kube-apiserver + kube-controller-manager built
# from upstream Go modules on first use and cached in ~/.cache/sigil), and
# the pod tests (tests/tests/pods.rs) on a real local node: Sigil installed
# by `helm install` from images built by hack/images.sh. Needs root.
#
# Extra arguments go to `cargo test` (e.g. `hack/test.sh -p sigil-issuer`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/install-node-packages.sh
SIGIL_CONTROL_PLANE_BIN="$(bash hack/build-control-plane.sh | tail -n 1)"
export SIGIL_CONTROL_PLANE_BIN
SIGIL_IMAGES_DIR="$(bash hack/images.sh | tail -n 1)"
export SIGIL_IMAGES_DIR
# Prometheus and promtool (Debian's package, unpacked into the cache) for
# the alert tests.
SIGIL_PROMETHEUS_BIN="$(bash hack/install-prometheus.sh | tail -n 1)"
export SIGIL_PROMETHEUS_BIN

# The e2e tests run the operator and issuer binaries as child processes; a
# running `cargo test` holds the build lock, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# No process started by the tests may outlive them. Children die by
# PR_SET_PDEATHSIG when their test process exits, which takes a moment: look
# again for up to 10 s before calling it a leak.
# Test control planes live in temp dirs named sigil-cp-<pid>-<n>; the node's
# state (containerd, its shims, kubelet) in $TMPDIR/sigil-node.
node_dir="${TMPDIR:-/tmp}/sigil-node"
leftovers() {
  pgrep -a -f "sigil-cp-|sigil-node/|target/debug/(operator|issuer)( |$)|prometheus-[^/]*/bin/prometheus" || true
  grep -F " $node_dir" /proc/self/mountinfo | awk '{print "mount " $5}' || true
  [ -e /sys/class/net/sigil0 ] && echo "bridge sigil0"
  for table in filter nat mangle; do
    iptables -w -t "$table" -S 2>/dev/null | grep -E '^-N KUBE-|sigil0' | sed "s/^/iptables -t $table /" || true
  done
  ls -d /sys/fs/cgroup/*/sigil-node 2>/dev/null | sed 's/^/cgroup /' || true
  [ -d "$node_dir" ] && echo "directory $node_dir"
  [ -d /run/containerd ] && echo "directory /run/containerd (shim sockets)"
  [ -d /var/lib/cni ] && echo "directory /var/lib/cni"
  true
}
for _ in $(seq 20); do
  left=$(leftovers)
  [ -z "$left" ] && exit 0
  sleep 0.5
done
echo "FAIL: the tests left these behind:" >&2
echo "$left" >&2
exit 1
