#!/usr/bin/env python3
"""Assemble an OCI image layout (no Docker engine, no Nix) from the static mtac binary and a
compiled ruleset, byte for byte reproducible.

    python3 nix/oci-image.py --binary target/x86_64-unknown-linux-musl/release/mtac \\
        --ruleset ruleset.mtac --out mtac-oci --tag 0.1.0

The image has one layer: /usr/bin/mtac, /etc/mtac/ruleset.mtac, and the directories the node
writes (/run/mtac/spool for the spool, /var/lib/mtac for the embedded state store, /tmp), owned by
the unprivileged user 65534 the image runs as. Its entry point serves the ruleset:
`mtac run /etc/mtac/ruleset.mtac`.

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
import sys
import tarfile

NOBODY = 65534


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def layer(binary, ruleset, epoch):
    entries = []  # (path, kind, mode, uid, data)
    for d, owner in [
        ("etc", 0), ("etc/mtac", 0), ("run", 0), ("run/mtac", 0), ("run/mtac/spool", NOBODY),
        ("tmp", 0), ("usr", 0), ("usr/bin", 0), ("var", 0), ("var/lib", 0), ("var/lib/mtac", NOBODY),
    ]:
        mode = 0o1777 if d == "tmp" else (0o700 if owner == NOBODY else 0o755)
        entries.append((d, tarfile.DIRTYPE, mode, owner, None))
    with open(binary, "rb") as f:
        entries.append(("usr/bin/mtac", tarfile.REGTYPE, 0o755, 0, f.read()))
    with open(ruleset, "rb") as f:
        entries.append(("etc/mtac/ruleset.mtac", tarfile.REGTYPE, 0o644, 0, f.read()))
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
    args = p.parse_args()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1"))
    if os.path.exists(args.out):
        sys.exit(f"{args.out} exists: give a new directory")
    os.makedirs(os.path.join(args.out, "blobs", "sha256"))

    tar_bytes, gz_bytes = layer(args.binary, args.ruleset, epoch)
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
