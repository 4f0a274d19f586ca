"""Tools for the log's consumers and for replay (`loraplane events ...`): tail, export, verify and schema.

Records are printed as they are on the log, one JSON object per line (old payload versions as written; the
published schema, `loraplane events schema`, describes every version). The end of a log is where fetches' high
watermarks put it, never ListOffsets (wrong on Tansu; see `infra.kafka.read_to_end`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from infra.kafka import make_bulk_consumer, read_to_end, stop_quietly
from infra.settings import Settings
from streams import registry
from streams.envelope import MessageKind
from streams.json_schema import document
from streams.outcomes import CommandRejected
from streams.serialization import MessageDecodeError, decode

# --- choosing records -------------------------------------------------------------------------


def parse_moment(text: str) -> datetime:
    """Unix seconds or ISO 8601 (UTC when no zone is given)."""
    if text.lstrip("-").replace(".", "", 1).isdigit():
        return datetime.fromtimestamp(float(text), UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_offsets(values: Iterable[str]) -> tuple[int | None, dict[int, int]]:
    """`--from-offset`/`--to-offset` values: `N` for every partition, `P:N` for partition P (the last wins)."""
    every: int | None = None
    per_partition: dict[int, int] = {}
    for value in values:
        partition, sep, offset = value.partition(":")
        if sep:
            per_partition[int(partition)] = int(offset)
        else:
            every = int(value)
    return every, per_partition


@dataclass(frozen=True)
class Selection:
    """Which records a tool prints: by type (exact, or a prefix ending in `.` such as `adapter.`), by aggregate
    (`TYPE` or `TYPE/ID`), and by `occurred_at` (since inclusive, until exclusive)."""

    types: tuple[str, ...] = ()
    aggregate: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.types and not any(_type_matches(str(record.get("type")), wanted) for wanted in self.types):
            return False
        if self.aggregate is not None:
            aggregate_type, sep, aggregate_id = self.aggregate.partition("/")
            if record.get("aggregate_type") != aggregate_type or (sep and record.get("aggregate_id") != aggregate_id):
                return False
        if self.since is not None or self.until is not None:
            try:
                occurred = parse_moment(str(record.get("occurred_at")))
            except ValueError:
                return False
            if self.since is not None and occurred < self.since:
                return False
            if self.until is not None and occurred >= self.until:
                return False
        return True


def _type_matches(name: str, wanted: str) -> bool:
    return name.startswith(wanted) if wanted.endswith(".") else name == wanted


@dataclass(frozen=True)
class OffsetRange:
    """Offsets to read per partition: from inclusive, to exclusive (None: from 0, to the end as it is now)."""

    start: int | None = None
    stop: int | None = None
    starts: Mapping[int, int] = field(default_factory=dict)
    stops: Mapping[int, int] = field(default_factory=dict)

    def start_of(self, partition: int) -> int:
        return self.starts.get(partition, self.start or 0)

    def stop_of(self, partition: int) -> int | None:
        return self.stops.get(partition, self.stop)

    def holds(self, partition: int, offset: int) -> bool:
        stop = self.stop_of(partition)
        return offset >= self.start_of(partition) and (stop is None or offset < stop)


def json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _parse(value: bytes | None) -> dict[str, Any] | None:
    try:
        data = json.loads(value or b"")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


# --- reading ----------------------------------------------------------------------------------


async def _open(settings: Settings, topic: str) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    consumer = make_bulk_consumer(settings)
    await consumer.start()
    found = consumer.partitions_for_topic(topic)
    if not found:
        await stop_quietly(consumer)
        raise LookupError(f"topic {topic} does not exist")
    partitions = [TopicPartition(topic, p) for p in sorted(found)]
    consumer.assign(partitions)
    return consumer, partitions


async def seek_to_log_end(consumer: AIOKafkaConsumer, partitions: list[TopicPartition], wait_ms: int) -> None:
    """Put every position at the end of the log as fetches report it: ListOffsets only gives a start near it
    (on Tansu it can be behind), and whatever a fetch brings below its high watermark is skipped."""
    await consumer.seek_to_end(*partitions)
    pending = list(partitions)
    while pending:
        await consumer.getmany(*pending, timeout_ms=2 * wait_ms + 100)
        for tp in list(pending):
            high = consumer.highwater(tp)
            if high is None:
                continue
            if await consumer.position(tp) != high:
                consumer.seek(tp, high)
            pending.remove(tp)


async def tail(
    settings: Settings,
    topic: str,
    selection: Selection,
    out: TextIO,
    *,
    from_start: bool = False,
    limit: int | None = None,
    on_ready: Callable[[dict[int, int]], None] | None = None,
) -> int:
    """Follow the log and print the selected records as they arrive (all of them first with `from_start`);
    returns how many were printed (after `limit`, or never: it follows until cancelled). `on_ready` is told the
    positions it follows from once it has them: what is written after that is printed."""
    consumer, partitions = await _open(settings, topic)
    printed = 0
    try:
        if from_start:
            await consumer.seek_to_beginning(*partitions)
        else:
            await seek_to_log_end(consumer, partitions, settings.kafka_bulk_fetch_max_wait_ms)
        if on_ready is not None:
            on_ready({tp.partition: 0 if from_start else await consumer.position(tp) for tp in partitions})
        while limit is None or printed < limit:
            batches = await consumer.getmany(timeout_ms=1000)
            for record in (record for records in batches.values() for record in records):
                data = _parse(record.value)
                if data is None or not selection.matches(data):
                    continue
                out.write(json_line(data) + "\n")
                printed += 1
                if printed == limit:
                    break
            out.flush()
        return printed
    finally:
        await stop_quietly(consumer)


@dataclass
class ExportResult:
    written: int = 0
    skipped: list[str] = field(default_factory=list)  # records that are not JSON objects, by position
    ends: dict[int, int] = field(default_factory=dict)  # where each partition's export ended (to continue from)


async def export(
    settings: Settings, topic: str, selection: Selection, offsets: OffsetRange, out: TextIO, partitions: Iterable[int]
) -> ExportResult:
    """Write the selected records in `offsets` (every partition unless `partitions` names some) as JSON lines,
    up to the end of the log as it is now: in order within a partition, partitions interleaved."""
    consumer, every = await _open(settings, topic)
    chosen = set(partitions)
    assigned = [tp for tp in every if not chosen or tp.partition in chosen]
    result = ExportResult()

    def write(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            if not offsets.holds(tp.partition, record.offset):
                continue
            data = _parse(record.value)
            if data is None:
                result.skipped.append(f"{tp.partition}:{record.offset}")
            elif selection.matches(data):
                out.write(json_line(data) + "\n")
                result.written += 1
        stop, high = offsets.stop_of(tp.partition), consumer.highwater(tp)
        if stop is not None and high is not None and records[-1].offset + 1 >= stop:
            consumer.seek(tp, max(high, records[-1].offset + 1))  # past its range: read no more of it

    try:
        consumer.assign(assigned)
        for tp in assigned:
            consumer.seek(tp, offsets.start_of(tp.partition))
        await read_to_end(consumer, assigned, write, fetch_max_wait_ms=settings.kafka_bulk_fetch_max_wait_ms)
        for tp in assigned:
            end, stop = await consumer.position(tp), offsets.stop_of(tp.partition)
            result.ends[tp.partition] = end if stop is None else min(end, stop)
        out.flush()
        return result
    finally:
        await stop_quietly(consumer)


# --- verify -----------------------------------------------------------------------------------


@dataclass
class _Run:
    command_id: str
    partition: int
    offset: int


@dataclass
class LogReport:
    records: int = 0
    events: int = 0
    aggregates: int = 0
    decisions: int = 0
    repeats: int = 0  # records that repeat an earlier record byte for byte: a producer's retry, which readers skip
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verdict = "no problems" if self.ok else f"{len(self.problems)} problem(s)"
        repeated = f", {self.repeats} repeated records (retried produces, skipped)" if self.repeats else ""
        return (
            f"{self.records} records, {self.events} events decoded, {self.aggregates} aggregates, "
            f"{self.decisions} decisions{repeated}: {verdict}"
        )


class LogVerifier:
    """Checks a log record by record, in log order within each partition:
    every record decodes (old versions through their upcasters) and is an event;
    each aggregate's state-changing events (all but `command.rejected`) have versions 1, 2, 3, ... in order;
    each command id has exactly one decision, the contiguous run of its events in one partition.
    A record equal, byte for byte, to one of the last REPEAT_WINDOW of its partition is a producer's retry stored
    twice (Tansu has no idempotent producer; every fold and projection skips an event it has applied): counted as a
    repeat, not checked again. The same event id with other bytes is a problem."""

    REPEAT_WINDOW = 1000

    def __init__(self) -> None:
        self.report = LogReport()
        self._recent: dict[int, dict[str, bytes]] = {}  # per partition: event id -> its record, the newest few
        self._versions: dict[tuple[str, str], int] = {}
        self._last_run: dict[int, _Run] = {}
        self._decided: dict[str, _Run] = {}

    def add(self, partition: int, offset: int, value: bytes | None) -> None:
        self.report.records += 1
        where = f"{partition}:{offset}"
        try:
            event = decode(value)
        except MessageDecodeError as exc:
            self.report.problems.append(f"{where}: does not decode: {exc}")
            return
        meta = registry.lookup(event.type, event.schema_version)
        if meta is None or meta.kind is not MessageKind.EVENT:
            self.report.problems.append(f"{where}: {event.type} is not an event")
            return
        recent = self._recent.setdefault(partition, {})
        seen = recent.get(event.id)
        if seen is not None:
            if seen == value:
                self.report.repeats += 1
            else:
                self.report.problems.append(f"{where}: event {event.id} again, with other content")
            return
        recent[event.id] = value or b""
        if len(recent) > self.REPEAT_WINDOW:
            del recent[next(iter(recent))]
        self.report.events += 1
        self._decision(partition, offset, event.command_id)
        if not isinstance(event.payload, CommandRejected):
            self._version(where, (event.aggregate_type, event.aggregate_id), event.aggregate_version)

    def _decision(self, partition: int, offset: int, command_id: str) -> None:
        last = self._last_run.get(partition)
        if last is not None and last.command_id == command_id:
            return
        run = _Run(command_id, partition, offset)
        self._last_run[partition] = run
        first = self._decided.get(command_id)
        if first is not None:
            self.report.problems.append(
                f"{partition}:{offset}: command {command_id} has a second decision "
                f"(its first began at {first.partition}:{first.offset})"
            )
            return
        self._decided[command_id] = run
        self.report.decisions += 1

    def _version(self, where: str, aggregate: tuple[str, str], version: int | None) -> None:
        name = "/".join(aggregate)
        previous = self._versions.get(aggregate, 0)
        if aggregate not in self._versions:
            self.report.aggregates += 1
        if version is None:
            self.report.problems.append(f"{where}: {name}: an event without aggregate_version")
            return
        if version == previous + 1:
            pass
        elif version <= previous:
            self.report.problems.append(f"{where}: {name}: version {version} again after version {previous}")
        else:
            missing = f"version {previous + 1}" if version == previous + 2 else f"versions {previous + 1}-{version - 1}"
            self.report.problems.append(f"{where}: {name}: version {version} follows {previous}: {missing} missing")
        self._versions[aggregate] = max(previous, version)


async def verify(settings: Settings, topic: str) -> LogReport:
    """Read `topic` from offset 0 to its end as it is now and check it (see `LogVerifier`)."""
    consumer, partitions = await _open(settings, topic)
    verifier = LogVerifier()

    def check(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            verifier.add(tp.partition, record.offset, record.value)

    try:
        await consumer.seek_to_beginning(*partitions)
        await read_to_end(consumer, partitions, check, fetch_max_wait_ms=settings.kafka_bulk_fetch_max_wait_ms)
        return verifier.report
    finally:
        await stop_quietly(consumer)


# --- schema -----------------------------------------------------------------------------------


def schema_text() -> str:
    """The published JSON Schema of every message type and version (also `GET /v2/events/schema`)."""
    return json.dumps(document(), indent=2) + "\n"
