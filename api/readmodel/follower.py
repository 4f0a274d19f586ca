"""Keeps the read model following `loraplane.events` and wakes the requests waiting on outcomes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from api.readmodel.projector import EventRecord, Projector
from infra.kafka import make_bulk_consumer, make_consumer, stop_quietly
from infra.settings import Settings
from streams.topics import EVENTS

log = logging.getLogger(__name__)


async def open_event_log(
    settings: Settings, projector: Projector, *, bulk: bool = False
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A consumer on every partition of the event log, positioned where the read model stopped."""
    consumer = make_bulk_consumer(settings) if bulk else make_consumer(settings, max_poll_records=2000)
    await consumer.start()
    partitions = consumer.partitions_for_topic(EVENTS.name)
    if not partitions:
        await consumer.stop()
        raise RuntimeError(f"topic {EVENTS.name} does not exist")
    assigned = [TopicPartition(EVENTS.name, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    stored = await projector.offsets(EVENTS.name)
    for tp in assigned:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            await consumer.seek_to_beginning(tp)
    return consumer, assigned


def to_records(batches: dict[TopicPartition, list[ConsumerRecord[Any, Any]]]) -> list[EventRecord]:
    return [
        EventRecord(tp.topic, tp.partition, record.offset, record.value)
        for tp, records in batches.items()
        for record in records
    ]


class ReadModelFollower:
    def __init__(self, settings: Settings, projector: Projector, on_projected: Callable[[list[str]], None]) -> None:
        self._settings = settings
        self._projector = projector
        self._on_projected = on_projected
        self._task: asyncio.Task[None] | None = None
        self.healthy = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="read-model-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                consumer, _ = await open_event_log(self._settings, self._projector)
            except Exception as exc:
                self.healthy = False
                log.warning("read model cannot open the event log (%s); retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            try:
                while True:
                    batches = await consumer.getmany(timeout_ms=1000)
                    command_ids = await self._projector.apply(to_records(batches))
                    self.healthy = True
                    if command_ids:
                        self._on_projected(command_ids)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.healthy = False
                log.exception("read model follower failed; reopening the event log")
                await asyncio.sleep(1.0)
            finally:
                await stop_quietly(consumer)
