#!/usr/bin/env bash
# Fails unless every Go module the project builds (the tool modules under
# hack/tools/ and the interop verifier under tests/interop/go) is fully pinned:
# its go.mod needs no change and its go.sum lists every module its packages
# import. `go list -mod=readonly` refuses to resolve anything, so a missing or
# floating pin is an error here instead of a silent upgrade at build time.
# Costs seconds once the modules are downloaded (the build needs them anyway).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export GOFLAGS="-mod=readonly" GOTOOLCHAIN=local
status=0
while read -r gomod; do
  dir=$(dirname "$ROOT/$gomod")
  # A tool module's packages are its `tool` lines; any other module's are ./...
  pkgs=$(sed -n '/^tool (/,/^)/{/^\t/p};s/^tool \([^(].*\)/\1/p' "$dir/go.mod" | tr -d '\t')
  [ -n "$pkgs" ] || pkgs=./...
  # shellcheck disable=SC2086
  if (cd "$dir" && go list -deps $pkgs >/dev/null); then
    echo "[go-pins] $gomod: pinned" >&2
  else
    echo "[go-pins] FAIL: $gomod is not fully pinned (run \`go mod tidy\` there and commit go.mod and go.sum)" >&2
    status=1
  fi
done < <(cd "$ROOT" && git ls-files --cached --others --exclude-standard -- '*go.mod')
exit $status
