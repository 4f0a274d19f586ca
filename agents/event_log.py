"""Reads the event log from the start and keeps the agents' state caught up with it."""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.state import AgentState
from infra.kafka import make_consumer
from infra.settings import Settings
from streams.serialization import MessageDecodeError, decode
from streams.topics import EVENTS

log = logging.getLogger(__name__)


class EventLogFollower:
    """Folds every event of `loraplane.events` into an AgentState, on demand.

    `catch_up()` reads up to the log's end as it is at the time of the call, so a decision made
    right after it sees every event that was acknowledged before the command was handled.
    """

    def __init__(self, settings: Settings, state: AgentState) -> None:
        self._settings = settings
        self.state = state
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: list[TopicPartition] = []

    async def start(self) -> None:
        consumer = make_consumer(self._settings)
        await consumer.start()
        partitions = consumer.partitions_for_topic(EVENTS.name)
        if not partitions:
            await consumer.stop()
            raise RuntimeError(f"topic {EVENTS.name} does not exist (the stack creates it)")
        self._partitions = [TopicPartition(EVENTS.name, p) for p in sorted(partitions)]
        consumer.assign(self._partitions)
        await consumer.seek_to_beginning(*self._partitions)
        self._consumer = consumer
        await self.catch_up()
        log.info("event log folded in: %d aggregates", len(self.state.entries))

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def catch_up(self) -> int:
        consumer = self._consumer
        assert consumer is not None, "start() first"
        ends = await consumer.end_offsets(self._partitions)
        behind = {tp for tp in self._partitions if await consumer.position(tp) < ends[tp]}
        applied = 0
        while behind:
            batches = await consumer.getmany(*behind, timeout_ms=1000)
            for tp, records in batches.items():
                for record in records:
                    try:
                        self.state.apply(decode(record.value))
                        applied += 1
                    except MessageDecodeError as exc:
                        log.error("unreadable event at %s:%d: %s", tp, record.offset, exc)
            behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
        return applied
