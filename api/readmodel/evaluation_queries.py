"""Reads of evaluations, against the read model only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.tables import evaluations
from streams.evaluations import EvaluationStatus

Row = dict[str, Any]


async def get_evaluation(engine: AsyncEngine, evaluation_id: str) -> Row | None:
    async with engine.connect() as conn:
        statement = select(evaluations).where(evaluations.c.evaluation_id == evaluation_id)
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def list_evaluations(
    engine: AsyncEngine, *, offset: int, limit: int, status: str | None = None
) -> tuple[list[Row], int]:
    """A page of runs, newest first, and how many there are."""
    where = [evaluations.c.status == status] if status else []
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(evaluations).where(*where))
        rows = await conn.execute(
            select(evaluations)
            .where(*where)
            .order_by(evaluations.c.created_at.desc(), evaluations.c.evaluation_id)
            .offset(offset)
            .limit(limit)
        )
        return [dict(r) for r in rows.mappings()], total or 0


async def running_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        statement = select(func.count()).select_from(evaluations)
        return int(await conn.scalar(statement.where(evaluations.c.status == EvaluationStatus.RUNNING.value)) or 0)
