"""Downloading a file from CivitAI: every redirect hop checked by the URL guard, the size limit enforced
while streaming, the bytes handed to a sink (an S3 multipart upload) so none of it sits in memory."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import ssl
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import httpx

from infra.errors import LoraplaneError, TransientError
from infra.url_guard import (
    CIVITAI_ALLOWED_HOSTS,
    GuardedUrl,
    Resolver,
    UrlRefused,
    check_url,
    host_allowed,
    resolve_host,
)

CHUNK_SIZE = 1 << 20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_MODEL_JSON = 8 << 20
_MAX_FILENAME_BYTES = 200
_USER_AGENT = "loraplane"
_ID = r"(\d{1,12})"
_PATHS = (
    ("download", re.compile(rf"/api/download/models/{_ID}")),
    ("version", re.compile(rf"/api/v1/model-versions/{_ID}")),
    ("model", re.compile(rf"/api/v1/models/{_ID}")),
    ("page", re.compile(rf"/models/{_ID}(?:/[^/]*)?")),
)
# RFC 6266 parameters: name=token or name="quoted string" (the disposition type has no '=').
_DISPOSITION_PARAM = re.compile(r"""([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)""")


class DownloadError(LoraplaneError):
    """The download cannot succeed as asked; retrying will not help."""


class DownloadRefused(DownloadError):
    """The source answered 401/403."""


class DownloadNotFound(DownloadError):
    """The source answered 404."""


class DownloadTooLarge(DownloadError):
    """The file is larger than the limit (announced, or counted while streaming)."""


class TooManyRedirects(DownloadError):
    pass


class SourceUnavailable(TransientError):
    """5xx, 429, timeouts and connection errors: the same download may succeed later."""


@dataclass(frozen=True)
class CivitaiRef:
    model_id: int | None
    version_id: int | None


@dataclass(frozen=True)
class DownloadResult:
    filename: str
    size: int
    sha256: str
    content_type: str | None
    final_url: str  # where the bytes came from, without query: presigned signatures stay out of events
    model_id: int | None
    version_id: int | None


def parse_civitai_url(url: str, *, hosts: Collection[str] = CIVITAI_ALLOWED_HOSTS) -> CivitaiRef | None:
    """Model and version ids named by a CivitAI page or API URL; None for any other URL."""
    parsed = _parse(url, hosts)
    return parsed[1] if parsed else None


async def download_civitai(
    url: str,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    allowed_hosts: Collection[str],
    max_bytes: int,
    max_redirects: int = 5,
    token: str | None = None,
    chunk_size: int = CHUNK_SIZE,
    progress: Callable[[int, int | None], None] | None = None,
    resolve: Resolver = resolve_host,
    timeout: float = 30.0,  # noqa: ASYNC109 - per network operation (connect, each read), not overall
) -> DownloadResult:
    """Stream the file `url` names into `sink`, at most `max_bytes` of it.

    A model page URL (`/models/123?modelVersionId=456`, or without a version: the latest) is turned into
    its `/api/download/models/{version}` URL. The token goes as a Bearer header to the URL's own origin
    only (scheme, host and port), never to the storage a download redirects to, and never into a message.
    Every hop is checked by `check_url` and connected to at the address it checked.
    """
    fetcher = _Fetcher(allowed_hosts, resolve, token, max_redirects, timeout)
    parsed = _parse(url, allowed_hosts)
    ref = parsed[1] if parsed else CivitaiRef(None, None)
    if parsed and parsed[0] != "download":
        version = ref.version_id
        if version is None:
            assert ref.model_id is not None
            version = await fetcher.latest_version(url, ref.model_id)
        ref = CivitaiRef(ref.model_id, version)
        url = _origin(url) + f"/api/download/models/{version}"

    async with fetcher.open(url) as (response, final_url):
        if response.headers.get("content-encoding", "identity").lower() != "identity":
            raise DownloadError(f"{_where(final_url)} sent a compressed body, which was not asked for")
        announced = _content_length(response)
        if announced is not None and announced > max_bytes:
            raise DownloadTooLarge(f"the file is {announced} bytes, more than the limit of {max_bytes} bytes")
        digest = hashlib.sha256()
        size = 0
        with _transport_errors(final_url):
            async for chunk in response.aiter_raw(chunk_size):
                size += len(chunk)
                if size > max_bytes:
                    raise DownloadTooLarge(f"the file is larger than the limit of {max_bytes} bytes")
                digest.update(chunk)
                await sink(chunk)
                if progress is not None:
                    progress(size, announced)
        filename = (
            filename_from_content_disposition(response.headers.get("content-disposition"))
            or _filename_from_url(final_url)
            or "download"
        )
        return DownloadResult(
            filename=filename,
            size=size,
            sha256=digest.hexdigest(),
            content_type=response.headers.get("content-type"),
            final_url=_without_query(final_url),
            model_id=ref.model_id,
            version_id=ref.version_id,
        )


def filename_from_content_disposition(value: str | None) -> str | None:
    """The file name a Content-Disposition header gives (RFC 6266: `filename*` wins), made safe."""
    if not value:
        return None
    params: dict[str, str] = {}
    for name, raw in _DISPOSITION_PARAM.findall(value):
        raw = raw.strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(name.lower(), raw)
    extended = params.get("filename*")
    if extended is not None:
        charset, _, rest = extended.partition("'")
        _lang, _, encoded = rest.partition("'")
        if charset.lower() in ("utf-8", "iso-8859-1") and encoded:
            try:
                name = safe_filename(unquote(encoded, encoding=charset.lower(), errors="strict"))
            except UnicodeDecodeError:
                name = None
            if name:
                return name
    plain = params.get("filename")
    return safe_filename(plain) if plain else None


def safe_filename(name: str) -> str | None:
    """The last path part of `name`, without control characters; None when nothing usable is left."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().lstrip(".")
    if not name:
        return None
    while len(name.encode()) > _MAX_FILENAME_BYTES:
        stem, dot, ext = name.rpartition(".")
        name = f"{stem[:-1]}{dot}{ext}" if dot and stem else name[:-1]
    return name


class _Fetcher:
    def __init__(
        self, allowed_hosts: Collection[str], resolve: Resolver, token: str | None, max_redirects: int, timeout: float
    ) -> None:
        self.allowed_hosts = allowed_hosts
        self.resolve = resolve
        self.token = token
        self.max_redirects = max_redirects
        self.timeout = timeout

    @asynccontextmanager
    async def open(self, url: str) -> AsyncIterator[tuple[httpx.Response, str]]:
        """The first non-redirect answer (2xx, else raised) and the URL it came from."""
        origin: tuple[str, str, int] | None = None
        current = url
        for _hop in range(self.max_redirects + 1):
            guarded = await asyncio.to_thread(
                check_url, current, allowed_hosts=self.allowed_hosts, resolve=self.resolve
            )
            here = (guarded.scheme, guarded.host, guarded.port)
            origin = origin or here
            # A fresh client per hop: its pool is keyed by address, and one connection must never carry
            # requests for two host names (TLS was verified for one of them only).
            async with httpx.AsyncClient(
                follow_redirects=False, trust_env=False, timeout=self.timeout, verify=_ssl_context()
            ) as client:
                request = self._request(client, guarded, send_token=here == origin)
                with _transport_errors(current):
                    response = await client.send(request, stream=True)
                try:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise DownloadError(f"{_where(current)} redirected without a Location")
                        current = urljoin(current, location.strip())
                        continue
                    _raise_for_status(response.status_code, current, self.token)
                    yield response, current
                    return
                finally:
                    await response.aclose()
        raise TooManyRedirects(f"more than {self.max_redirects} redirects from {_where(url)}")

    async def latest_version(self, url: str, model_id: int) -> int:
        """The newest version of a model (the first of `modelVersions` in `/api/v1/models/{id}`)."""
        async with self.open(_origin(url) + f"/api/v1/models/{model_id}") as (response, final_url):
            body = bytearray()
            with _transport_errors(final_url):
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > _MAX_MODEL_JSON:
                        raise DownloadError(f"the description of model {model_id} is too large")
        try:
            versions = json.loads(body)["modelVersions"]
            return int(versions[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise DownloadError(f"model {model_id} has no version to download") from None

    def _request(self, client: httpx.AsyncClient, guarded: GuardedUrl, *, send_token: bool) -> httpx.Request:
        headers = {"Host": guarded.host_header, "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
        if send_token and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        # Connect to the checked address; Host and SNI (so certificate checks) keep the name.
        try:
            target = httpx.URL(guarded.url).copy_with(host=guarded.address)
        except httpx.InvalidURL:
            raise UrlRefused(f"the URL to {guarded.host} cannot be parsed") from None
        extensions = {"sni_hostname": guarded.host} if guarded.scheme == "https" else {}
        return client.build_request("GET", target, headers=headers, extensions=extensions)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying context for every client: building one loads the CA bundle (about 50 ms)."""
    return httpx.create_ssl_context()


def _raise_for_status(status: int, url: str, token: str | None) -> None:
    if 200 <= status < 300:
        return
    where = _where(url)
    if status in (401, 403):
        hint = "the token was refused or has no access" if token else "it may need a CivitAI API token"
        raise DownloadRefused(f"the source refused access to {where} (HTTP {status}): {hint}")
    if status in (404, 410):
        raise DownloadNotFound(f"nothing to download at {where} (HTTP {status})")
    if status == 429 or status >= 500:
        raise SourceUnavailable(f"{where} is unavailable for now (HTTP {status})")
    raise DownloadError(f"{where} answered HTTP {status}")


@contextmanager
def _transport_errors(url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TimeoutException:
        raise SourceUnavailable(f"{_where(url)} timed out") from None
    except httpx.TransportError as exc:  # connect, read, protocol (a body cut short) errors
        raise SourceUnavailable(f"{_where(url)} failed: {type(exc).__name__}") from None


def _parse(url: str, hosts: Collection[str]) -> tuple[str, CivitaiRef] | None:
    try:
        parts = urlsplit(url)
        if not parts.hostname or not host_allowed(parts.hostname, hosts):
            return None
    except ValueError:
        return None
    path = parts.path.rstrip("/") or "/"
    for kind, pattern in _PATHS:
        found = pattern.fullmatch(path)
        if found is None:
            continue
        number = int(found.group(1))
        if kind in ("download", "version"):
            return kind, CivitaiRef(None, number)
        version = parse_qs(parts.query).get("modelVersionId", [""])[0]
        return kind, CivitaiRef(number, int(version) if version.isdigit() and len(version) <= 12 else None)
    return None


def _content_length(response: httpx.Response) -> int | None:
    raw = response.headers.get("content-length", "")
    return int(raw) if raw.isdigit() else None


def _filename_from_url(url: str) -> str | None:
    """A presigned URL's `response-content-disposition` (S3, R2) or `b2ContentDisposition` (B2), else the
    last path segment."""
    query = parse_qs(urlsplit(url).query)
    for key in ("response-content-disposition", "b2ContentDisposition"):
        if key in query and (name := filename_from_content_disposition(query[key][0])):
            return name
    return safe_filename(unquote(urlsplit(url).path))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _where(url: str) -> str:
    """A URL for messages: host and path, never the query (it may carry `?token=`) or credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname or '?'}{parts.path}"
