"""Reads of the adapter registry (adapters and their versions), against the read model only."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.queries import owned_by
from api.readmodel.tables import ADAPTER_ID, adapter_versions, adapters
from streams.adapters import AdapterStatus

Row = dict[str, Any]


async def version_by_correlation(engine: AsyncEngine, correlation_id: str) -> Row | None:
    """The version a request caused (its command id is the version's correlation id)."""
    statement = select(adapter_versions).where(adapter_versions.c.correlation_id == correlation_id)
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


def _latest_join() -> Any:
    return adapters.join(
        adapter_versions,
        and_(
            adapter_versions.c.workspace == adapters.c.workspace,
            adapter_versions.c.name == adapters.c.name,
            adapter_versions.c.version == adapters.c.latest_version,
        ),
    )


def _latest_columns() -> list[Any]:
    """The adapter's columns, then its latest version's (prefixed `v_` where the names clash)."""
    clash = {c.name for c in adapters.columns}
    return [
        *adapters.columns,
        *(c.label(f"v_{c.name}") if c.name in clash else c for c in adapter_versions.columns),
    ]


async def get_adapter(engine: AsyncEngine, workspace: str, name: str) -> Row | None:
    """A live adapter with its latest version, or None (never registered, or deleted)."""
    statement = (
        select(*_latest_columns())
        .select_from(_latest_join())
        .where(adapters.c.workspace == workspace, adapters.c.name == name)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def list_adapters(
    engine: AsyncEngine, workspace: str, *, offset: int, limit: int, team: str | None = None
) -> tuple[list[Row], int]:
    """A page of `workspace`'s adapters owned by `team` (None: any team), and how many there are."""
    scoped = (adapters.c.workspace == workspace, owned_by("adapter", ADAPTER_ID, team))
    async with engine.connect() as conn:
        total = await conn.scalar(select(func.count()).select_from(adapters).where(*scoped))
        rows = await conn.execute(
            select(*_latest_columns())
            .select_from(_latest_join())
            .where(*scoped)
            .order_by(adapters.c.created_at, adapters.c.name)
            .offset(offset)
            .limit(limit)
        )
        return [dict(r) for r in rows.mappings()], total or 0


async def ready_version(engine: AsyncEngine, workspace: str, name: str, version: int | None = None) -> Row | None:
    """The adapter's newest stored (ready) version, or the given one if it is ready; None when there is none."""
    statement = (
        select(adapter_versions)
        .join(
            adapters,
            and_(adapters.c.workspace == adapter_versions.c.workspace, adapters.c.name == adapter_versions.c.name),
        )
        .where(
            adapter_versions.c.workspace == workspace,
            adapter_versions.c.name == name,
            adapter_versions.c.status == AdapterStatus.READY.value,
        )
        .order_by(adapter_versions.c.version.desc())
    )
    if version is not None:
        statement = statement.where(adapter_versions.c.version == version)
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None
