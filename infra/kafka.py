"""Kafka clients (aiokafka) configured from settings, and publishing envelopes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import RecordMetadata

from infra.archive_consumer import ArchiveAwareConsumer
from infra.log_archive import LogArchive
from infra.s3 import make_client as make_s3_client
from infra.settings import Settings
from streams.envelope import Envelope
from streams.serialization import MessageDecodeError, decode, encode, headers_for, key_for
from streams.topics import EVENTS, TopicSpec

_log = logging.getLogger(__name__)

# The topics the embedded broker's log keeper archives before trimming (commands are only trimmed once decided).
ARCHIVED_TOPICS = frozenset({EVENTS.name})

OnRecords = Callable[[TopicPartition, list[ConsumerRecord[Any, Any]]], Awaitable[None] | None]


# The most bytes `publish_together` puts in one record batch (under the brokers' default 1 MiB message limit).
MAX_BATCH_BYTES = 512 * 1024
# What a record adds to a batch beyond its key, value and headers, rounded up (varints, attributes, deltas).
_RECORD_OVERHEAD = 64
_BATCH_OVERHEAD = 128


def make_producer(settings: Settings) -> AIOKafkaProducer:
    # No idempotent producer: Tansu does not support it, and every handler dedupes anyway.
    return AIOKafkaProducer(
        bootstrap_servers=settings.require_kafka(),
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        request_timeout_ms=15_000,
        max_batch_size=MAX_BATCH_BYTES,
    )


def make_bulk_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """A consumer for reading a log from the start, where throughput matters more than latency."""
    options: dict[str, Any] = {
        "fetch_max_wait_ms": settings.kafka_bulk_fetch_max_wait_ms,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "max_poll_records": 5000,
    }
    return make_consumer(settings, **{**options, **overrides})


def make_consumer(settings: Settings, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.require_kafka(),
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    if settings.log_archive:
        archive = LogArchive(make_s3_client(settings), settings.broker_log_bucket)
        return ArchiveAwareConsumer(*topics, archive=archive, archived_topics=ARCHIVED_TOPICS, **options)
    return AIOKafkaConsumer(*topics, **options)


async def publish(producer: AIOKafkaProducer, topic: TopicSpec, envelope: Envelope) -> RecordMetadata:
    """Send one envelope keyed by its aggregate id and wait until the broker has it."""
    return await producer.send_and_wait(
        topic.name, value=encode(envelope), key=key_for(envelope), headers=headers_for(envelope)
    )


@dataclass(frozen=True)
class BatchOutcome:
    """One record batch `publish_together` sent: which groups it held, in order, and where it landed (its first
    record's offset) or why it did not."""

    groups: tuple[int, ...]
    partition: int
    landed: RecordMetadata | None
    error: BaseException | None


async def publish_together(
    producer: AIOKafkaProducer, topic: TopicSpec, groups: Sequence[Sequence[Envelope]]
) -> list[BatchOutcome]:
    """Publish groups of envelopes, each group whole in one record batch, so a group lands all or nothing: a broker
    writes a batch at once (Kafka appends it as one unit; Tansu stores it as one object) and a consumer reads it
    whole. The envelopes of a group must share their key (one aggregate). Groups bound for one partition share
    batches while they fit, which also keeps the broker's object count down. Every batch is sent before any is
    awaited; each outcome says whether its batch landed."""
    partitions = sorted(await producer.partitions_for(topic.name))
    choose = DefaultPartitioner()
    by_partition: dict[int, list[int]] = {}
    for index, group in enumerate(groups):
        keys = {key_for(e) for e in group}
        if len(keys) != 1:
            raise ValueError(f"a group published together needs one key, not {len(keys)}")
        by_partition.setdefault(choose(keys.pop(), partitions, partitions), []).append(index)

    planned: list[tuple[int, list[int], list[tuple[bytes, bytes, list[tuple[str, bytes]]]]]] = []
    for partition, indexes in by_partition.items():
        members: list[int] = []
        records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        size = _BATCH_OVERHEAD
        for index in indexes:
            encoded = [(key_for(e), encode(e), headers_for(e)) for e in groups[index]]
            group_size = sum(_record_size(*record) for record in encoded)
            if members and size + group_size > MAX_BATCH_BYTES:
                planned.append((partition, members, records))
                members, records, size = [], [], _BATCH_OVERHEAD
            members.append(index)
            records.extend(encoded)
            size += group_size
        planned.append((partition, members, records))

    built = []  # every batch is built before any is sent: a group too large for one batch sends nothing
    for partition, members, records in planned:
        batch = producer.create_batch()
        for key, value, headers in records:
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise ValueError(f"{len(records)} records do not fit in one {MAX_BATCH_BYTES}-byte batch")
        batch.close()
        built.append((partition, members, batch))
    sent: list[tuple[int, list[int], asyncio.Future[RecordMetadata] | BaseException]] = []
    for partition, members, batch in built:
        try:
            sent.append((partition, members, await producer.send_batch(batch, topic.name, partition=partition)))
        except Exception as exc:
            sent.append((partition, members, exc))
    outcomes = []
    for partition, members, future in sent:
        try:
            if isinstance(future, BaseException):
                raise future
            outcomes.append(BatchOutcome(tuple(members), partition, await future, None))
        except Exception as exc:
            outcomes.append(BatchOutcome(tuple(members), partition, None, exc))
    return outcomes


def partition_of(key: bytes, partitions: int) -> int:
    """The partition a producer sends a record with `key` to, out of `partitions` (Kafka's default partitioner)."""
    every = list(range(partitions))
    return int(DefaultPartitioner()(key, every, every))


def _record_size(key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> int:
    return len(key) + len(value) + sum(len(k) + len(v) for k, v in headers) + _RECORD_OVERHEAD


class PositionsBeyondLog(Exception):
    """Positions to read from lie past the end of the log (the log was reset since they were recorded)."""


async def read_from_start(
    settings: Settings,
    topic: TopicSpec,
    on_records: OnRecords,
    start_at: Mapping[int, int] | None = None,
) -> dict[TopicPartition, int]:
    """Read every partition of `topic` from offset 0 (or from `start_at`, partition -> offset, which must name every
    partition) to its end as it is now, with a bulk consumer (a longer fetch wait: Tansu then puts more batches in
    each answer); the positions reached, to follow the topic from. PositionsBeyondLog when `start_at` lies past the
    end of the log (the log was reset): records of other partitions may have reached `on_records` by then, so the
    caller discards what it folded."""
    bulk = make_bulk_consumer(settings, **({"auto_offset_reset": "none"} if start_at is not None else {}))
    await bulk.start()
    try:
        found = bulk.partitions_for_topic(topic.name)
        if not found:
            raise RuntimeError(f"topic {topic.name} does not exist (the stack creates it)")
        partitions = [TopicPartition(topic.name, p) for p in sorted(found)]
        bulk.assign(partitions)
        if start_at is None:
            await bulk.seek_to_beginning(*partitions)
        else:
            if set(start_at) != set(found):
                raise PositionsBeyondLog(f"positions name partitions {sorted(start_at)}, the topic has {sorted(found)}")
            for tp in partitions:
                bulk.seek(tp, start_at[tp.partition])
        if start_at is None and not settings.log_archive:
            on_records = _warning_of_a_trimmed_start(on_records)
        try:
            await read_to_end(bulk, partitions, on_records, fetch_max_wait_ms=settings.kafka_bulk_fetch_max_wait_ms)
        except OffsetOutOfRangeError as exc:
            raise PositionsBeyondLog(f"positions past the end of {topic.name}: {exc}") from exc
        reached = {tp: await bulk.position(tp) for tp in partitions}
        if start_at is not None:
            # Tansu may answer an offset past its end with an empty fetch: compare with the high watermark too.
            short = [tp for tp in partitions if (bulk.highwater(tp) or 0) < start_at[tp.partition]]
            if short:
                raise PositionsBeyondLog(f"positions past the end of {topic.name} in {short}")
        return reached
    finally:
        await stop_quietly(bulk)


def _warning_of_a_trimmed_start(on_records: OnRecords) -> OnRecords:
    """`on_records`, warning once per partition whose first record is not offset 0: the broker no longer holds the
    start of the log (retention, or the embedded broker's keeper with the reader not told to read its archive), so
    what is read from there misses every event before it."""
    seen: set[TopicPartition] = set()

    def checked(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> Awaitable[None] | None:
        if tp not in seen:
            seen.add(tp)
            if records[0].offset > 0:
                _log.warning(
                    "%s starts at offset %d on the broker: the events before it are not read. Beside the embedded "
                    "broker, set LORAPLANE_LOG_ARCHIVE=true (as `loraplane up` does) to read them from its archive",
                    tp,
                    records[0].offset,
                )
        return on_records(tp, records)

    return checked


async def read_to_end(
    consumer: AIOKafkaConsumer,
    partitions: Sequence[TopicPartition],
    on_records: OnRecords,
    *,
    fetch_max_wait_ms: int,
    max_records: int | None = None,
) -> None:
    """Read from each partition's position to the end of the log as it is now.

    The end comes from fetch responses' high watermark, not from ListOffsets: Tansu's answer to
    ListOffsets(LATEST) was seen stuck at an old offset for every client while fetches (and their
    high watermark) were right. A partition is read once its position reaches the high watermark of
    a fetch answered after the read began; that needs no fetch to come back empty first, so a read
    already at the end takes one fetch wait, not two.
    """
    began_ms = int(1000 * time.time())  # aiokafka's clock for a fetch answer (`last_poll_timestamp`)
    poll_ms = fetch_max_wait_ms + 100
    remaining = list(partitions)
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=poll_ms, max_records=max_records)
        for tp, records in batches.items():
            if records:
                result = on_records(tp, records)
                if result is not None:
                    await result
        remaining = [tp for tp in remaining if not await _read_to_high_watermark(consumer, tp, began_ms)]


async def _read_to_high_watermark(consumer: AIOKafkaConsumer, tp: TopicPartition, since_ms: int) -> bool:
    high, answered = consumer.highwater(tp), consumer.last_poll_timestamp(tp)
    if high is None or answered is None or answered < since_ms:
        return False
    return bool(await consumer.position(tp) >= high)


async def stop_quietly(client: AIOKafkaConsumer | AIOKafkaProducer) -> None:
    """Stop a client on shutdown. aiokafka's consumer without a group re-raises the cancellation
    of its own internal task from stop(); that is not the caller being cancelled."""
    task = asyncio.current_task()
    try:
        await client.stop()
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise


async def read_events_between(
    settings: Settings, starts: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]
) -> list[Envelope]:
    """The events of each partition from its start offset up to (not including) its end offset."""
    if not starts:
        return []
    consumer = make_consumer(settings, max_poll_records=5000)
    await consumer.start()
    try:
        consumer.assign(list(starts))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        out: list[Envelope] = []
        remaining = {tp for tp in starts if starts[tp] < ends[tp]}
        while remaining:
            batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = await consumer.getmany(
                *remaining, timeout_ms=1000
            )
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    try:
                        out.append(decode(record.value))
                    except MessageDecodeError as exc:
                        _log.error("unreadable event at %s:%d: %s", tp, record.offset, exc)
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return out
    finally:
        await stop_quietly(consumer)
