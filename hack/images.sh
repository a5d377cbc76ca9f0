#!/usr/bin/env bash
# Builds Sigil's images for the local cluster as OCI archives, without a
# container daemon or registry, into ${SIGIL_CACHE:-~/.cache/sigil}/images/,
# and prints that directory on its last line. Load one with
#   ctr -n k8s.io images import DIR/sigil-operator.tar
# (named by the archive itself, no --base-name needed).
#
#   sigil.local/sigil-operator:dev            /usr/local/bin/operator
#   sigil.local/sigil-issuer:dev              /usr/local/bin/issuer (also `issuer agent`)
#   sigil.local/example-calendar-service:dev  /usr/local/bin/calendar-service
#   sigil.local/example-file-service:dev      /usr/local/bin/file-service
#   sigil.local/busybox:dev                   Debian's busybox-static, applets in /bin
#   sigil.local/pause:dev                     the pod sandbox: busybox's layer, `sleep infinity`
#
# The four Rust images are the same binaries as the Dockerfile's, on one
# shared base layer built from this (Debian 12) host like distroless/cc: the
# binaries' shared libraries (ldd), CA certificates, /etc/passwd and
# /etc/group with nonroot (65532), /tmp; no shell. They run as 65532:65532.
#
# Idempotent: cargo rebuilds only what changed, and an archive is rewritten
# only when the digest of its inputs changed (hack/oci-image.py). Layers are
# reproducible (sorted, mtime 0, owner 0:0), so equal inputs give equal digests.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${SIGIL_CACHE:-$HOME/.cache/sigil}/images"
release="${CARGO_TARGET_DIR:-target}/release"
busybox=/bin/busybox

# busybox-static is one of the node's Debian packages (installed if missing).
bash hack/install-node-packages.sh >&2
[[ -x $busybox ]] && "$busybox" --list | grep -x wget >/dev/null || {
  echo "images.sh: $busybox (Debian's busybox-static) is missing: apt-get install busybox-static" >&2
  exit 1
}
case "$out$release" in
  *[\"\\]*) echo "images.sh: quotes or backslashes in $out or $release" >&2; exit 1 ;;
esac

cargo build --release --locked -p sigil-operator -p sigil-issuer -p sigil-example-resource-server >&2

passwd='"root:x:0:0:root:/root:/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin",
        "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin"'
group='"root:x:0:", "nobody:x:65534:", "nonroot:x:65532:"'
path='"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"'
certs=/etc/ssl/certs/ca-certificates.crt
rust_env="[$path, \"SSL_CERT_FILE=$certs\"]"

python3 hack/oci-image.py "$out" <<EOF
{
  "layers": {
    "cc": {
      "libs_of": ["$release/operator", "$release/issuer",
                  "$release/calendar-service", "$release/file-service"],
      "files": {"$certs": "$certs"},
      "text": {"/etc/passwd": [$passwd], "/etc/group": [$group],
               "/etc/nsswitch.conf": ["hosts: files dns"]},
      "dirs": {"/tmp": "1777"}
    },
    "operator": {"files": {"/usr/local/bin/operator": "$release/operator"}},
    "issuer": {"files": {"/usr/local/bin/issuer": "$release/issuer"}},
    "calendar-service": {"files": {"/usr/local/bin/calendar-service": "$release/calendar-service"}},
    "file-service": {"files": {"/usr/local/bin/file-service": "$release/file-service"}},
    "busybox": {
      "files": {"/bin/busybox": "$busybox"},
      "busybox_applets": "/bin",
      "text": {"/etc/passwd": [$passwd], "/etc/group": [$group]},
      "dirs": {"/tmp": "1777"}
    }
  },
  "images": [
    {"ref": "sigil.local/sigil-operator:dev", "archive": "sigil-operator.tar",
     "layers": ["cc", "operator"],
     "config": {"Entrypoint": ["/usr/local/bin/operator"], "User": "65532:65532",
                "Env": $rust_env, "WorkingDir": "/"}},
    {"ref": "sigil.local/sigil-issuer:dev", "archive": "sigil-issuer.tar",
     "layers": ["cc", "issuer"],
     "config": {"Entrypoint": ["/usr/local/bin/issuer"], "User": "65532:65532",
                "Env": $rust_env, "WorkingDir": "/"}},
    {"ref": "sigil.local/example-calendar-service:dev", "archive": "example-calendar-service.tar",
     "layers": ["cc", "calendar-service"],
     "config": {"Entrypoint": ["/usr/local/bin/calendar-service"], "User": "65532:65532",
                "Env": $rust_env, "WorkingDir": "/"}},
    {"ref": "sigil.local/example-file-service:dev", "archive": "example-file-service.tar",
     "layers": ["cc", "file-service"],
     "config": {"Entrypoint": ["/usr/local/bin/file-service"], "User": "65532:65532",
                "Env": $rust_env, "WorkingDir": "/"}},
    {"ref": "sigil.local/busybox:dev", "archive": "busybox.tar",
     "layers": ["busybox"],
     "config": {"Cmd": ["sh"], "User": "65532:65532", "Env": [$path], "WorkingDir": "/"}},
    {"ref": "sigil.local/pause:dev", "archive": "pause.tar",
     "layers": ["busybox"],
     "config": {"Entrypoint": ["/bin/sleep", "infinity"], "User": "65535:65535",
                "Env": [$path], "WorkingDir": "/"}}
  ]
}
EOF

echo "$out"
