"""Positions in a topic kept in S3, one small object per partition: where a process manager has acted up to."""

from __future__ import annotations

from io import BytesIO

from minio import Minio
from minio.error import S3Error


class PositionStore:
    def __init__(self, client: Minio, bucket: str, prefix: str) -> None:
        self._client = client
        self._bucket = bucket
        self._prefix = prefix.rstrip("/") + "/"

    def load(self) -> dict[int, int]:
        """{partition: next offset}; empty when nothing was ever saved."""
        out: dict[int, int] = {}
        for item in self._client.list_objects(self._bucket, prefix=self._prefix):
            name = item.object_name or ""
            partition = name.removeprefix(self._prefix)
            if not partition.isdigit():
                continue
            try:
                response = self._client.get_object(self._bucket, name)
            except S3Error:
                continue
            try:
                out[int(partition)] = int(response.read().decode().strip())
            finally:
                response.close()
                response.release_conn()
        return out

    def save(self, positions: dict[int, int]) -> None:
        for partition, offset in positions.items():
            body = str(offset).encode()
            self._client.put_object(self._bucket, f"{self._prefix}{partition}", BytesIO(body), len(body))
