#!/usr/bin/env python3
"""Pushes one small image to REGISTRY/REPO and tags it COUNT times over one
keep-alive connection (one PUT per tag, as any client must do with
distribution). Usage: tag_many.py HOST:PORT REPO COUNT"""
import hashlib
import http.client
import json
import sys

host, repo, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = http.client.HTTPConnection(host, timeout=60)


def request(method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    return resp, data


def push_blob(data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    resp, _ = request("POST", f"/v2/{repo}/blobs/uploads/", b"", {"Content-Length": "0"})
    assert resp.status == 202, resp.status
    location = resp.getheader("Location")
    if location.startswith("http"):
        location = "/" + location.split("/", 3)[3]
    sep = "&" if "?" in location else "?"
    resp, body = request("PUT", f"{location}{sep}digest={digest}", data,
                         {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))})
    assert resp.status == 201, (resp.status, body)
    return digest


config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}'
layer = b"tag-bench-layer"
manifest = json.dumps({
    "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": push_blob(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": push_blob(layer), "size": len(layer)}],
}).encode()
for i in range(count):
    resp, body = request("PUT", f"/v2/{repo}/manifests/t{i:05d}", manifest,
                         {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Length": str(len(manifest))})
    assert resp.status == 201, (resp.status, body)
