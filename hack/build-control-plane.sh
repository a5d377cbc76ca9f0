#!/usr/bin/env bash
# Builds the upstream binaries Sigil's tests and local run use
# (kube-apiserver, kube-controller-manager, kubectl, etcd, helm, and for the
# local node kube-scheduler, kubelet, kube-proxy and CoreDNS) from the Go
# tool modules committed under hack/tools/, like controller-runtime's envtest
# but without downloading release binaries.
#
# Nothing here chooses a version: each tool module's go.mod and go.sum pin
# every module exactly, and builds run with -mod=readonly, so a newer release
# on the module proxy cannot change what is built. To change a version, edit
# the tool module (see the comment at the top of its go.mod) and the matching
# *_VERSION below; hack/check-go-pins.sh fails when the two disagree.
#
# Idempotent: binaries in the cache are kept when they report the pinned
# version, and rebuilt when they do not. Prints the bin directory on its last
# line of stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="$ROOT/hack/tools"

K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.16
HELM_VERSION=v3.21.4
COREDNS_VERSION=v1.14.7
CACHE=${SIGIL_CACHE:-$HOME/.cache/sigil}
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"

log() { echo "[control-plane] $*" >&2; }

# Go >= 1.27 with Kubernetes <= 1.36 breaks /openapi/v2 unless json v2 is off.
export GOEXPERIMENT=${GOEXPERIMENT:-}
case "$(go env GOVERSION)" in
  go1.2[0-6]*) ;;
  *) export GOEXPERIMENT="${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2" ;;
esac
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0
# Never let the go command fetch a different toolchain either.
export GOTOOLCHAIN=local

bash "$ROOT/hack/check-go-pins.sh" >&2

# The versions above and the tool modules must agree, staging modules included.
mod_version() { (cd "$TOOLS/$1" && go list -m -f '{{.Version}}' "$2"); }
staging="v0.${K8S_VERSION#v1.}"
off_staging=$(grep -E '^\s+k8s.io/[a-z0-9-]+ => ' "$TOOLS/kubernetes/go.mod" | grep -v " $staging\$" || true)
if [ "$(mod_version kubernetes k8s.io/kubernetes)" != "$K8S_VERSION" ] || [ -n "$off_staging" ] ||
  [ "$(mod_version etcd go.etcd.io/etcd/server/v3)" != "$ETCD_VERSION" ] ||
  [ "$(mod_version helm helm.sh/helm/v3)" != "$HELM_VERSION" ] ||
  [ "$(mod_version coredns github.com/coredns/coredns)" != "$COREDNS_VERSION" ]; then
  log "FAIL: hack/tools/*/go.mod do not pin Kubernetes $K8S_VERSION (staging $staging), etcd $ETCD_VERSION, helm $HELM_VERSION, CoreDNS $COREDNS_VERSION"
  [ -z "$off_staging" ] || log "staging replaces not at $staging: $off_staging"
  exit 1
fi

# The version a cached binary reports, as the string we pin (vX.Y.Z).
reported_version() {
  local b=$1 out
  case "$b" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kube-proxy|kubelet)
      out=$("$BIN/$b" --version 2>/dev/null) ;;                 # Kubernetes v1.36.3
    kubectl) out=$("$BIN/$b" version --client 2>/dev/null) ;;   # Client Version: v1.36.3
    etcd) out=$("$BIN/$b" --version 2>/dev/null) ;;             # etcd Version: 3.6.16
    coredns) out=$("$BIN/$b" -version 2>/dev/null) ;;           # CoreDNS-1.14.7
    helm) out=$("$BIN/$b" version --template '{{.Version}}' 2>/dev/null) ;;
  esac
  grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+' <<<"$out" | head -n 1 | sed 's/^\([0-9]\)/v\1/'
}

pinned_version() {
  case "$1" in
    etcd) echo "$ETCD_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    coredns) echo "$COREDNS_VERSION" ;;
    *) echo "$K8S_VERSION" ;;
  esac
}

# Usage: build TOOL_MODULE_DIR BINARY PACKAGE LDFLAGS
build() {
  local dir=$1 b=$2 package=$3 ldflags=$4
  log "go build $b $(pinned_version "$b") (from hack/tools/$dir)"
  (cd "$TOOLS/$dir" && go build -ldflags "$ldflags" -o "$BIN/$b.tmp" "$package")
  mv "$BIN/$b.tmp" "$BIN/$b"
}

k8s_ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")"
mkdir -p "$BIN"
log "pinned: Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, helm $HELM_VERSION, CoreDNS $COREDNS_VERSION"
built=0
# What a binary is built from: its tool module's files (CoreDNS's main.go
# picks plugins, so the version alone does not say what was built).
module_of() { case "$1" in etcd|helm|coredns) echo "$1" ;; *) echo kubernetes ;; esac; }
inputs_of() { cat "$TOOLS/$(module_of "$1")"/* | sha256sum | cut -d' ' -f1; }
for b in kube-apiserver kube-controller-manager kubectl etcd helm kube-scheduler kubelet kube-proxy coredns; do
  want=$(pinned_version "$b")
  if [ -x "$BIN/$b" ]; then
    have=$(reported_version "$b" || true)
    if [ "$have" = "$want" ] && [ "$(cat "$BIN/.$b.inputs" 2>/dev/null)" = "$(inputs_of "$b")" ]; then
      continue
    fi
    log "$b in the cache reports '${have:-nothing}' (pinned $want) or was built from other inputs: rebuilding"
  fi
  [ $built -eq 0 ] && log "cold build of the missing binaries takes ~20-30 min on 2 cores"
  built=1
  case "$b" in
    etcd) build etcd etcd go.etcd.io/etcd/server/v3 "-s -w" ;;
    coredns) build coredns coredns . "-s -w" ;;
    helm) build helm helm helm.sh/helm/v3/cmd/helm \
      "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    *) build kubernetes "$b" "k8s.io/kubernetes/cmd/$b" "$k8s_ldflags" ;;
  esac
  have=$(reported_version "$b" || true)
  if [ "$have" != "$want" ]; then
    log "FAIL: freshly built $b reports '${have:-nothing}', not $want"
    exit 1
  fi
  inputs_of "$b" >"$BIN/.$b.inputs"
done
[ $built -eq 0 ] && log "cached in $BIN" || log "built into $BIN"
echo "$BIN"
