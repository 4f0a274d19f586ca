"""Reads behind seed 004's file API: `lora_files` and `lora_bin`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.tables import lora_bin, lora_files

Row = dict[str, Any]
STORED = "stored"


async def _one(engine: AsyncEngine, statement: Any) -> Row | None:
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def file_of_command(engine: AsyncEngine, command_id: str) -> Row | None:
    """The file an upload command reserved (the API's command id is the events' correlation id)."""
    return await _one(engine, select(lora_files).where(lora_files.c.correlation_id == command_id))


async def get_file(engine: AsyncEngine, partial_path: str) -> Row | None:
    return await _one(engine, select(lora_files).where(lora_files.c.partial_path == partial_path))


async def binned_by_command(engine: AsyncEngine, command_id: str) -> Row | None:
    """The bin entry a delete made (its events carry the delete's command id as correlation id)."""
    return await _one(engine, select(lora_bin).where(lora_bin.c.correlation_id == command_id))


async def list_stored(
    engine: AsyncEngine, *, entity_type: str | None, offset: int, limit: int, team: str | None = None
) -> tuple[list[Row], int]:
    where = [lora_files.c.status == STORED]
    if entity_type is not None:
        where.append(lora_files.c.entity_type == entity_type)
    if team is not None:
        where.append(lora_files.c.team == team)
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(lora_files).where(*where)) or 0
        rows = await conn.execute(
            select(lora_files)
            .where(*where)
            .order_by(lora_files.c.uploaded_at, lora_files.c.partial_path)
            .offset(offset)
            .limit(limit)
        )
        return [dict(r) for r in rows.mappings()], total
