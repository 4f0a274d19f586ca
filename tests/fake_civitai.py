"""CivitAI on 127.0.0.1: a site whose download API answers 307 to a second server (the "CDN", another
port), like civitai.com does to its presigned storage URLs, plus the misbehaviours a downloader must
survive: an endless body without Content-Length, a lying Content-Length, 401, 5xx, redirect loops,
redirects to the cloud metadata address and to a host off the allowlist.

Site routes:
  GET /api/download/models/{id}   401 without the file's token, else 307 to {cdn}/file/{id}/{name}?sig=...
  GET /api/v1/models/{id}         {"id", "modelVersions": [{"id"}...]} (newest first)
  GET /models/{id}                an HTML page (what a downloader must never save)
  /unauthorized 401, /forbidden 403, /missing 404, /broken 503, /ratelimited 429,
  /to-metadata 307 -> http://169.254.169.254/..., /to-evil 307 -> https://evil.example.com/...,
  /to-private 307 -> http://10.20.30.40/... (a private address),
  /loop 302 -> /loop, /relative 302 -> /api/download/models/1, /huge (endless chunked body),
  /announced-huge (Content-Length: 1 TB), /cut-short (body shorter than Content-Length),
  /slow (answers after 5 s), /gzip (a compressed body), /echo-host (the Host header as body)
CDN routes:
  GET /file/{id}/{name}           the bytes, with the file's Content-Disposition and Content-Type
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

HUGE_TOTAL = 512 << 20  # what /huge would send if nobody hung up
HUGE_CHUNK = 64 << 10


@dataclass(frozen=True)
class FakeFile:
    body: bytes
    content_disposition: str | None = None
    token: str | None = None  # the Bearer token the download needs (None: public)
    content_type: str = "application/octet-stream"
    # Seconds between 64 KiB chunks: a download that takes a while (to kill a worker in the middle of it).
    throttle_s: float = 0.0


@dataclass(frozen=True)
class SeenRequest:
    server: str  # "site" or "cdn"
    method: str
    path: str  # with query
    headers: dict[str, str]  # names in lower case


@dataclass
class HugeStream:
    sent: int = 0  # bytes the server managed to write before the client hung up
    done: threading.Event = field(default_factory=threading.Event)


class FakeCivitai:
    """`with FakeCivitai({1: FakeFile(...)}) as civitai:` then download `civitai.site_url + "/api/..."`.

    `site_host` / `cdn_host` are the names used in URLs and redirects (default 127.0.0.1); tests that use
    names resolve them to 127.0.0.1 themselves.
    """

    def __init__(
        self,
        files: dict[int, FakeFile],
        *,
        models: dict[int, list[int]] | None = None,
        site_host: str = "127.0.0.1",
        cdn_host: str = "127.0.0.1",
    ) -> None:
        self.files = files
        self.models = models or {}
        self.requests: list[SeenRequest] = []
        self.huge = HugeStream()
        self._lock = threading.Lock()
        self._site = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "site"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "cdn"))
        self.site_url = f"http://{site_host}:{self._site.server_address[1]}"
        self.cdn_url = f"http://{cdn_host}:{self._cdn.server_address[1]}"
        self._threads = []
        for server in (self._site, self._cdn):
            server.daemon_threads = True
            self._threads.append(threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True))

    def __enter__(self) -> FakeCivitai:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for server in (self._site, self._cdn):
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(5)

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def seen(self, server: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.server == server]


def _handler(fake: FakeCivitai, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fake.record(SeenRequest(role, "GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
            path = urlsplit(self.path).path
            try:
                if role == "cdn":
                    self._cdn(path)
                else:
                    self._site(path)
            except (BrokenPipeError, ConnectionResetError):
                pass

        # -- the site ----------------------------------------------------------------------------------
        def _site(self, path: str) -> None:
            if found := re.fullmatch(r"/api/download/models/(\d+)", path):
                return self._download(int(found.group(1)))
            if found := re.fullmatch(r"/api/v1/models/(\d+)", path):
                model_id = int(found.group(1))
                if model_id not in fake.models:
                    return self._send(404, b'{"error": "No model with id"}')
                versions = [{"id": v, "name": f"v{v}"} for v in fake.models[model_id]]
                return self._send(200, json.dumps({"id": model_id, "modelVersions": versions}).encode())
            if re.fullmatch(r"/models/\d+(/.*)?", path):
                return self._send(200, b"<html>a model page</html>", content_type="text/html")
            simple = {"/unauthorized": 401, "/forbidden": 403, "/missing": 404, "/broken": 503, "/ratelimited": 429}
            if path in simple:
                return self._send(simple[path], b'{"error": "no"}')
            redirects = {
                "/to-metadata": (307, "http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
                "/to-evil": (307, "https://evil.example.com/x.safetensors"),
                "/to-private": (307, "http://10.20.30.40/x.safetensors"),
                "/loop": (302, "/loop"),
                "/relative": (302, "/api/download/models/1"),
            }
            if path in redirects:
                status, location = redirects[path]
                return self._send(status, b"", {"Location": location})
            if path == "/huge":
                return self._huge()
            if path == "/announced-huge":
                self._head(200, {"Content-Length": str(10**12), "Connection": "close"})
                self.wfile.write(b"x" * HUGE_CHUNK)
                self.close_connection = True
                return
            if path == "/cut-short":
                self._head(200, {"Content-Length": "1000", "Connection": "close"})
                self.wfile.write(b"only ten b")
                self.close_connection = True
                return
            if path == "/slow":
                time.sleep(5)
                return self._send(200, b"late")
            if path == "/gzip":
                return self._send(200, b"\x1f\x8b" + b"\0" * 20, {"Content-Encoding": "gzip"})
            if path == "/echo-host":
                return self._send(200, self.headers.get("Host", "").encode(), content_type="text/plain")
            return self._send(404, b'{"error": "Not found"}')

        def _download(self, version_id: int) -> None:
            file = fake.files.get(version_id)
            if file is None:
                return self._send(404, b'{"error": "No model version with id"}')
            if file.token is not None and self.headers.get("Authorization") != f"Bearer {file.token}":
                return self._send(401, b'{"error": "Unauthorized", "message": "The creator requires login"}')
            name = quote(f"model-{version_id}.safetensors")
            location = f"{fake.cdn_url}/file/{version_id}/{name}?X-Amz-Expires=86400&X-Amz-Signature=sig{version_id}"
            return self._send(307, b"", {"Location": location})

        def _huge(self) -> None:
            self._head(200, {"Transfer-Encoding": "chunked"})
            chunk = b"%x\r\n" % HUGE_CHUNK + b"h" * HUGE_CHUNK + b"\r\n"
            try:
                while fake.huge.sent < HUGE_TOTAL:
                    self.wfile.write(chunk)
                    fake.huge.sent += HUGE_CHUNK
                self.wfile.write(b"0\r\n\r\n")
            finally:
                self.close_connection = True
                fake.huge.done.set()

        # -- the CDN -----------------------------------------------------------------------------------
        def _cdn(self, path: str) -> None:
            found = re.fullmatch(r"/file/(\d+)/[^/]+", path)
            file = fake.files.get(int(found.group(1))) if found else None
            if file is None:
                return self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", content_type="application/xml")
            headers = {"Content-Disposition": file.content_disposition} if file.content_disposition else {}
            if file.throttle_s:
                return self._send_slowly(file, headers)
            return self._send(200, file.body, headers, content_type=file.content_type)

        def _send_slowly(self, file: FakeFile, headers: dict[str, str]) -> None:
            self._head(200, {**headers, "Content-Type": file.content_type, "Content-Length": str(len(file.body))})
            try:
                for start in range(0, len(file.body), HUGE_CHUNK):
                    self.wfile.write(file.body[start : start + HUGE_CHUNK])
                    self.wfile.flush()
                    time.sleep(file.throttle_s)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the downloader went away (its worker was killed)
            self.close_connection = True

        # -- writing -----------------------------------------------------------------------------------
        def _head(self, status: int, headers: dict[str, str]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def _send(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str] | None = None,
            content_type: str = "application/json",
        ) -> None:
            self._head(status, {**(headers or {}), "Content-Type": content_type, "Content-Length": str(len(body))})
            self.wfile.write(body)

    return Handler
