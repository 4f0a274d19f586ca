"""Reads the event log from the start and keeps the agents' state caught up with it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from agents.state import AgentState
from infra.kafka import make_consumer, read_from_start, stop_quietly
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

    def __init__(self, settings: Settings, state: AgentState) -> None:
        self._settings = settings
        self.state = state
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []
        self._published: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        started = time.perf_counter()
        positions = await read_from_start(self._settings, EVENTS, self._fold)
        self._partitions = list(positions)
        # From here on, a short fetch wait: catch-ups sit on the path of every decision.
        consumer = make_consumer(self._settings)
        await consumer.start()
        consumer.assign(self._partitions)
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        self._consumer = consumer
        log.info(
            "event log folded in: %d events, %d aggregates in %.1fs",
            sum(positions.values()),
            len(self.state.entries),
            time.perf_counter() - started,
        )

    async def positions(self) -> dict[TopicPartition, int]:
        """Where the folded state ends in each partition."""
        consumer = self._consumer
        assert consumer is not None, "start() first"
        return {tp: await consumer.position(tp) for tp in self._partitions}

    async def stop(self) -> None:
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
            return
        self._published[tp] = max(self._published.get(tp, 0), first_offset + len(events))

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
