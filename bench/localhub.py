"""Local HTTP servers speaking the Ollama registry and HuggingFace protocols (tests and the pull benchmark).

One ThreadingHTTPServer on 127.0.0.1:0 serves both:
  Ollama:  GET /v2/{ns}/{name}/manifests/{tag}      docker manifest v2 JSON
           GET /v2/{ns}/{name}/blobs/sha256:HEX      307 -> /cdn/sha256:HEX (Range supported)
  HF:      GET /api/models/{org}/{repo}/tree/{rev}   list as the Hub returns it (type/oid/size/path/lfs)
           GET /{org}/{repo}/resolve/{rev}/{path}    302 -> /cdn-hf/... for LFS files (Range supported)
  Plain:   GET/HEAD /files/{name}                    a direct .gguf URL
Knobs: `drop_after` closes each body after N bytes (a flaky link), `stall_after`
blocks it, `rate` paces it (a link of that speed), `ignore_range` answers
Range requests with the whole body, `body_bytes` counts payload
bytes actually sent, `requests` logs (method, path, Range).
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Blob:
    data: bytes | None = None
    path: Path | None = None
    offset: int = 0                 # slice of `path`
    length: int | None = None
    _sha: str | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        return self.length if self.length is not None else self.path.stat().st_size - self.offset

    def read(self, start: int, end: int) -> bytes:
        if self.data is not None:
            return self.data[start:end]
        with open(self.path, "rb") as f:
            f.seek(self.offset + start)
            return f.read(end - start)


def sha256_of(blob: Blob) -> str:
    if blob._sha is not None:
        return blob._sha
    h = hashlib.sha256()
    pos = 0
    while pos < blob.size:
        chunk = blob.read(pos, min(blob.size, pos + (8 << 20)))
        h.update(chunk)
        pos += len(chunk)
    blob._sha = h.hexdigest()
    return blob._sha


@dataclass
class FakeHub:
    blobs: dict[str, Blob] = field(default_factory=dict)               # "sha256:HEX" -> blob
    manifests: dict[str, bytes] = field(default_factory=dict)          # "ns/name:tag" -> manifest
    hf: dict[str, dict[str, Blob]] = field(default_factory=dict)       # repo -> path -> blob
    files: dict[str, Blob] = field(default_factory=dict)               # /files/{name}
    drop_after: int | None = None      # close each blob body after this many bytes
    stall_after: int | None = None     # block each blob body after this many bytes until `release` is set
    rate: float | None = None          # pace each blob body at this many bytes/s (a network link), None = as fast as possible
    ignore_range: bool = False         # answer every blob GET with the whole body (200), as some servers do
    release: threading.Event = field(default_factory=threading.Event)
    body_bytes: int = 0
    served: dict[str, int] = field(default_factory=dict)  # path -> payload bytes sent
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    auth: list[tuple[str, str | None]] = field(default_factory=list)   # (path, Authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)
    active: int = 0                    # blob bodies being sent right now
    url: str = ""

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until no blob body is being sent: a cancelled client's handler may
        still push a buffered chunk after the client hung up."""
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- content ------------------------------------------------------------
    def add_blob(self, blob: Blob, digest: str | None = None) -> tuple[str, int]:
        digest = digest or "sha256:" + sha256_of(blob)
        self.blobs[digest] = blob
        return digest, blob.size

    def add_ollama_model(self, ref: str, model: Blob, *, model_digest: str | None = None,
                         template: str = "{{ .Prompt }}", params: dict | None = None,
                         media_type: str = "application/vnd.ollama.image.model") -> str:
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        cd, cs = self.add_blob(Blob(config))
        md, ms = self.add_blob(model, model_digest)
        layers = [{"mediaType": media_type, "digest": md, "size": ms}]
        td, ts = self.add_blob(Blob(template.encode()))
        layers.append({"mediaType": "application/vnd.ollama.image.template", "digest": td, "size": ts})
        pd, ps = self.add_blob(Blob(json.dumps(params or {"stop": ["<|im_end|>"]}).encode()))
        layers.append({"mediaType": "application/vnd.ollama.image.params", "digest": pd, "size": ps})
        self.manifests[ref] = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cd, "size": cs},
            "layers": layers}).encode()
        return md

    def add_hf_file(self, repo: str, path: str, blob: Blob) -> None:
        self.hf.setdefault(repo, {})[path] = blob


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:  # keep pytest output clean
            pass

        def _send(self, code: int, body: bytes = b"", ctype: str = "application/json",
                  headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _redirect(self, code: int, location: str) -> None:
            self._send(code, b"", headers={"Location": location})

        def _serve_blob(self, blob: Blob) -> None:
            size = blob.size
            start, end, code = 0, size, 200
            rng = None if hub.ignore_range else self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                if not m or int(m.group(1)) >= size:
                    self._send(416, headers={"Content-Range": f"bytes */{size}"})
                    return
                start = int(m.group(1))
                end = int(m.group(2)) + 1 if m.group(2) else size
                code = 206
            self.send_response(code)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            self.send_header("Accept-Ranges", "bytes")
            if code == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            if self.command == "HEAD":
                return
            with hub.lock:
                hub.active += 1
            try:
                self._send_body(blob, start, end)
            finally:
                with hub.lock:
                    hub.active -= 1

        def _send_body(self, blob: Blob, start: int, end: int) -> None:
            sent, pos = 0, start
            limit = hub.drop_after
            t0 = time.monotonic()
            while pos < end:
                n = min(1 << 20, end - pos)
                if hub.stall_after is not None and not hub.release.is_set():
                    n = min(n, hub.stall_after - sent)
                    if n <= 0:
                        self.wfile.flush()
                        hub.release.wait(60)
                        self.close_connection = True
                        return
                if limit is not None:
                    n = min(n, limit - sent)
                    if n <= 0:
                        # Simulate a dropped link: stop mid-body and close the socket.
                        self.close_connection = True
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                data = blob.read(pos, pos + n)
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with hub.lock:
                    hub.body_bytes += len(data)
                    hub.served[self.path] = hub.served.get(self.path, 0) + len(data)
                sent += len(data)
                pos += len(data)
                if hub.rate:
                    ahead = sent / hub.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlparse(self.path)
            path = unquote(url.path)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
                hub.auth.append((path, self.headers.get("Authorization")))
            m = re.fullmatch(r"/v2/([^/]+)/([^/]+)/manifests/([^/]+)", path)
            if m:
                body = hub.manifests.get(f"{m.group(1)}/{m.group(2)}:{m.group(3)}")
                if body is None:
                    self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
                else:
                    self._send(200, body, "application/vnd.docker.distribution.manifest.v2+json")
                return
            m = re.fullmatch(r"/v2/[^/]+/[^/]+/blobs/(sha256:[0-9a-f]{64})", path)
            if m:
                if m.group(1) in hub.blobs:
                    self._redirect(307, f"/cdn/{m.group(1)}")
                else:
                    self._send(404)
                return
            m = re.fullmatch(r"/cdn/(sha256:[0-9a-f]{64})", path)
            if m and m.group(1) in hub.blobs:
                self._serve_blob(hub.blobs[m.group(1)])
                return
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
            if m:
                self._tree(m.group(1), url.query)
                return
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                blob = hub.hf.get(m.group(1), {}).get(m.group(3))
                if blob is None:
                    self._send(404, b'{"error":"Entry not found"}', headers={"X-Error-Code": "EntryNotFound"})
                else:  # LFS files redirect to a CDN on the real Hub
                    self._redirect(302, f"/cdn-hf/{m.group(1)}/{m.group(3)}")
                return
            m = re.fullmatch(r"/cdn-hf/([^/]+/[^/]+)/(.+)", path)
            if m and m.group(2) in hub.hf.get(m.group(1), {}):
                self._serve_blob(hub.hf[m.group(1)][m.group(2)])
                return
            m = re.fullmatch(r"/files/(.+)", path)
            if m and m.group(1) in hub.files:
                self._serve_blob(hub.files[m.group(1)])
                return
            self._send(404, b'{"error":"not found"}')

        def _tree(self, repo: str, query: str) -> None:
            files = hub.hf.get(repo)
            if files is None:
                self._send(404, b'{"error":"Repository not found"}',
                           headers={"X-Error-Code": "RepoNotFound"})
                return
            out, dirs = [], set()
            recursive = "recursive=True" in query or "recursive=true" in query
            for p, blob in sorted(files.items()):
                if "/" in p and not recursive:
                    dirs.add(p.split("/")[0])
                    continue
                for i in range(1, p.count("/") + 1):
                    dirs.add("/".join(p.split("/")[:i]))
                sha = sha256_of(blob)
                out.append({"type": "file", "oid": hashlib.sha1(sha.encode()).hexdigest(), "size": blob.size,
                            "path": p, "lfs": {"oid": sha, "size": blob.size, "pointerSize": 134}})
            out += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
            self._send(200, json.dumps(out).encode())

    return H


class FakeHubServer:
    def __init__(self, hub: FakeHub):
        self.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.httpd.daemon_threads = True
        hub.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self.hub

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def write_split_gguf(src: Path, out_base: Path, n_parts: int) -> list[Path]:
    """A real split GGUF (as llama.cpp's gguf-split writes it) via the gguf package:
    the first part carries all metadata, every part a share of the tensors."""
    import math

    import gguf

    r = gguf.GGUFReader(src)
    arch = r.fields[gguf.Keys.General.ARCHITECTURE].contents()
    w = gguf.GGUFWriter(out_base, arch, split_max_tensors=math.ceil(len(r.tensors) / n_parts))
    for f in r.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt, sub_type=f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(out_base.parent.glob(out_base.stem + "-*-of-*.gguf"))


def build_wheel(dest_dir: Path, project: str, version: str, members: dict[str, Path | bytes]) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD) that pip accepts from --find-links."""
    import base64
    import zipfile

    dist = project.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files: dict[str, bytes | Path] = dict(members)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: diskllm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    out = dest_dir / f"{dist}-{version}-py3-none-any.whl"
    dest_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        record.append(f"{info}/RECORD,,")
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return out
