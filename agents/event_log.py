"""Reads the event log from the start and keeps the agents' state caught up with it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agents import snapshots
from agents.snapshots import Snapshot
from agents.snapshotting import Snapshotter
from agents.state import AgentState
from infra.kafka import PositionsBeyondLog, make_consumer, read_from_start, stop_quietly
from infra.settings import Settings
from streams.envelope import Envelope
from streams.serialization import MessageDecodeError, decode
from streams.topics import EVENTS

log = logging.getLogger(__name__)


class EventLogFollower:
    """Folds every event of `loraplane.events` into an AgentState, on demand.

    `start()` reads the whole log to its end. After that, `catch_up()` reads up to the high
    watermark the background fetcher last saw and past every event this process published itself.
    Events of an aggregate are written only by the worker that owns its command partition, so this
    is every event a decision depends on. (No ListOffsets here: on Tansu it costs ~30 ms and its
    answer can lag behind the log.)
    """

    def __init__(self, settings: Settings, state: AgentState, snapshots_as: str | None = None) -> None:
        self._settings = settings
        self.state = state
        # Snapshots of the state under `snapshots/<snapshots_as>/` (agents.snapshotting); None: always fold from 0.
        self.snapshots = Snapshotter.for_settings(settings, snapshots_as)
        self.snapshot_loaded: Snapshot | None = None
        self.tail_folded = 0  # events start() folded (after the snapshot it loaded, if any)
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._published: dict[TopicPartition, int] = {}
        self._folded = 0

    async def start(self) -> None:
        """Load the newest valid snapshot, if any, and fold the log from its positions (else from offset 0) to its
        end; write a snapshot when that tail was long."""
        started = time.perf_counter()
        self.state.handled_commands.window_s = self._settings.handled_commands_window_s
        positions = await self._fold_from_snapshot()
        if positions is None:
            positions = await read_from_start(self._settings, EVENTS, self._fold)
        self.tail_folded = self._folded
        self._partitions = list(positions)
        # From here on, a short fetch wait: catch-ups sit on the path of every decision.
        consumer = make_consumer(self._settings)
        await consumer.start()
        consumer.assign(self._partitions)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        self._consumer = consumer
        log.info(
            "event log folded in: %d events (%d after %s), %d aggregates in %.1fs",
            sum(positions.values()),
            self.tail_folded,
            "snapshot at " + str(self.snapshot_loaded.total_offset) if self.snapshot_loaded else "offset 0",
            len(self.state.entries),
            time.perf_counter() - started,
        )
        if self.snapshots is not None and self.tail_folded >= self.snapshots.every:
            self.snapshots.write_soon(
                snapshots.capture(self.state, {tp.partition: o for tp, o in positions.items()}, self.snapshots.who)
            )

    async def _fold_from_snapshot(self) -> dict[TopicPartition, int] | None:
        """Restore the newest valid snapshot and fold the tail after it: the positions reached, or None (state
        untouched) when there is no usable snapshot."""
        if self.snapshots is None:
            return None
        snapshot = await self.snapshots.newest(self.state.aggregates, self.state.handled_commands.window_s)
        if snapshot is None:
            return None
        snapshots.restore_into(self.state, snapshot.state)
        try:
            positions = await read_from_start(self._settings, EVENTS, self._fold, start_at=snapshot.positions)
        except PositionsBeyondLog as exc:
            log.warning("snapshot at offset %d ignored, the log does not reach it: %s", snapshot.total_offset, exc)
            snapshots.reset(self.state)
            self._folded = 0
            return None
        self.snapshot_loaded = snapshot
        return positions

    async def positions(self) -> dict[TopicPartition, int]:
        """Where the folded state ends in each partition."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        return {tp: await consumer.position(tp) for tp in self._partitions}

    async def stop(self) -> None:
        if self.snapshots is not None:
            await self.snapshots.idle()
        if self._consumer is not None:
            await stop_quietly(self._consumer)
            self._consumer = None

    async def published(self, partition: int, first_offset: int, events: Sequence[Envelope]) -> None:
        """Take in events this process wrote as one batch, from `first_offset` of `partition` on: fold them in now
        (folding is idempotent, so reading them back later changes nothing), and when nothing unread precedes
        them, skip them in the log rather than read them back."""
        for event in events:
            self.state.apply(event)
        tp = TopicPartition(EVENTS.name, partition)
        consumer = self._consumer
        if consumer is not None and await consumer.position(tp) == first_offset:
            consumer.seek(tp, first_offset + len(events))
        else:
            self._published[tp] = max(self._published.get(tp, 0), first_offset + len(events))
        # A worker folds most of its events here, its own: they count towards the next snapshot too.
        if self.snapshots is not None and consumer is not None and self.snapshots.counted(len(events)):
            self.snapshots.write_following(self.state, consumer, self._partitions, self._published)

    async def catch_up(self) -> None:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        targets = {tp: max(consumer.highwater(tp) or 0, self._published.get(tp, 0)) for tp in self._partitions}
        behind = {tp for tp in self._partitions if await consumer.position(tp) < targets[tp]}
        while behind:
            batches = await consumer.getmany(*behind, timeout_ms=1000)
            for tp, records in batches.items():
                self._fold(tp, records)
            behind = {tp for tp in behind if await consumer.position(tp) < targets[tp]}

    async def read_more(self, timeout_s: float) -> int:
        """Fold whatever arrives next, returning as soon as something does (or after `timeout_s`): for a process
        that follows the log rather than deciding over it (the node agent). The number of records read."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        batches = await consumer.getmany(*self._partitions, timeout_ms=int(timeout_s * 1000))
        for tp, records in batches.items():
            self._fold(tp, records)
        return sum(len(records) for records in batches.values())

    def _fold(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            try:
                self.state.apply(decode(record.value))
            except MessageDecodeError as exc:
                log.error("unreadable event at %s:%d: %s", tp, record.offset, exc)
        self._folded += len(records)
        if self.snapshots is not None and self._consumer is not None and self.snapshots.counted(len(records)):
            self.snapshots.write_following(self.state, self._consumer, self._partitions, self._published)
