#!/usr/bin/env python3
"""A registry that does as little as a registry can, to measure the floor a
client sets. Not a registry anyone should use: it verifies and keeps nothing.

  ideal_registry.py LAYOUT_DIR HOST:PORT          pulls
  ideal_registry.py LAYOUT_DIR HOST:PORT sink     pushes

Pulls are answered straight out of an OCI image layout with sendfile(2)
(zero copies in user space, no hashing, no index, no logging): GET/HEAD /v2/,
/v2/<name>/manifests/<ref> (every tag resolves to the layout's first
manifest) and /v2/<name>/blobs/<digest>. In sink mode every blob is unknown
(HEAD 404) and uploads (POST, PATCH, PUT) are read into one reused buffer and
thrown away: no hashing, no disk. Whatever `skopeo copy` takes against it
is the client's own time (plus loopback TCP).
"""
import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

layout = sys.argv[1]
host, port = sys.argv[2].rsplit(":", 1)
with open(os.path.join(layout, "index.json")) as f:
    top = json.load(f)["manifests"][0]
blobs = os.path.join(layout, "blobs")
sink = len(sys.argv) > 3 and sys.argv[3] == "sink"
scratch = memoryview(bytearray(1 << 20))


def blob_path(digest):
    m = re.fullmatch(r"(sha256):([0-9a-f]{64})", digest)
    return os.path.join(blobs, m.group(1), m.group(2)) if m else None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body_only_head):
        parts = self.path.split("?", 1)[0].split("/")
        if self.path.split("?", 1)[0] in ("/v2", "/v2/"):
            return self.send_bytes(b"{}", "application/json", None, body_only_head)
        if len(parts) >= 5 and parts[-2] == "manifests":
            ref = parts[-1]
            digest = ref if ref.startswith("sha256:") else top["digest"]
            path = blob_path(digest)
            if path is None or not os.path.exists(path):
                return self.not_found()
            with open(path, "rb") as f:
                data = f.read()
            return self.send_bytes(data, top["mediaType"], digest, body_only_head)
        if len(parts) >= 5 and parts[-2] == "blobs":
            if sink:
                return self.not_found()
            path = blob_path(parts[-1])
            if path is None or not os.path.exists(path):
                return self.not_found()
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.send_header("Docker-Content-Digest", parts[-1])
                self.end_headers()
                if not body_only_head:
                    self.wfile.flush()
                    offset = 0
                    while offset < size:
                        offset += os.sendfile(self.connection.fileno(), f.fileno(), offset, size - offset)
            return None
        return self.not_found()

    def send_bytes(self, data, ctype, digest, head):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def not_found(self):
        body = b'{"errors":[{"code":"NOT_FOUND","message":"not found"}]}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def discard_body(self):
        left = int(self.headers.get("Content-Length") or 0)
        while left > 0:
            n = self.rfile.readinto(scratch[: min(left, len(scratch))])
            if not n:
                break
            left -= n

    def empty(self, status, headers):
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        self.discard_body()
        name = self.path.split("?", 1)[0][len("/v2/"):].rsplit("/blobs/uploads", 1)[0]
        loc = f"/v2/{name}/blobs/uploads/{os.urandom(8).hex()}"
        self.empty(202, {"Location": loc, "Range": "0-0", "Docker-Upload-UUID": loc.rsplit("/", 1)[1]})

    def do_PATCH(self):
        self.discard_body()
        self.empty(202, {"Location": self.path.split("?", 1)[0], "Range": "0-0"})

    def do_PUT(self):
        self.discard_body()
        path, _, query = self.path.partition("?")
        digest = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("digest", "sha256:" + "0" * 64)
        self.empty(201, {"Location": path, "Docker-Content-Digest": digest})

    def do_GET(self):
        self.answer(False)

    def do_HEAD(self):
        self.answer(True)


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
