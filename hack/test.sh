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

# No process started by the tests may outlive them.
# Test control planes live in temp dirs named sigil-cp-<pid>-<n>.
left=$(pgrep -a -f "sigil-cp-|target/debug/(operator|issuer)( |$)" || true)
if [ -n "$left" ]; then
  echo "FAIL: processes started by the tests are still running:" >&2
  echo "$left" >&2
  exit 1
fi
