"""Where the agents' snapshots live: objects `snapshots/<who>/<total offset, zero-padded>.json.gz` in the bucket.

Bytes in, bytes out: what a snapshot holds and whether it is valid is `agents.snapshots`'s business. The key sorts
by the total offset of `loraplane.events` the snapshot covers, so the newest is the last listed. Synchronous (the
minio SDK is): call it in a thread.
"""

from __future__ import annotations

import io

from minio import Minio
from minio.error import S3Error

from infra.s3 import ensure_bucket
from infra.s3_objects import read_object, remove_quietly

PREFIX = "snapshots"
_SUFFIX = ".json.gz"
_DIGITS = 20


class SnapshotStore:
    def __init__(self, client: Minio, bucket: str, who: str) -> None:
        if not who or "/" in who:
            raise ValueError(f"a snapshot owner is one path segment, not {who!r}")
        self._client = client
        self._bucket = bucket
        self.prefix = f"{PREFIX}/{who}/"
        self._bucket_checked = False

    def key_for(self, total_offset: int) -> str:
        return f"{self.prefix}{total_offset:0{_DIGITS}d}{_SUFFIX}"

    def keys(self) -> list[str]:
        """Every snapshot's key, newest first."""
        try:
            found = self._client.list_objects(self._bucket, prefix=self.prefix)
            names = [o.object_name for o in found if o.object_name and o.object_name.endswith(_SUFFIX)]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise
        return sorted(names, reverse=True)

    def get(self, key: str) -> bytes:
        return read_object(self._client, self._bucket, key)

    def put(self, key: str, data: bytes) -> None:
        if not self._bucket_checked:
            ensure_bucket(self._client, self._bucket)
            self._bucket_checked = True
        self._client.put_object(self._bucket, key, io.BytesIO(data), len(data), content_type="application/gzip")

    def keep_newest(self, count: int) -> list[str]:
        """Remove all but the newest `count` snapshots; the keys removed."""
        old = self.keys()[count:]
        for key in old:
            remove_quietly(self._client, self._bucket, key)
        return old
