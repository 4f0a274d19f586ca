"""Every read the API does, against the read model only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, false, func, or_, select, true
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.tables import api_keys, command_outcomes, owners, workspaces

Row = dict[str, Any]
COMMAND = "command"  # not an aggregate: a command's outcome belongs to the team that sent it


async def _one(engine: AsyncEngine, statement: Any) -> Row | None:
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def get_outcome(engine: AsyncEngine, command_id: str) -> Row | None:
    return await _one(engine, select(command_outcomes).where(command_outcomes.c.command_id == command_id))


async def get_workspace(engine: AsyncEngine, name: str) -> Row | None:
    return await _one(engine, select(workspaces).where(workspaces.c.name == name))


async def list_workspaces(
    engine: AsyncEngine, *, offset: int, limit: int, team: str | None = None
) -> tuple[list[Row], int]:
    scoped = owned_by("workspace", workspaces.c.name, team)
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(workspaces).where(scoped)) or 0
        rows = await conn.execute(
            select(workspaces)
            .where(scoped)
            .order_by(workspaces.c.created_at, workspaces.c.name)
            .offset(offset)
            .limit(limit)
        )
        return [dict(r) for r in rows.mappings()], total


async def get_api_key(engine: AsyncEngine, key_id: str) -> Row | None:
    return await _one(engine, select(api_keys).where(api_keys.c.key_id == key_id))


async def list_api_keys(engine: AsyncEngine, team: str | None = None) -> list[Row]:
    statement = select(api_keys).order_by(api_keys.c.created_at)
    if team is not None:
        statement = statement.where(api_keys.c.team == team)
    async with engine.connect() as conn:
        rows = await conn.execute(statement)
        return [dict(r) for r in rows.mappings()]


async def owner(engine: AsyncEngine, aggregate_type: str, aggregate_id: str) -> tuple[str, bool] | None:
    """(the team that owns an aggregate (streams.ownership), whether it is shared), None for one nobody owns (or
    that does not exist)."""
    statement: Any
    if aggregate_type == COMMAND:
        statement = select(command_outcomes.c.team, false()).where(command_outcomes.c.command_id == aggregate_id)
    else:
        statement = select(owners.c.team, owners.c.shared).where(
            owners.c.aggregate_type == aggregate_type, owners.c.aggregate_id == aggregate_id
        )
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).first()
        return (row[0], bool(row[1])) if row else None


async def owned_among(engine: AsyncEngine, aggregate_type: str, aggregate_ids: list[str], team: str) -> set[str]:
    """Which of `aggregate_ids` `team` owns."""
    if not aggregate_ids:
        return set()
    statement = select(owners.c.aggregate_id).where(
        owners.c.aggregate_type == aggregate_type, owners.c.aggregate_id.in_(aggregate_ids), owners.c.team == team
    )
    async with engine.connect() as conn:
        return set((await conn.scalars(statement)).all())


def owned_by(
    aggregate_type: str, aggregate_id: ColumnElement[str], team: str | None, *, shared_too: bool = False
) -> ColumnElement[bool]:
    """A WHERE clause keeping the rows whose aggregate (`aggregate_id`, a column expression) `team` owns (or, with
    `shared_too`, any team shares); every row for None (an admin's list without a team)."""
    if team is None:
        return true()
    whose = owners.c.team == team
    return aggregate_id.in_(
        select(owners.c.aggregate_id).where(
            owners.c.aggregate_type == aggregate_type, or_(whose, owners.c.shared) if shared_too else whose
        )
    )
