#!/usr/bin/env bash
# Builds the upstream control-plane binaries Sigil's tests and local run use
# (kube-apiserver, kube-controller-manager, kubectl, etcd, helm) from their Go
# modules through the Go module proxy, like controller-runtime's envtest but
# without downloading release binaries. Idempotent: a second run finds the
# cached binaries and builds nothing.
#
# Prints the bin directory on its last line of stdout.
set -euo pipefail

K8S_VERSION=${SIGIL_K8S_VERSION:-v1.36.3}
ETCD_VERSION=${SIGIL_ETCD_VERSION:-v3.6.16}
HELM_VERSION=${SIGIL_HELM_VERSION:-v3.21.4}
CACHE=${SIGIL_CACHE:-$HOME/.cache/sigil}
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION/bin"
WORK="$CACHE/build"

log() { echo "[control-plane] $*" >&2; }

# Go >= 1.27 with Kubernetes <= 1.36 breaks /openapi/v2 unless json v2 is off.
export GOEXPERIMENT=${GOEXPERIMENT:-}
case "$(go env GOVERSION)" in
  go1.2[0-6]*) ;;
  *) export GOEXPERIMENT="${GOEXPERIMENT:+$GOEXPERIMENT,}nojsonv2" ;;
esac
export GOFLAGS="-buildvcs=false -trimpath"
export CGO_ENABLED=0

need=()
for b in kube-apiserver kube-controller-manager kubectl etcd helm; do
  [ -x "$BIN/$b" ] || need+=("$b")
done
if [ ${#need[@]} -eq 0 ]; then
  log "cached in $BIN"
  echo "$BIN"
  exit 0
fi
mkdir -p "$BIN" "$WORK"
log "building ${need[*]} (cold build takes ~15-25 min on 2 cores)"

# k8s.io/kubernetes points its staging modules at ./staging with replace
# directives, which `go install pkg@version` cannot honour: build from a
# throwaway module that pins every staging module to the matching v0.x.y.
build_kubernetes() {
  local dir="$WORK/kubernetes-$K8S_VERSION" staging
  staging="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  (
    cd "$dir"
    if [ ! -f .resolved ]; then
      rm -f go.mod go.sum tools.go
      go mod init sigil.local/controlplane >/dev/null 2>&1
      local mod
      mod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
      {
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo "replace ("
        sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$mod" | while read -r m; do
          # sample-* modules are not all published; nothing here imports them.
          case "$m" in k8s.io/sample-*) continue ;; esac
          echo "  $m => $m $staging"
        done
        echo ")"
      } >> go.mod
      cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
      go mod tidy -e >/dev/null 2>&1 || true
      go mod download
      go get k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
      touch .resolved
    fi
    for b in kube-apiserver kube-controller-manager kubectl; do
      [ -x "$BIN/$b" ] && continue
      log "go build $b ($K8S_VERSION)"
      go build -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${K8S_VERSION#v1.}" \
        -o "$BIN/$b.tmp" "k8s.io/kubernetes/cmd/$b"
      mv "$BIN/$b.tmp" "$BIN/$b"
    done
  )
}

# etcd's server module also has replace directives (to ../api etc.), but its
# sibling modules are published at the same version, so plain requires work;
# helm needs nothing special. Both: a throwaway module, `go get`, `go build`.
# Usage: build_module NAME MODULE@VERSION PACKAGE LDFLAGS
build_module() {
  local name=$1 module=$2 package=$3 ldflags=$4
  local dir="$WORK/$name-${module##*@}"
  mkdir -p "$dir"
  (
    cd "$dir"
    if [ ! -f .resolved ]; then
      rm -f go.mod go.sum
      go mod init "sigil.local/$name" >/dev/null 2>&1
      go get "$package@${module##*@}"
      touch .resolved
    fi
    log "go build $name (${module##*@})"
    go build -ldflags "$ldflags" -o "$BIN/$name.tmp" "$package"
    mv "$BIN/$name.tmp" "$BIN/$name"
  )
}

for b in "${need[@]}"; do
  case "$b" in
    kube-apiserver|kube-controller-manager|kubectl) build_kubernetes; break ;;
  esac
done
[ -x "$BIN/etcd" ] || build_module etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION" \
  go.etcd.io/etcd/server/v3 "-s -w"
[ -x "$BIN/helm" ] || build_module helm "helm.sh/helm/v3@$HELM_VERSION" \
  helm.sh/helm/v3/cmd/helm "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"

log "built into $BIN"
echo "$BIN"
