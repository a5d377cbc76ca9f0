#!/usr/bin/env bash
# Runs Sigil locally: builds the control plane on first use (cached in
# ~/.cache/sigil), builds Sigil, and starts everything in the foreground.
# Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
SIGIL_CONTROL_PLANE_BIN="$(bash hack/build-control-plane.sh | tail -n 1)"
export SIGIL_CONTROL_PLANE_BIN
cargo build --workspace --bins --locked
exec target/debug/sigil-dev "$@"
