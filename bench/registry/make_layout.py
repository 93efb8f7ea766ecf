#!/usr/bin/env python3
"""Writes an OCI image layout with N random layers of SIZE MiB each.

Layers are gzip streams at level 0 (stored blocks): valid gzip, so skopeo
passes them through untouched instead of compressing them, and incompressible
random data, so neither registry can cheat. Usage: make_layout.py DIR [N] [SIZE_MIB]
"""
import gzip
import hashlib
import json
import os
import sys

out = sys.argv[1]
count = int(sys.argv[2]) if len(sys.argv) > 2 else 3
size = (int(sys.argv[3]) if len(sys.argv) > 3 else 64) << 20
blobs = os.path.join(out, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)


def put(data: bytes):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


layers, diff_ids = [], []
for _ in range(count):
    raw = os.urandom(size)
    diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
    layers.append(put(gzip.compress(raw, compresslevel=0, mtime=0)))
config = put(json.dumps({
    "architecture": "amd64", "os": "linux", "config": {},
    "rootfs": {"type": "layers", "diff_ids": diff_ids},
}).encode())
manifest = put(json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config[0], "size": config[1]},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n} for d, n in layers],
}).encode())
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest[0], "size": manifest[1],
        "annotations": {"org.opencontainers.image.ref.name": "img"}}]}, f)
with open(os.path.join(out, "oci-layout"), "w") as f:
    f.write('{"imageLayoutVersion":"1.0.0"}')
print(layers[0][0])
