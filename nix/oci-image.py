#!/usr/bin/env python3
"""Assemble an OCI image layout (no Docker engine, no Nix) from the static mtac binary and a
compiled ruleset, byte for byte reproducible.

    python3 nix/oci-image.py --binary target/x86_64-unknown-linux-musl/release/mtac \\
        --ruleset ruleset.mtac --out mtac-oci --tag 0.1.0

The image has one layer: /usr/bin/mtac, /etc/mtac/ruleset.mtac, a CA bundle at
/etc/ssl/certs/ca-certificates.crt (for back ends and directories reached over TLS), the man pages
and shell completions the binary writes of itself, and the directories the node writes
(/run/mtac/spool for the spool, /var/lib/mtac for the embedded state store, /tmp), owned by the
unprivileged user 65534 the image runs as. Its entry point serves the ruleset:
`mtac run /etc/mtac/ruleset.mtac`.

The binary must be static (no ELF interpreter, no needed libraries): the image has no libc, and
a dynamically linked binary would only fail when the container starts. It is refused here.

Reproducible: entries sorted, every timestamp SOURCE_DATE_EPOCH (default 1), owners numeric
with no names, gzip without a name or time, JSON with sorted keys. The same binary and ruleset
give the same layer tar (diff_id) anywhere, and the same digests wherever Python's zlib is the
same (a zlib-ng build may deflate differently); `.ci/run` builds twice and compares.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile

NOBODY = 65534


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


PT_DYNAMIC, PT_INTERP, DT_NEEDED = 2, 3, 1


def why_not_static(data):
    """None for a static x86-64 ELF executable; otherwise what makes it unfit for the image."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return "not a 64-bit little-endian ELF file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        at = phoff + i * phentsize
        p_type, = struct.unpack_from("<I", data, at)
        if p_type == PT_INTERP:
            offset, = struct.unpack_from("<Q", data, at + 8)
            interp = data[offset:data.index(b"\0", offset)].decode(errors="replace")
            return f"dynamically linked (interpreter {interp})"
        if p_type == PT_DYNAMIC:
            offset, = struct.unpack_from("<Q", data, at + 8)
            size, = struct.unpack_from("<Q", data, at + 32)
            for entry in range(offset, offset + size - 15, 16):
                tag, = struct.unpack_from("<q", data, entry)
                if tag == DT_NEEDED:
                    return "dynamically linked (it needs shared libraries)"
                if tag == 0:
                    break
    return None


def self_docs(binary):
    """The man pages and shell completions the binary writes of itself: (path, bytes) pairs."""
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([binary, "man-pages", tmp], check=True)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                files.append((f"usr/share/man/man1/{name}", f.read()))
    for shell, path in [
        ("bash", "usr/share/bash-completion/completions/mtac"),
        ("zsh", "usr/share/zsh/site-functions/_mtac"),
        ("fish", "usr/share/fish/vendor_completions.d/mtac.fish"),
    ]:
        files.append((path, subprocess.run([binary, "completions", shell], check=True, capture_output=True).stdout))
    return files


def layer(binary, ruleset, ca_bundle, epoch):
    entries = []  # (path, kind, mode, uid, data)
    with open(binary, "rb") as f:
        program = f.read()
    docs = self_docs(binary)
    dirs = [
        ("etc", 0), ("etc/mtac", 0), ("etc/ssl", 0), ("etc/ssl/certs", 0), ("run", 0), ("run/mtac", 0),
        ("run/mtac/spool", NOBODY), ("tmp", 0), ("usr", 0), ("usr/bin", 0), ("var", 0), ("var/lib", 0),
        ("var/lib/mtac", NOBODY),
    ]
    for path, _ in docs:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if (d, 0) not in dirs:
                dirs.append((d, 0))
    for d, owner in dirs:
        mode = 0o1777 if d == "tmp" else (0o700 if owner == NOBODY else 0o755)
        entries.append((d, tarfile.DIRTYPE, mode, owner, None))
    entries.append(("usr/bin/mtac", tarfile.REGTYPE, 0o755, 0, program))
    with open(ruleset, "rb") as f:
        entries.append(("etc/mtac/ruleset.mtac", tarfile.REGTYPE, 0o644, 0, f.read()))
    with open(ca_bundle, "rb") as f:
        entries.append(("etc/ssl/certs/ca-certificates.crt", tarfile.REGTYPE, 0o644, 0, f.read()))
    for path, data in docs:
        entries.append((path, tarfile.REGTYPE, 0o644, 0, data))
    entries.sort(key=lambda e: e[0])
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path, kind, mode, owner, data in entries:
            info = tarfile.TarInfo(path)
            info.type = kind
            info.mode = mode
            info.uid = info.gid = owner
            info.uname = info.gname = ""
            info.mtime = epoch
            if data is None:
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=9) as gz:
        gz.write(tar_bytes)
    return tar_bytes, packed.getvalue()


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--ruleset", required=True)
    p.add_argument("--out", required=True, help="the OCI layout directory to create (must not exist)")
    p.add_argument("--tag", default="latest")
    p.add_argument("--ca-bundle", default="/etc/ssl/certs/ca-certificates.crt",
                   help="the PEM bundle of CA certificates to ship (default: this machine's)")
    args = p.parse_args()
    with open(args.binary, "rb") as f:
        unfit = why_not_static(f.read())
    if unfit:
        sys.exit(f"{args.binary}: {unfit}: the image has no libc; build with --target x86_64-unknown-linux-musl")
    if not os.path.isfile(args.ca_bundle):
        sys.exit(f"{args.ca_bundle}: no CA bundle (give --ca-bundle; Debian's is in ca-certificates)")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1"))
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists: give a new directory")
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))

    tar_bytes, gz_bytes = layer(args.binary, args.ruleset, args.ca_bundle, epoch)
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    layer_digest = blob(args.out, gz_bytes)
    created = __import__("datetime").datetime.fromtimestamp(epoch, __import__("datetime").timezone.utc)
    created = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{NOBODY}:{NOBODY}",
            "Entrypoint": ["/usr/bin/mtac"],
            "Cmd": ["run", "/etc/mtac/ruleset.mtac", "--log-format", "json"],
            "ExposedPorts": {"25/tcp": {}, "465/tcp": {}, "587/tcp": {}},
            "WorkingDir": "/",
            "StopSignal": "SIGTERM",
            "Labels": {"org.opencontainers.image.title": "mtac", "org.opencontainers.image.version": args.tag},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "nix/oci-image.py"}],
    }
    config_bytes = canonical(config)
    config_digest = blob(args.out, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": len(gz_bytes),
            }
        ],
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = blob(args.out, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": args.tag},
            }
        ],
    }
    with open(os.path.join(args.out, "index.json"), "wb") as f:
        f.write(canonical(index))
    with open(os.path.join(args.out, "oci-layout"), "wb") as f:
        f.write(canonical({"imageLayoutVersion": "1.0.0"}))
    print(manifest_digest)


if __name__ == "__main__":
    main()
