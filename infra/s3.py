"""The S3 adapter: everything goes through the `minio` SDK (SeaweedFS, MinIO or AWS behind it)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.error import S3Error

from infra.settings import Settings

# Answers that mean "S3 is up but refuses these credentials": waiting longer will not help.
_AUTH_ERRORS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}
)
_PROBE_TIMEOUT_S = 1.5


def _endpoint(settings: Settings) -> tuple[str, bool]:
    """`host:port` and whether to use TLS, from `http(s)://host:port` or a bare `host:port`."""
    raw = settings.require_s3().strip()
    if "://" not in raw:
        return raw.rstrip("/"), settings.s3_secure
    url = urlsplit(raw)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ValueError(f"S3_ENDPOINT must be http(s)://host[:port] or host[:port], not {raw!r}")
    if url.path.strip("/"):
        raise ValueError(f"S3_ENDPOINT must not have a path: {raw!r}")
    return url.netloc, url.scheme == "https"


def _quick_http_client(timeout: float = _PROBE_TIMEOUT_S) -> urllib3.PoolManager:
    """No retries and short timeouts: for probes that must answer fast, even "no"."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=timeout, read=timeout),
        retries=False,
        maxsize=2,
    )


def make_client(settings: Settings, http_client: urllib3.PoolManager | None = None) -> Minio:
    endpoint, secure = _endpoint(settings)
    return Minio(
        endpoint,
        access_key=settings.s3_access_key.get_secret_value(),
        secret_key=settings.s3_secret_key.get_secret_value(),
        secure=secure,
        region=settings.s3_region,
        http_client=http_client,
    )


def ensure_bucket(client: Minio, name: str) -> None:
    """Create the bucket unless it exists; another process creating it at the same time is fine."""
    if client.bucket_exists(name):
        return
    try:
        client.make_bucket(name)
    except S3Error as exc:
        if exc.code == "BucketAlreadyOwnedByYou":
            return
        # Some servers answer BucketAlreadyExists to a concurrent create by the same owner.
        if exc.code == "BucketAlreadyExists" and client.bucket_exists(name):
            return
        raise


async def wait_for_s3(settings: Settings, timeout: float) -> None:  # noqa: ASYNC109
    """Poll ListBuckets until S3 answers; TimeoutError (with the last error) after `timeout` seconds.

    A refusal of the credentials that lasts more than 2 s is raised at once as an S3Error.
    """
    client = make_client(settings, _quick_http_client())
    deadline = time.monotonic() + timeout
    auth_refused_since: float | None = None
    last: BaseException | None = None
    while True:
        try:
            await asyncio.to_thread(client.list_buckets)
            return
        except S3Error as exc:
            last = exc
            if exc.code in _AUTH_ERRORS:
                now = time.monotonic()
                auth_refused_since = auth_refused_since or now
                if now - auth_refused_since > 2.0:
                    raise
        except Exception as exc:  # connection refused, reset, timeout...: not up yet
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"S3 at {settings.s3_endpoint} did not answer within {timeout:g}s: {last}")
        await asyncio.sleep(0.1)


async def s3_ready(settings: Settings) -> bool:
    """Does S3 answer ListBuckets with these credentials? Answers within about 2 seconds."""
    try:
        client = make_client(settings, _quick_http_client(1.0))
        await asyncio.wait_for(asyncio.to_thread(client.list_buckets), 2.0)
    except Exception:
        return False
    return True
