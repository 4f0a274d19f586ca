"""Applies events to the read model, exactly once per offset, offsets stored with the rows."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.projections import PROJECTIONS, record_outcome
from api.readmodel.tables import projection_offsets
from streams.serialization import MessageDecodeError, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


class Projector:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def offsets(self, topic: str) -> dict[int, int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(projection_offsets.c.partition, projection_offsets.c.next_offset).where(
                    projection_offsets.c.topic == topic
                )
            )
            return {partition: next_offset for partition, next_offset in rows}

    async def apply(self, records: Sequence[EventRecord]) -> list[str]:
        """Project a batch in one transaction; returns the command ids whose outcome it recorded."""
        if not records:
            return []
        command_ids: list[str] = []
        async with self.engine.begin() as conn:
            stored = {
                (topic, partition): next_offset
                for topic, partition, next_offset in await conn.execute(select(projection_offsets))
            }
            known = set(stored)
            positions = dict(stored)
            for record in records:
                key = (record.topic, record.partition)
                if record.offset < positions.get(key, 0):
                    continue  # already applied: a redelivery
                positions[key] = record.offset + 1
                try:
                    event = decode(record.value)
                except MessageDecodeError as exc:
                    log.error("skipping unreadable event at %s:%d: %s", *key, record.offset, exc)
                    continue
                projection = PROJECTIONS.get(event.type)
                if projection is not None:
                    await projection(conn, event)
                await record_outcome(conn, event)
                command_ids.append(event.command_id)
            for (topic, partition), next_offset in positions.items():
                if (topic, partition) in known:
                    if stored[(topic, partition)] != next_offset:
                        await conn.execute(
                            update(projection_offsets)
                            .where(projection_offsets.c.topic == topic, projection_offsets.c.partition == partition)
                            .values(next_offset=next_offset)
                        )
                else:
                    await conn.execute(
                        insert(projection_offsets).values(topic=topic, partition=partition, next_offset=next_offset)
                    )
        return command_ids
