"""The embedded broker's own objects in its bucket (Tansu's S3 engine, `../shared/notes/tansu.md`): one object per
record batch at `clusters/{cluster}/topics/{topic}/partitions/{partition:010}/records/{base offset:020}.batch`.
Only the log keeper touches them, and only to delete batches it archived or that were decided. Synchronous."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import TopicPartition
from minio import Minio
from minio.deleteobjects import DeleteObject

CLUSTER = "tansu_cluster"  # Tansu's default cluster id; `loraplane up` does not set another
_SUFFIX = ".batch"


def records_prefix(tp: TopicPartition, cluster: str = CLUSTER) -> str:
    return f"clusters/{cluster}/topics/{tp.topic}/partitions/{tp.partition:010d}/records/"


def batch_bases(client: Minio, bucket: str, tp: TopicPartition) -> list[int]:
    """The base offsets of the partition's batch objects, ascending."""
    prefix = records_prefix(tp)
    bases = []
    for item in client.list_objects(bucket, prefix=prefix):
        name = (item.object_name or "").removeprefix(prefix)
        if name.endswith(_SUFFIX) and name.removesuffix(_SUFFIX).isdigit():
            bases.append(int(name.removesuffix(_SUFFIX)))
    return sorted(bases)


def delete_batches(client: Minio, bucket: str, tp: TopicPartition, bases: Iterable[int]) -> int:
    """Delete the named batch objects; how many were asked. Raises on the first error S3 reports."""
    prefix = records_prefix(tp)
    keys = [DeleteObject(f"{prefix}{base:020d}{_SUFFIX}") for base in bases]
    for start in range(0, len(keys), 1000):
        for error in client.remove_objects(bucket, keys[start : start + 1000]):
            raise RuntimeError(f"could not delete {error.name} from {bucket}: {error.code} {error.message}")
    return len(keys)
