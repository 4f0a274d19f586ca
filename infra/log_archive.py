"""The archive of the embedded broker's log: closed stretches of a topic's partitions as segment objects in S3.

Tansu's S3 engine stores one object per record batch and lists a partition's objects on every fetch below its end,
so its cost grows with history (`../shared/notes/tansu.md`). The log keeper (`infra.log_keeper`) copies the older
records of `loraplane.events` here and only then deletes their batch objects from the broker; readers whose position
lies before what the broker still holds read these segments instead (`infra.archive_consumer`). Together they are
the whole log: every offset from 0, once.

A segment is `archive/{topic}/{partition:03}/{first offset:020}-{end offset:020}.jsonl.gz` in the broker's bucket
(it lives and is reset with the broker's data): gzip'd JSON lines, a header line
`{"format": 1, "topic", "partition", "first", "end", "records"}`, then one line per record, in offset order:
`{"offset", "timestamp", "timestamp_type", "key", "value", "headers": [[name, value], ...]}` where each of `key`,
`value` and a header's value is the UTF-8 text of the bytes, `{"base64": "..."}` when they are not UTF-8, or null.
Offsets are contiguous from `first` to `end - 1`. Synchronous (the minio SDK is): call it in a thread.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from minio import Minio
from minio.error import S3Error

from infra.s3_objects import read_object

PREFIX = "archive"
FORMAT = 1
_SUFFIX = ".jsonl.gz"
_DIGITS = 20


class ArchiveError(Exception):
    """A segment that cannot be read as this module writes them."""


@dataclass(frozen=True, order=True)
class Segment:
    first: int  # the offset of its first record
    end: int  # one past the offset of its last record
    key: str


def partition_prefix(tp: TopicPartition) -> str:
    return f"{PREFIX}/{tp.topic}/{tp.partition:03d}/"


def segment_key(tp: TopicPartition, first: int, end: int) -> str:
    return f"{partition_prefix(tp)}{first:0{_DIGITS}d}-{end:0{_DIGITS}d}{_SUFFIX}"


def parse_segment_key(tp: TopicPartition, key: str) -> Segment | None:
    name = key.removeprefix(partition_prefix(tp))
    if name == key or not name.endswith(_SUFFIX):
        return None
    first, sep, end = name.removesuffix(_SUFFIX).partition("-")
    if not (sep and first.isdigit() and end.isdigit()) or int(end) <= int(first):
        return None
    return Segment(int(first), int(end), key)


def _text(data: bytes | None) -> str | dict[str, str] | None:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(data).decode()}


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        return base64.b64decode(value["base64"])
    raise ArchiveError(f"not a text, base64 or null field: {value!r}")


def encode_segment(tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> bytes:
    """One segment of `records`, which must be contiguous offsets of partition `tp`."""
    if not records:
        raise ValueError("a segment holds at least one record")
    first = records[0].offset
    for expected, record in enumerate(records, start=first):
        if record.offset != expected:
            raise ValueError(f"records of {tp} are not contiguous: {record.offset} where {expected} was due")
    header = {
        "format": FORMAT,
        "topic": tp.topic,
        "partition": tp.partition,
        "first": first,
        "end": first + len(records),
        "records": len(records),
    }
    lines = [json.dumps(header)]
    for record in records:
        line = {
            "offset": record.offset,
            "timestamp": record.timestamp,
            "timestamp_type": record.timestamp_type,
            "key": _text(record.key),
            "value": _text(record.value),
            "headers": [[name, _text(value)] for name, value in record.headers],
        }
        lines.append(json.dumps(line, separators=(",", ":")))
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=5)


def decode_segment(tp: TopicPartition, data: bytes) -> list[ConsumerRecord[bytes, bytes]]:
    try:
        lines = gzip.decompress(data).decode().splitlines()
        header = json.loads(lines[0])
    except (OSError, EOFError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ArchiveError(f"unreadable segment of {tp}: {exc}") from exc
    if header.get("format") != FORMAT or header.get("topic") != tp.topic or header.get("partition") != tp.partition:
        raise ArchiveError(f"a segment of {tp} with a foreign header: {header}")
    out: list[ConsumerRecord[bytes, bytes]] = []
    for expected, line in enumerate(lines[1:], start=header["first"]):
        try:
            item = json.loads(line)
            key, value = _bytes(item["key"]), _bytes(item["value"])
            headers = [(str(name), _bytes(raw) or b"") for name, raw in item["headers"]]
            offset = int(item["offset"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"unreadable record in a segment of {tp}: {exc}") from exc
        if offset != expected:
            raise ArchiveError(f"a segment of {tp} has offset {offset} where {expected} was due")
        out.append(
            ConsumerRecord(
                tp.topic,
                tp.partition,
                offset,
                int(item["timestamp"]),
                int(item["timestamp_type"]),
                key,
                value,
                None,
                len(key) if key is not None else -1,
                len(value) if value is not None else -1,
                headers,
            )
        )
    if len(out) != header["records"] or (out and out[-1].offset + 1 != header["end"]):
        raise ArchiveError(f"a segment of {tp} holds {len(out)} records, its header says {header['records']}")
    return out


def contiguous_end(segments: Iterable[Segment]) -> int:
    """How far the segments cover a partition from offset 0 without a hole (0 when they do not start at 0)."""
    end = 0
    for segment in sorted(segments):
        if segment.first > end:
            break
        end = max(end, segment.end)
    return end


def covered(segments: Iterable[Segment]) -> list[Segment]:
    """The segments whose records another segment holds too (a merge stored, its parts not yet removed)."""
    out, reach = [], -1
    for segment in sorted(segments, key=lambda s: (s.first, -s.end)):
        if segment.end <= reach:
            out.append(segment)
        else:
            reach = segment.end
    return out


def merge_plan(segments: Sequence[Segment], max_records: int, min_run: int) -> list[Segment]:
    """The first run of at least `min_run` contiguous segments (in offset order, none covering another) that together
    hold at most `max_records`, taken greedily from the oldest; empty when there is none. The keeper stores a segment
    per round, a few hundred records each, so without merging a long-lived archive holds thousands of small objects,
    and a reader from offset 0 pays a request for each."""
    need = max(2, min_run)  # a "run" of one would be stored under its own key, then removed
    run: list[Segment] = []
    held = 0
    for segment in sorted(segments):
        size = segment.end - segment.first
        if run and segment.first == run[-1].end and held + size <= max_records:
            run.append(segment)
            held += size
            continue
        if len(run) >= need:
            return run
        run, held = ([segment], size) if size < max_records else ([], 0)
    return run if len(run) >= need else []


@dataclass(frozen=True)
class Compaction:
    merged: int  # small segments merged into one
    removed_covered: int  # segments removed because another held their records


class LogArchive:
    def __init__(self, client: Minio, bucket: str) -> None:
        self._client = client
        self._bucket = bucket
        # The segment each partition was last read from: a reader goes through a segment in several reads.
        self._cached: dict[TopicPartition, tuple[Segment, list[ConsumerRecord[bytes, bytes]]]] = {}
        self._listed: dict[TopicPartition, list[Segment]] = {}  # each partition's segments when last listed

    def segments(self, tp: TopicPartition) -> list[Segment]:
        """Every segment of the partition, in offset order."""
        try:
            listed = self._client.list_objects(self._bucket, prefix=partition_prefix(tp))
            found = [parse_segment_key(tp, item.object_name or "") for item in listed]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise
        return sorted(segment for segment in found if segment is not None)

    def end(self, tp: TopicPartition) -> int:
        """One past the last offset the archive holds contiguously from 0."""
        return contiguous_end(self.segments(tp))

    def put(self, tp: TopicPartition, records: Sequence[ConsumerRecord[Any, Any]]) -> Segment:
        data = encode_segment(tp, records)
        segment = Segment(records[0].offset, records[-1].offset + 1, "")
        key = segment_key(tp, segment.first, segment.end)
        self._client.put_object(self._bucket, key, io.BytesIO(data), len(data), content_type="application/gzip")
        return Segment(segment.first, segment.end, key)

    def read(
        self, tp: TopicPartition, start: int, until: int, limit: int | None = None
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """The archived records of `tp` from `start` (inclusive) up to `until` (exclusive) that the segment holding
        `start` has, at most `limit`; empty when no segment holds `start`."""
        cached = self._cached.get(tp)
        if cached is None or not cached[0].first <= start < cached[0].end:
            found = self._load(tp, start)
            if found is None:
                return []
            cached = self._cached[tp] = found
        segment, records = cached
        stop = min(until, segment.end)
        if limit is not None:
            stop = min(stop, start + limit)
        return records[start - segment.first : stop - segment.first]

    def _load(self, tp: TopicPartition, start: int) -> tuple[Segment, list[ConsumerRecord[bytes, bytes]]] | None:
        """The segment holding `start` and its records. The partition's listing is kept: a reader goes from segment
        to segment, and listing them all for each would cost the square of their number. It is listed again when it
        lacks `start` (written since) or names a segment that is gone (merged since, `compact`)."""
        for relist in (False, True):
            if relist or tp not in self._listed:
                self._listed[tp] = self.segments(tp)
            holding = [s for s in self._listed[tp] if s.first <= start < s.end]
            if not holding:
                continue
            segment = max(holding, key=lambda s: s.end)  # overlapping segments hold the same records
            try:
                return segment, self._records(tp, segment)
            except S3Error as exc:
                if exc.code != "NoSuchKey" or relist:
                    raise
        return None

    def _records(self, tp: TopicPartition, segment: Segment) -> list[ConsumerRecord[bytes, bytes]]:
        return decode_segment(tp, read_object(self._client, self._bucket, segment.key))

    def compact(self, tp: TopicPartition, max_records: int, min_run: int) -> Compaction:
        """Remove segments another one covers (left by a merge cut short), then merge one run of small segments
        (`merge_plan`). The merged segment is stored before the ones it replaces are removed, so a reader finds
        every record at any moment; one that listed before finds the merged segment when it lists again."""
        segments = self.segments(tp)
        stale = covered(segments)
        live = [segment for segment in segments if segment not in stale]
        group = merge_plan(live, max_records, min_run)
        if group:
            self.put(tp, [record for segment in group for record in self._records(tp, segment)])
        for segment in [*stale, *group]:
            self._client.remove_object(self._bucket, segment.key)
        return Compaction(merged=len(group), removed_covered=len(stale))
