#!/usr/bin/env bash
# Runs every Sigil test: unit tests, and the end-to-end tests against a real
# local control plane (etcd + kube-apiserver + kube-controller-manager built
# from upstream Go modules on first use and cached in ~/.cache/sigil).
#
# Extra arguments go to `cargo test` (e.g. `hack/test.sh -p sigil-issuer`).
set -euo pipefail
cd "$(dirname "$0")/.."

SIGIL_CONTROL_PLANE_BIN="$(bash hack/build-control-plane.sh | tail -n 1)"
export SIGIL_CONTROL_PLANE_BIN

# The e2e tests run the operator and issuer binaries as child processes; a
# running `cargo test` holds the build lock, so build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"

# No process started by the tests may outlive them. Children die by
# PR_SET_PDEATHSIG when their test process exits, which takes a moment: look
# again for up to 10 s before calling it a leak.
# Test control planes live in temp dirs named sigil-cp-<pid>-<n>.
for _ in $(seq 20); do
  left=$(pgrep -a -f "sigil-cp-|target/debug/(operator|issuer)( |$)" || true)
  [ -z "$left" ] && exit 0
  sleep 0.5
done
echo "FAIL: processes started by the tests are still running:" >&2
echo "$left" >&2
exit 1
