"""Rebuild a read model from offset 0 of the event log into a fresh database."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.database import create_engine, create_schema
from api.readmodel.follower import open_event_log, to_records
from api.readmodel.projector import Projector
from infra.kafka import read_to_end, stop_quietly
from infra.settings import Settings
from streams.topics import EVENTS


@dataclass(frozen=True)
class ReplayStats:
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A replay allocates thousands of short-lived objects per batch (envelopes, rows, parameters). At the default
    threshold the cyclic GC runs every 700 of them and, now and then, walks every object alive, the modules' included:
    a fifth of a replay's time. What is alive when it starts lives as long as the process (frozen: never walked), and
    collections run 100 times less often; the batches' garbage is freed all the same, mostly by reference counts."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(70_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


async def replay(
    settings: Settings, database_url: str, progress: Callable[[int, int], None] | None = None
) -> ReplayStats:
    """Project every event up to the log's current end; `progress(done, estimated_total)` per batch."""
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        with _fewer_collections():
            return await _replay(settings, engine, database_url, progress)
    finally:
        await engine.dispose()


async def _replay(
    settings: Settings, engine: AsyncEngine, database_url: str, progress: Callable[[int, int], None] | None
) -> ReplayStats:
    projector = Projector(engine, bulk=True)
    if await projector.offsets(EVENTS.name):
        raise RuntimeError(f"{database_url} already holds a read model; replay needs a fresh database")
    consumer, partitions = await open_event_log(settings, projector, bulk=True)
    try:
        # Only an estimate for the progress bar: the broker's reported end can lag (see read_to_end).
        total = sum((await consumer.end_offsets(partitions)).values())
        done = 0
        started = time.perf_counter()

        async def project(tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
            nonlocal done, total
            await projector.apply(to_records({tp: records}))
            done += len(records)
            total = max(total, done)
            if progress:
                progress(done, total)

        await read_to_end(
            consumer, partitions, project, fetch_max_wait_ms=settings.kafka_bulk_fetch_max_wait_ms, max_records=5000
        )
        return ReplayStats(events=done, seconds=time.perf_counter() - started)
    finally:
        await stop_quietly(consumer)
        projector.close()
