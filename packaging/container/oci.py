#!/usr/bin/env python3
"""Writes an OCI image archive (an OCI image layout in one tar, which `podman load`,
`docker load` (25+) and `skopeo` read) from a root file system staged in a directory, with
no registry and no container tools: packaging/container/build.sh calls it.

    oci.py ROOTFS OUT.tar --config IMAGE_CONFIG.json --name NAME --tag TAG [--owner PATH=UID:GID]...

One gzip-compressed layer, reproducible: entries sorted, times set to SOURCE_DATE_EPOCH (or
0), owners numeric (root unless --owner says otherwise for a path and what is below it).
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import tarfile
import time


def layer(rootfs, owners, mtime):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.relpath(path, rootfs)
                info = tar.gettarinfo(path, arcname)
                info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
                for prefix, (uid, gid) in owners.items():
                    if arcname == prefix or arcname.startswith(prefix + "/"):
                        info.uid, info.gid = uid, gid
                info.mtime = mtime
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    data = raw.getvalue()
    compressed = gzip.compress(data, compresslevel=9, mtime=mtime)
    return data, compressed


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("--config", required=True, help="the image config's `config` object (JSON file)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--owner", action="append", default=[], help="PATH=UID:GID")
    args = parser.parse_args()
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    owners = {}
    for owner in args.owner:
        path, ids = owner.split("=")
        uid, gid = ids.split(":")
        owners[path.strip("/")] = (int(uid), int(gid))

    tar_bytes, layer_blob = layer(args.rootfs, owners, mtime)
    with open(args.config) as f:
        runtime_config = json.load(f)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    config_blob = json.dumps(
        {
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": runtime_config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
            "history": [{"created": created, "created_by": "packaging/container/build.sh"}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    manifest_blob = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config_blob),
                "size": len(config_blob),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(layer_blob),
                    "size": len(layer_blob),
                }
            ],
            "annotations": runtime_config.get("Labels", {}),
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest_blob),
                "size": len(manifest_blob),
                "annotations": {
                    # The tag podman and skopeo read, and the full name Docker and containerd read.
                    "org.opencontainers.image.ref.name": args.tag,
                    "io.containerd.image.name": f"{args.name}:{args.tag}",
                },
            }
        ],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True, separators=(",", ":")).encode()),
    ]
    for blob in (layer_blob, config_blob, manifest_blob):
        files.append(("blobs/sha256/" + sha256(blob)[7:], blob))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as out:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            out.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            out.addfile(info, io.BytesIO(data))
    print(f"{args.out}: {args.name}:{args.tag}, layer {len(layer_blob) / 1e6:.1f} MB compressed, "
          f"{len(tar_bytes) / 1e6:.1f} MB unpacked, manifest {sha256(manifest_blob)}")


main()
