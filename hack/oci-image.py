#!/usr/bin/env python3
"""Builds OCI image archives without a container daemon (hack/images.sh).

Usage: oci-image.py OUT_DIR < spec.json

The spec names layers and images:

  {"layers": {"NAME": {
      "libs_of": [ELF, ...],          # ldd's libraries of these, at their real
                                      # paths, plus the program interpreter's path
      "files": {"/abs/in/image": "host/source", ...},   # copied, mode 0755 if
                                      # executable on the host, else 0644
      "text": {"/abs/in/image": ["line", ...], ...},    # 0644, lines + "\\n"
      "dirs": {"/abs/in/image": "1777", ...},
      "busybox_applets": "/bin"}},    # a symlink to busybox per applet of the
                                      # busybox in "files", in that directory
   "images": [{"ref": "host/name:tag", "archive": "name.tar",
               "layers": ["NAME", ...], "config": {OCI config "config" object}}]}

Each image is an OCI image-layout tar (oci-layout, index.json, blobs/sha256/)
whose index entry carries both io.containerd.image.name (the full reference:
`ctr images import` names the image by it, with no --base-name) and
org.opencontainers.image.ref.name (the tag). Layers are gzip tars with sorted
entries, mtime 0, owner 0:0 and parent directories 0755, so the same inputs
give the same digests; a layer listed by several images is the same blob.

An archive is rewritten only when the digest of its inputs (this script, the
spec, every source file's content) differs from the one recorded beside it
(ARCHIVE.inputs). Prints one line per image on stderr.
"""

import gzip
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def host_mode(path):
    return 0o755 if os.stat(path).st_mode & 0o111 else 0o644


def ldd_libs(elf):
    """(path, is the interpreter) for each library `ldd` resolves for elf."""
    out = subprocess.run(["ldd", elf], check=True, capture_output=True, text=True).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:  # libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)
            path = parts[parts.index("=>") + 1]
            if path == "not":
                sys.exit(f"oci-image: {elf}: {line.strip()}")
            libs.append((path, False))
        elif parts and parts[0].startswith("/"):  # the interpreter
            libs.append((parts[0], True))
        # else linux-vdso.so.1: the kernel's
    return libs


def resolve_layer(name, spec):
    """The layer's entries: {path: (kind, mode, payload)}, payload a host file
    (kind "file"), bytes ("data"), a link target ("symlink") or None ("dir")."""
    entries = {}

    def add(path, kind, mode, payload):
        path = path.strip("/")
        old = entries.get(path)
        if old is not None and old != (kind, mode, payload):
            sys.exit(f"oci-image: layer {name}: {path} given twice, differently")
        entries[path] = (kind, mode, payload)

    for elf in spec.get("libs_of", []):
        for lib, interpreter in ldd_libs(elf):
            real = os.path.realpath(lib)
            add(real, "file", host_mode(real), real)
            if interpreter:
                # Found by the path in the binary (PT_INTERP): /lib64/ld-linux-x86-64.so.2.
                if real != lib:
                    add(lib, "symlink", 0o777, real)
            else:
                # Found by the name ldd was given (the soname), in the real
                # directory: libfoo.so.1 -> libfoo.so.1.2.3 as on the host.
                soname = os.path.join(os.path.dirname(real), os.path.basename(lib))
                if soname != real:
                    add(soname, "symlink", 0o777, os.path.basename(real))
    for path, src in spec.get("files", {}).items():
        add(path, "file", host_mode(src), src)
    for path, lines in spec.get("text", {}).items():
        add(path, "data", 0o644, "".join(line + "\n" for line in lines).encode())
    for path, mode in spec.get("dirs", {}).items():
        add(path, "dir", int(mode, 8), None)
    if "busybox_applets" in spec:
        busybox = [src for src in spec["files"].values() if os.path.basename(src) == "busybox"][0]
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
        for applet in applets.split():
            if applet != "busybox":
                add(os.path.join(spec["busybox_applets"], applet), "symlink", 0o777, "busybox")
    # Parent directories, 0755 unless listed.
    for path in list(entries):
        parent = os.path.dirname(path)
        while parent and parent not in entries:
            entries[parent] = ("dir", 0o755, None)
            parent = os.path.dirname(parent)
    return entries


def entries_digest(entries):
    """What the layer's bytes depend on: modes, link targets, file contents."""
    h = hashlib.sha256()
    for path in sorted(entries):
        kind, mode, payload = entries[path]
        if kind == "file":
            payload = sha256_file(payload)
        elif kind == "data":
            payload = hashlib.sha256(payload).hexdigest()
        h.update(json.dumps([path, kind, mode, payload]).encode() + b"\n")
    return h.hexdigest()


def build_layer(entries):
    """(gzip blob, diff_id) of a reproducible tar of the entries."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            kind, mode, payload = entries[path]
            info = tarfile.TarInfo(path)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "", ""
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, payload
                tar.addfile(info)
            elif kind == "data":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                with open(payload, "rb") as f:
                    info.size = os.fstat(f.fileno()).st_size
                    tar.addfile(info, f)
    raw = raw.getvalue()
    blob = io.BytesIO()
    # No file name and mtime 0 in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return blob.getvalue(), "sha256:" + hashlib.sha256(raw).hexdigest()


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type, data, **extra):
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data), **extra}


def write_archive(path, image, layers):
    """The OCI image layout of one image, as a tar written to path."""
    ref = image["ref"]
    blobs = {}
    config = {
        "architecture": ARCH,
        "os": "linux",
        "config": image["config"],
        "rootfs": {"type": "layers", "diff_ids": [layers[name][1] for name in image["layers"]]},
        "history": [{"created_by": f"hack/images.sh: layer {name}"} for name in image["layers"]],
    }
    config_bytes = canonical(config)
    layer_descs = []
    for name in image["layers"]:
        blob = layers[name][0]
        desc = descriptor(OCI_LAYER, blob)
        blobs[desc["digest"]] = blob
        layer_descs.append(desc)
    config_desc = descriptor(OCI_CONFIG, config_bytes)
    blobs[config_desc["digest"]] = config_bytes
    manifest = canonical({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                          "config": config_desc, "layers": layer_descs})
    manifest_desc = descriptor(OCI_MANIFEST, manifest, platform={"architecture": ARCH, "os": "linux"},
                               annotations={"io.containerd.image.name": ref,
                                            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[1]})
    blobs[manifest_desc["digest"]] = manifest
    files = {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                                 "manifests": [manifest_desc]}),
    }
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.split(":", 1)[1]] = data
    tmp = path + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ["blobs", "blobs/sha256"] + sorted(files):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name in files:
                info.mode, info.size = 0o644, len(files[name])
                tar.addfile(info, io.BytesIO(files[name]))
            else:
                info.mode, info.type = 0o755, tarfile.DIRTYPE
                tar.addfile(info)
    os.replace(tmp, path)
    return manifest_desc["digest"]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    spec = json.load(sys.stdin)
    os.makedirs(out, exist_ok=True)
    with open(__file__, "rb") as f:
        script_digest = hashlib.sha256(f.read()).hexdigest()

    resolved = {name: resolve_layer(name, layer) for name, layer in spec["layers"].items()}
    layer_keys = {name: entries_digest(entries) for name, entries in resolved.items()}
    built = {}  # layer name -> (blob, diff_id), each built at most once
    for image in spec["images"]:
        archive = os.path.join(out, image["archive"])
        inputs = hashlib.sha256(canonical({
            "script": script_digest, "ref": image["ref"], "config": image["config"],
            "layers": [layer_keys[name] for name in image["layers"]],
        })).hexdigest()
        stamp = archive + ".inputs"
        try:
            with open(stamp) as f:
                up_to_date = f.read().strip() == inputs and os.path.exists(archive)
        except FileNotFoundError:
            up_to_date = False
        if up_to_date:
            print(f"{image['ref']}: up to date ({archive})", file=sys.stderr)
            continue
        for name in image["layers"]:
            if name not in built:
                built[name] = build_layer(resolved[name])
        digest = write_archive(archive, image, built)
        with open(stamp, "w") as f:
            f.write(inputs + "\n")
        print(f"{image['ref']}: {digest} ({archive}, {os.path.getsize(archive)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
