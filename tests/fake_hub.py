"""A Hugging Face Hub on 127.0.0.1 answering what `huggingface_hub` asks for `model_info`,
`list_repo_refs` and `hf_hub_download`, with the headers and error codes the real Hub uses.

Endpoints (learnt from huggingface_hub 1.x: `HfApi.model_info`, `HfApi.list_repo_refs`,
`file_download.get_hf_file_metadata` / `http_get`, `utils._http.hf_raise_for_status`):
- GET  /api/models/{repo}[/revision/{rev}][?blobs=True]  model info: sha, siblings (size, blobId, lfs), cardData
- GET  /api/models/{repo}/refs                          branches and tags
- HEAD /{repo}/resolve/{rev}/{path}                     X-Repo-Commit, ETag (git blob id), Content-Length;
                                                        LFS files: 302 to the CDN with X-Linked-Etag (sha256)
                                                        and X-Linked-Size
- GET  /{repo}/resolve/{rev}/{path}                     the bytes, or the same 302 for LFS files
- GET  /cdn/{sha256}                                    LFS bytes (a presigned URL: no Authorization needed)
- GET  /api/whoami-v2                                   the token's user, or 401
Errors: unknown or private repo without access -> 401 (no token) / 404 (token) with X-Error-Code
RepoNotFound; gated -> GatedRepo; unknown revision -> 404 RevisionNotFound; unknown file -> 404
EntryNotFound; a token the Hub does not know -> 401 "Invalid credentials in Authorization header".
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def commit_sha(files: dict[str, bytes], salt: str = "") -> str:
    """A stable 40-hex commit id for a file set (and a salt, to make two commits of the same files differ)."""
    digest = hashlib.sha1(salt.encode())
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class FakeRepo:
    commits: dict[str, dict[str, bytes]]  # commit sha -> {path: bytes}
    branches: dict[str, str]  # branch -> commit sha
    tags: dict[str, str] = field(default_factory=dict)  # tag -> commit sha
    private: bool = False
    gated: bool = False
    readers: set[str] = field(default_factory=set)  # tokens with access (private or gated repos)
    card_data: bool = True  # list cardData (the README's front matter) in model info, as the Hub does

    @classmethod
    def single(cls, files: dict[str, bytes], *, tags: tuple[str, ...] = (), **kwargs: Any) -> FakeRepo:
        """One commit on `main`, with `tags` pointing at it."""
        sha = commit_sha(files)
        return cls(commits={sha: files}, branches={"main": sha}, tags=dict.fromkeys(tags, sha), **kwargs)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [sha for sha in self.commits if sha.startswith(revision)]
            return found[0] if len(found) == 1 else None
        return None


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str  # unquoted, without query
    headers: dict[str, str]  # names in lower case


class FakeHub:
    """`with FakeHub(repos, tokens={...}) as hub:` then `endpoint=hub.url`."""

    def __init__(self, repos: dict[str, FakeRepo], *, tokens: dict[str, str] | None = None) -> None:
        self.repos = repos
        self.tokens = tokens or {}  # token -> user name: every token the Hub knows
        self.requests: list[SeenRequest] = []
        self.served: list[str] = []  # paths of the files whose bytes were sent (resolve or CDN), in order
        self.fail_with: int | None = None  # answer every request with this status (e.g. 503)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def served_file(self, path: str) -> None:
        with self._lock:
            self.served.append(path)


@contextmanager
def fake_hub(repos: dict[str, FakeRepo], *, tokens: dict[str, str] | None = None) -> Iterator[FakeHub]:
    with FakeHub(repos, tokens=tokens) as hub:
        yield hub


class _Refusal(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        # -- routing ---------------------------------------------------------------------------------
        def _serve(self, *, head: bool) -> None:
            split = urlsplit(self.path)
            raw_path, query = split.path, parse_qs(split.query)
            hub.record(SeenRequest(self.command, unquote(raw_path), {k.lower(): v for k, v in self.headers.items()}))
            try:
                if hub.fail_with is not None:
                    raise _Refusal(hub.fail_with, None, "the fake hub is failing on purpose")
                user = self._user()
                if raw_path == "/api/whoami-v2":
                    if user is None:
                        raise _Refusal(401, None, "Invalid credentials in Authorization header")
                    return self._json({"type": "user", "name": user}, head)
                if raw_path.startswith("/cdn/"):
                    return self._cdn(raw_path[len("/cdn/") :], head)
                if raw_path.startswith("/api/models/"):
                    return self._api(raw_path[len("/api/models/") :], query, head)
                return self._resolve(raw_path[1:], head)
            except _Refusal as refusal:
                headers = dict(refusal.headers)
                if refusal.code:
                    headers["X-Error-Code"] = refusal.code
                headers["X-Error-Message"] = refusal.message
                self._send(refusal.status, json.dumps({"error": refusal.message}).encode(), headers, head)

        def _user(self) -> str | None:
            auth = self.headers.get("Authorization")
            if auth is None:
                return None
            token = auth.removeprefix("Bearer ").strip()
            if token not in hub.tokens:
                raise _Refusal(401, None, "Invalid credentials in Authorization header")
            return hub.tokens[token]

        def _token(self) -> str | None:
            auth = self.headers.get("Authorization")
            return auth.removeprefix("Bearer ").strip() if auth else None

        def _repo(self, rest: str) -> tuple[str, FakeRepo, str]:
            """(repo id, repo, rest of the path) after checking access."""
            for repo_id in sorted(hub.repos, key=len, reverse=True):
                if rest == repo_id or rest.startswith(repo_id + "/"):
                    repo = hub.repos[repo_id]
                    tail = rest[len(repo_id) + 1 :]
                    break
            else:
                raise _Refusal(401 if self._token() is None else 404, "RepoNotFound", "Repository not found")
            token = self._token()
            if repo.private and token not in repo.readers:
                raise _Refusal(401 if token is None else 404, "RepoNotFound", "Repository not found")
            if repo.gated and token not in repo.readers:
                raise _Refusal(
                    401 if token is None else 403,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                )
            return repo_id, repo, tail

        def _commit(self, repo: FakeRepo, revision: str) -> str:
            sha = repo.resolve(revision)
            if sha is None:
                raise _Refusal(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return sha

        # -- /api/models -----------------------------------------------------------------------------
        def _api(self, rest: str, query: dict[str, list[str]], head: bool) -> None:
            repo_id, repo, tail = self._repo(rest)
            if tail == "refs":
                return self._json(_refs(repo), head)
            if tail == "":
                revision = "main"
            elif tail.startswith("revision/"):
                revision = unquote(tail[len("revision/") :])
            else:
                raise _Refusal(404, None, "Not found")
            sha = self._commit(repo, revision)
            return self._json(_model_info(repo_id, repo, sha, blobs="blobs" in query), head)

        # -- /{repo}/resolve/{rev}/{path} --------------------------------------------------------------
        def _resolve(self, rest: str, head: bool) -> None:
            found = re.fullmatch(r"(.+?)/resolve/([^/]+)/(.+)", rest)
            if found is None:
                raise _Refusal(404, None, "Not found")
            _repo_id, repo, _ = self._repo(unquote(found.group(1)))
            sha = self._commit(repo, unquote(found.group(2)))
            path = unquote(found.group(3))
            files = repo.commits[sha]
            if path not in files:
                raise _Refusal(404, "EntryNotFound", f"{path} does not exist on {sha}", {"X-Repo-Commit": sha})
            content = files[path]
            if path.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(content).hexdigest()
                pointer = _lfs_pointer(content)
                headers = {
                    "Location": f"{hub.url}/cdn/{sha256}",
                    "X-Repo-Commit": sha,
                    "ETag": f'"{git_blob_id(pointer)}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(content)),
                }
                return self._send(302, b"", headers, head)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_id(content)}"', "Accept-Ranges": "bytes"}
            if not head:
                hub.served_file(path)
            return self._send(200, content, headers, head, content_type="application/octet-stream")

        def _cdn(self, sha256: str, head: bool) -> None:
            for repo in hub.repos.values():
                for files in repo.commits.values():
                    for path, content in files.items():
                        if hashlib.sha256(content).hexdigest() == sha256:
                            headers = {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"}
                            if not head:
                                hub.served_file(path)
                            return self._send(200, content, headers, head, content_type="application/octet-stream")
            raise _Refusal(404, None, "No such blob")

        # -- writing ---------------------------------------------------------------------------------
        def _json(self, body: Any, head: bool) -> None:
            self._send(200, json.dumps(body).encode(), {}, head, content_type="application/json")

        def _send(
            self,
            status: int,
            body: bytes,
            headers: dict[str, str],
            head: bool,
            content_type: str = "application/json",
        ) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def _lfs_pointer(content: bytes) -> bytes:
    sha256 = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {len(content)}\n".encode()


def _card_data(files: dict[str, bytes]) -> dict[str, Any] | None:
    readme = files.get("README.md")
    if readme is None:
        return None
    found = re.match(rb"^---\s*\n(.*?)\n---\s*\n", readme, re.S)
    if found is None:
        return None
    data = yaml.safe_load(found.group(1))
    return data if isinstance(data, dict) else None


def _model_info(repo_id: str, repo: FakeRepo, sha: str, *, blobs: bool) -> dict[str, Any]:
    files = repo.commits[sha]
    siblings: list[dict[str, Any]] = []
    for path in sorted(files):
        sibling: dict[str, Any] = {"rfilename": path}
        if blobs:
            content = files[path]
            if path.endswith(LFS_SUFFIXES):
                pointer = _lfs_pointer(content)
                sibling["blobId"] = git_blob_id(pointer)
                sibling["lfs"] = {
                    "size": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                    "pointerSize": len(pointer),
                }
            else:
                sibling["blobId"] = git_blob_id(content)
            sibling["size"] = len(content)
        siblings.append(sibling)
    info: dict[str, Any] = {
        "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0],
        "sha": sha,
        "lastModified": "2024-01-30T12:00:00.000Z",
        "createdAt": "2024-01-01T12:00:00.000Z",
        "private": repo.private,
        "gated": "auto" if repo.gated else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": ["peft"],
        "library_name": "peft",
        "siblings": siblings,
    }
    card = _card_data(files) if repo.card_data else None
    if card is not None:
        info["cardData"] = card
    return info


def _refs(repo: FakeRepo) -> dict[str, Any]:
    def ref(kind: str, name: str, sha: str) -> dict[str, str]:
        return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

    return {
        "branches": [ref("heads", n, s) for n, s in repo.branches.items()],
        "tags": [ref("tags", n, s) for n, s in repo.tags.items()],
        "converts": [],
    }
