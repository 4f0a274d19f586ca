"""Object-level helpers over the minio client: blobs stored once by content, and a seekable reader.

Bytes with one sha256 are held by one object, its *home*. Bytes the agents write themselves (a Hub or CivitAI
download, an evaluation dataset) live at their content address, `blobs/sha256/{2 hex}/{sha256}`. An upload is
stored where the API streamed it, `blobs/uploads/{uuid}` (copying 500 MB to a content address cost a second
write), and a claim at `blobs/by-sha256/{2 hex}/{sha256}` names that key: the first upload of some bytes to be
validated creates the claim with a conditional PUT (`If-None-Match: *`), so two jobs storing equal bytes at once
agree on one home, and every later upload of those bytes is removed and pointed at the home. Conditional PUTs are
answered by SeaweedFS (4.x, tested), MinIO and AWS S3; a server that ignored `If-None-Match` would let two concurrent
uploads of equal bytes both keep their object (a second copy, never a lost one).
"""

from __future__ import annotations

import io
from pathlib import Path

from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from streams.artifacts import blob_key

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
_PRECONDITION_FAILED = "PreconditionFailed"
READ_AHEAD = 1 << 20
CLAIMS_PREFIX = "blobs/by-sha256/"
_SETTLE_TRIES = 5


class NoLongerStored(Exception):
    """The object a job was handed is gone (removed by the staging sweep, say)."""


def claim_key(sha256: str) -> str:
    """Where the key of an upload's home for these bytes is written (a small text object)."""
    return f"{CLAIMS_PREFIX}{sha256[:2]}/{sha256}"


def object_exists(client: Minio, bucket: str, key: str) -> bool:
    try:
        client.stat_object(bucket, key)
    except S3Error as exc:
        if exc.code in _NOT_FOUND:
            return False
        raise
    return True


def store_blob_from_object(client: Minio, bucket: str, source_key: str, sha256: str) -> str:
    """Copy `source_key` to its blob key on the server side, unless those bytes are stored already."""
    key = blob_key(sha256)
    if not object_exists(client, bucket, key):
        client.copy_object(bucket, key, CopySource(bucket, source_key))
    return key


def store_blob_from_file(client: Minio, bucket: str, path: Path, sha256: str) -> str:
    """The home of these bytes: an existing one, else their content address, written from `path`."""
    home = stored_home(client, bucket, sha256)
    if home is not None:
        return home
    key = blob_key(sha256)
    client.fput_object(bucket, key, str(path))
    return key


def read_object(client: Minio, bucket: str, key: str) -> bytes:
    """The whole object's bytes (S3Error NoSuchKey when there is none), its connection given back to the pool."""
    response = client.get_object(bucket, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def _read_claim(client: Minio, bucket: str, sha256: str) -> tuple[str, str] | None:
    """(the key a claim names, the claim's ETag), or None without a claim."""
    try:
        response = client.get_object(bucket, claim_key(sha256))
    except S3Error as exc:
        if exc.code in _NOT_FOUND:
            return None
        raise
    try:
        return response.read().decode(), (response.headers.get("ETag") or "").strip('"')
    finally:
        response.close()
        response.release_conn()


def stored_home(client: Minio, bucket: str, sha256: str) -> str | None:
    """The object holding these bytes, if any: their content address, or the upload a claim names."""
    key = blob_key(sha256)
    if object_exists(client, bucket, key):
        return key
    claim = _read_claim(client, bucket, sha256)
    if claim is not None and object_exists(client, bucket, claim[0]):
        return claim[0]
    return None


def _put_conditionally(client: Minio, bucket: str, sha256: str, key: str, header: str, value: str) -> bool:
    headers: dict[str, str | list[str] | tuple[str]] = {header: value}
    try:
        client._put_object(bucket, claim_key(sha256), key.encode(), headers)  # minio: no public conditional put
    except S3Error as exc:
        if exc.code == _PRECONDITION_FAILED:
            return False
        raise
    return True


def settle_upload(client: Minio, bucket: str, key: str, sha256: str) -> str:
    """The home of the validated upload at `key`: an existing home of the same bytes, or `key` itself, claimed.

    The caller removes `key` when another home is answered: no claim names it then, so no name points at it (a claim
    naming `key`, made by an earlier run of the same job, keeps it the home even if a download has meanwhile written
    the content address). A claim naming an object that is gone (an upload the staging sweep removed after a day) is
    taken over, conditionally on its ETag, so two takers cannot both win. Raises NoLongerStored when `key` is gone.
    """
    legacy = blob_key(sha256)
    for _ in range(_SETTLE_TRIES):
        claim = _read_claim(client, bucket, sha256)
        if claim is None:
            if object_exists(client, bucket, legacy):
                return legacy
            if _put_conditionally(client, bucket, sha256, key, "If-None-Match", "*"):
                break
            continue  # claimed meanwhile: read the claim
        home, etag = claim
        if home == key:
            break  # this job claimed it on an earlier run
        if object_exists(client, bucket, home):
            return home
        if object_exists(client, bucket, legacy):
            return legacy
        if _put_conditionally(client, bucket, sha256, key, "If-Match", f'"{etag}"'):
            break
    else:
        raise RuntimeError(f"the claim of {sha256} kept changing")
    if not object_exists(client, bucket, key):
        raise NoLongerStored(key)
    return key


def is_claimed_by(client: Minio, bucket: str, key: str, sha256: str) -> bool:
    """Does the claim of these bytes name `key` (so `key` is a home other names may point at)?"""
    claim = _read_claim(client, bucket, sha256)
    return claim is not None and claim[0] == key


def remove_quietly(client: Minio, bucket: str, key: str) -> None:
    try:
        client.remove_object(bucket, key)
    except S3Error as exc:
        if exc.code not in _NOT_FOUND:
            raise


class S3ObjectReader(io.RawIOBase):
    """A read-only, seekable file over one object, read with range GETs (validation reads headers and
    a ZIP's directory, never the whole object)."""

    def __init__(self, client: Minio, bucket: str, key: str, size: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._size = size
        self._pos = 0
        self._buffer = b""
        self._buffer_start = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        size = min(size, max(0, self._size - self._pos))
        if size == 0:
            return b""
        start = self._pos - self._buffer_start
        if not (0 <= start and start + size <= len(self._buffer)):
            self._fill(self._pos, max(size, READ_AHEAD))
            start = 0
        data = self._buffer[start : start + size]
        self._pos += len(data)
        return data

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def _fill(self, offset: int, length: int) -> None:
        length = min(length, self._size - offset)
        response = self._client.get_object(self._bucket, self._key, offset=offset, length=length)
        try:
            self._buffer = response.read()
        finally:
            response.close()
            response.release_conn()
        self._buffer_start = offset
