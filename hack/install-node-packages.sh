#!/usr/bin/env bash
# Installs the Debian packages the local node runs (nothing else on this
# machine's list of reachable registries provides them): containerd and
# runc, the CNI plugins, iptables for kube-proxy, and busybox-static for the
# test and example images. Idempotent: does nothing when all are present.
set -euo pipefail
PACKAGES=(containerd runc containernetworking-plugins iptables busybox-static)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "[node-packages] missing ${missing[*]}: run as root (the local node runs containers)" >&2
  exit 1
fi
echo "[node-packages] installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" >&2 ||
  { apt-get update >&2 && apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
# Debian's containerd package starts its own daemon on /run/containerd; the
# local node runs its own containerd with its own state, so stop that one.
if command -v systemctl >/dev/null && systemctl is-active --quiet containerd 2>/dev/null; then
  systemctl disable --now containerd >&2 || true
fi
