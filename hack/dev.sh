#!/usr/bin/env bash
# Runs Sigil locally, the way its users run it: a single-node cluster on
# this machine (built from pinned upstream modules on first use, cached in
# ~/.cache/sigil), Sigil's images built from this checkout, `helm install`,
# and the example Task Service calling the Calendar Service with a token.
# Needs root (it runs containers) and Debian's containerd, runc,
# containernetworking-plugins, iptables and busybox-static (installed here
# when missing).
#
#   ./hack/dev.sh            run in the foreground; Ctrl-C stops everything
#   ./hack/dev.sh --detach   run in the background; prints the KUBECONFIG
#   ./hack/dev.sh --down     stop what --detach started
#   ./hack/dev.sh --soak 10m soak the issuer (local processes, no pods)
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${SIGIL_CACHE:-$HOME/.cache/sigil}
PIDFILE="$CACHE/dev.pid"
LOG="$CACHE/dev.log"

stop_detached() {
  [ -f "$PIDFILE" ] || { echo "nothing started with --detach is running"; return 0; }
  pid=$(cat "$PIDFILE")
  if kill -TERM "$pid" 2>/dev/null; then
    echo "stopping sigil-dev (pid $pid)..."
    while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
  fi
  rm -f "$PIDFILE"
  echo "stopped"
}

case "${1:-}" in
  --down) stop_detached; exit 0 ;;
esac

bash hack/install-node-packages.sh >&2
SIGIL_CONTROL_PLANE_BIN="$(bash hack/build-control-plane.sh | tail -n 1)"
export SIGIL_CONTROL_PLANE_BIN
if [[ " $* " != *" --soak "* ]]; then
  SIGIL_IMAGES_DIR="$(bash hack/images.sh | tail -n 1)"
  export SIGIL_IMAGES_DIR
fi
cargo build --workspace --bins --locked

if [ "${1:-}" = "--detach" ]; then
  shift
  mkdir -p "$CACHE"
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null &&
    { echo "already running (pid $(cat "$PIDFILE")); ./hack/dev.sh --down first" >&2; exit 1; }
  setsid target/debug/sigil-dev "$@" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  # Wait for the demo to finish (or fail), showing its progress.
  tail -n +1 -f "$LOG" --pid "$(cat "$PIDFILE")" | sed -u '/Press Ctrl-C to stop/q' || true
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    rm -f "$PIDFILE"
    echo "sigil-dev exited; see $LOG" >&2
    exit 1
  fi
  echo
  echo "Running in the background (log: $LOG). Stop it with ./hack/dev.sh --down"
  exit 0
fi
exec target/debug/sigil-dev "$@"
