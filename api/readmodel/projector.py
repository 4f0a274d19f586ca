"""Applies events to the read model, exactly once per offset, offsets stored with the rows."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.database import sqlite_writer
from api.readmodel.projections import PROJECTIONS, changes_owner, outcome_row, project_owners, record_outcomes
from api.readmodel.rows import Rows
from api.readmodel.tables import projection_offsets
from streams.envelope import Envelope
from streams.serialization import MessageDecodeError, decode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventRecord:
    topic: str
    partition: int
    offset: int
    value: bytes | None


class Projector:
    """`bulk`: a rebuild into a fresh database (replay), where speed beats durability: a replay cut short is rerun.

    On SQLite a batch is projected in one worker thread over a plain (synchronous) connection: through the async
    driver every statement would be a round trip between threads, which costs more than the statement.
    """

    def __init__(self, engine: AsyncEngine, *, bulk: bool = False) -> None:
        self.engine = engine
        self._writer: Engine | None = sqlite_writer(engine, bulk=bulk)

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
        if self._writer is not None:
            return await asyncio.to_thread(self._apply_on, self._writer, records)
        async with self.engine.begin() as conn:
            return await conn.run_sync(_apply, records)

    @staticmethod
    def _apply_on(writer: Engine, records: Sequence[EventRecord]) -> list[str]:
        with writer.begin() as conn:
            return _apply(conn, records)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.dispose()


# Any number of API processes may project into one database. Each batch first takes this lock (PostgreSQL; SQLite's
# writer begins its transactions IMMEDIATE, which does the same), so one process applies an offset and the others,
# reading the stored offsets after it committed, skip it.
_PROJECTION_LOCK = 0x6C6F7261  # "lora"


def _apply(conn: Connection, records: Sequence[EventRecord]) -> list[str]:
    """Project what is new in `records`; the command ids of every event in them, applied here or by another process
    before (its waiters in this process wake all the same)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PROJECTION_LOCK})
    command_ids: list[str] = []
    stored = {
        (topic, partition): next_offset for topic, partition, next_offset in conn.execute(select(projection_offsets))
    }
    positions = dict(stored)
    rows = Rows(conn)
    owned: list[Envelope] = []
    outcomes: dict[str, dict[str, Any]] = {}
    for record in records:
        key = (record.topic, record.partition)
        if record.offset < positions.get(key, 0):
            # Applied already: a redelivery, or another API process projected it first.
            if (command_id := _command_id(record.value)) is not None:
                command_ids.append(command_id)
            continue
        positions[key] = record.offset + 1
        try:
            event = decode(record.value)
        except MessageDecodeError as exc:
            log.error("skipping unreadable event at %s:%d: %s", *key, record.offset, exc)
            continue
        # Each envelope is dropped once projected: a batch's thousands of them kept alive cost twice their decoding.
        if changes_owner(event):
            owned.append(event)
        if (projection := PROJECTIONS.get(event.type)) is not None:
            projection(rows, event)
        if event.command_id not in outcomes:
            outcomes[event.command_id] = outcome_row(event)
        command_ids.append(event.command_id)
    project_owners(rows, owned)
    rows.flush()
    record_outcomes(conn, list(outcomes.values()))
    for (topic, partition), next_offset in positions.items():
        if (topic, partition) in stored:
            if stored[(topic, partition)] != next_offset:
                conn.execute(
                    update(projection_offsets)
                    .where(projection_offsets.c.topic == topic, projection_offsets.c.partition == partition)
                    .values(next_offset=next_offset)
                )
        else:
            conn.execute(insert(projection_offsets).values(topic=topic, partition=partition, next_offset=next_offset))
    return command_ids


def _command_id(value: bytes | None) -> str | None:
    try:
        found = json.loads(value or b"null").get("command_id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None
