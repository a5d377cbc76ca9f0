#!/usr/bin/env bash
# Prometheus and promtool for the alert tests (tests/tests/alerts.rs), from
# Debian's `prometheus` package, fetched with `apt-get download` and unpacked
# into the cache with `dpkg-deb -x` rather than installed: installing it
# would start a system Prometheus on :9090 (its postinst enables and starts
# the service), create a user and pull in a dozen web-UI packages, while the
# tests only need the two static binaries, run on loopback with their own
# temporary configuration. Unpacking needs no root, leaves dpkg's state and
# the machine's services alone, and keeps a copy per package version.
#
# Idempotent: instant when the candidate version is cached (or when apt
# knows no candidate and some version is cached). Prints the bin directory
# on its last line of stdout.
set -euo pipefail
CACHE=${SIGIL_CACHE:-$HOME/.cache/sigil}
log() { echo "[prometheus] $*" >&2; }
candidate() { apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}'; }
usable() { [ -x "$1/prometheus" ] && [ -x "$1/promtool" ]; }

version=$(candidate)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  cached=$(ls -d "$CACHE"/prometheus-*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$cached" ] && usable "$cached"; then
    echo "$cached"
    exit 0
  fi
  log "apt knows no prometheus package; running apt-get update"
  apt-get update >&2
  version=$(candidate)
  [ -n "$version" ] && [ "$version" != "(none)" ] || {
    echo "[prometheus] FAIL: no prometheus package in this machine's apt sources" >&2
    exit 1
  }
fi

dir="$CACHE/prometheus-${version//:/_}"
if usable "$dir/bin"; then
  echo "$dir/bin"
  exit 0
fi
log "downloading and unpacking Debian's prometheus $version into $dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt downloads as its sandbox user _apt when that user may write here.
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$work"; fi
(cd "$work" && apt-get download -q "prometheus=$version" >&2)
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$work/out/bin"
cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$work/out/bin/"
"$work/out/bin/promtool" --version >&2
mkdir -p "$CACHE"
rm -rf "$dir"
mv "$work/out" "$dir"
echo "$dir/bin"
