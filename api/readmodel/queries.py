"""Every read the API does, against the read model only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.tables import api_keys, command_outcomes, workspaces

Row = dict[str, Any]


async def _one(engine: AsyncEngine, statement: Any) -> Row | None:
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def get_outcome(engine: AsyncEngine, command_id: str) -> Row | None:
    return await _one(engine, select(command_outcomes).where(command_outcomes.c.command_id == command_id))


async def get_workspace(engine: AsyncEngine, name: str) -> Row | None:
    return await _one(engine, select(workspaces).where(workspaces.c.name == name))


async def list_workspaces(engine: AsyncEngine, *, offset: int, limit: int) -> tuple[list[Row], int]:
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(workspaces)) or 0
        rows = await conn.execute(
            select(workspaces).order_by(workspaces.c.created_at, workspaces.c.name).offset(offset).limit(limit)
        )
        return [dict(r) for r in rows.mappings()], total


async def get_api_key(engine: AsyncEngine, key_id: str) -> Row | None:
    return await _one(engine, select(api_keys).where(api_keys.c.key_id == key_id))


async def list_api_keys(engine: AsyncEngine) -> list[Row]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(api_keys).order_by(api_keys.c.created_at))
        return [dict(r) for r in rows.mappings()]
