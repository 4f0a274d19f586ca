"""Reads of the gateway's usage rows, against the read model only."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.tables import usage_rows
from api.usage.buckets import UsageRecord


async def usage_records(
    engine: AsyncEngine, start: int, end: int, api_key_id: str | None, team: str | None = None
) -> list[UsageRecord]:
    """The rows of minutes in [start, end) (Unix seconds), of one API key and of one team when they are given."""
    statement = select(usage_rows).where(
        usage_rows.c.minute >= datetime.fromtimestamp(start, UTC),
        usage_rows.c.minute < datetime.fromtimestamp(end, UTC),
    )
    if api_key_id is not None:
        statement = statement.where(usage_rows.c.api_key_id == api_key_id)
    if team is not None:
        statement = statement.where(usage_rows.c.team == team)
    async with engine.connect() as conn:
        rows = (await conn.execute(statement)).mappings().all()
    return [
        UsageRecord(
            minute=row["minute"],
            api_key_id=row["api_key_id"],
            model=row["model"],
            base_model=row["base_model"],
            requests=row["requests"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
        )
        for row in rows
    ]
