"""Rebuild a read model from offset 0 of the event log into a fresh database."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiokafka import TopicPartition

from api.readmodel.database import create_engine, create_schema
from api.readmodel.follower import open_event_log, to_records
from api.readmodel.projector import Projector
from infra.settings import Settings


@dataclass(frozen=True)
class ReplayStats:
    events: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


async def replay(
    settings: Settings, database_url: str, progress: Callable[[int, int], None] | None = None
) -> ReplayStats:
    """Project every event up to the log's current end; `progress(done, total)` after each batch."""
    engine = create_engine(database_url)
    try:
        await create_schema(engine)
        projector = Projector(engine)
        if await projector.offsets("loraplane.events"):
            raise RuntimeError(f"{database_url} already holds a read model; replay needs a fresh database")
        consumer, partitions = await open_event_log(settings, projector)
        try:
            ends = await consumer.end_offsets(partitions)
            total = sum(ends.values())
            done = 0
            started = time.perf_counter()
            behind = {tp for tp in partitions if ends[tp] > 0}
            while behind:
                batches = await consumer.getmany(*behind, timeout_ms=1000, max_records=5000)
                records = [r for r in to_records(batches) if r.offset < ends[TopicPartition(r.topic, r.partition)]]
                await projector.apply(records)
                done += len(records)
                if progress:
                    progress(done, total)
                behind = {tp for tp in behind if await consumer.position(tp) < ends[tp]}
            return ReplayStats(events=done, seconds=time.perf_counter() - started)
        finally:
            await consumer.stop()
    finally:
        await engine.dispose()

