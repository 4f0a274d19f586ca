"""Object-level helpers over the minio client: content-addressed blobs and a seekable reader."""

from __future__ import annotations

import io
from pathlib import Path

from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

from streams.artifacts import blob_key

_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "ResourceNotFound"})
READ_AHEAD = 1 << 20


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
    key = blob_key(sha256)
    if not object_exists(client, bucket, key):
        client.fput_object(bucket, key, str(path))
    return key


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
