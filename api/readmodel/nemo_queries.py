"""Reads behind the NeMo routes (seed 002): adapters with their latest version, and fileset files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from api.readmodel.queries import owned_by
from api.readmodel.tables import ADAPTER_ID, adapter_versions, adapters, fileset_files

Row = dict[str, Any]

# An adapter row with its latest version's status, reason, spec and analysis.
_ADAPTER_WITH_LATEST = select(
    adapters,
    adapter_versions.c.status,
    adapter_versions.c.reason,
    adapter_versions.c.spec,
    adapter_versions.c.analysis,
).join(
    adapter_versions,
    and_(
        adapter_versions.c.workspace == adapters.c.workspace,
        adapter_versions.c.name == adapters.c.name,
        adapter_versions.c.version == adapters.c.latest_version,
    ),
)


async def get_adapter(engine: AsyncEngine, workspace: str, name: str, api: str | None) -> Row | None:
    """The adapter, when `api` (None: any) registered it."""
    statement = _ADAPTER_WITH_LATEST.where(adapters.c.workspace == workspace, adapters.c.name == name)
    if api is not None:
        statement = statement.where(adapters.c.api == api)
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def list_adapters(engine: AsyncEngine, workspace: str, api: str, team: str | None = None) -> list[Row]:
    """Every adapter of `workspace` registered through `api` (and owned by `team`, None: any team), oldest first
    (filters are applied by the caller)."""
    statement = _ADAPTER_WITH_LATEST.where(
        adapters.c.workspace == workspace, adapters.c.api == api, owned_by("adapter", ADAPTER_ID, team)
    ).order_by(adapters.c.created_at, adapters.c.name)
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(statement)).mappings()]


async def get_version_caused_by(engine: AsyncEngine, workspace: str, name: str, correlation_id: str) -> Row | None:
    """The version a request created (its command id is the version's correlation id)."""
    statement = select(adapter_versions).where(
        adapter_versions.c.workspace == workspace,
        adapter_versions.c.name == name,
        adapter_versions.c.correlation_id == correlation_id,
    )
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None


async def list_fileset_files(engine: AsyncEngine, workspace: str, fileset: str) -> list[Row]:
    statement = (
        select(fileset_files)
        .where(fileset_files.c.workspace == workspace, fileset_files.c.fileset == fileset)
        .order_by(fileset_files.c.path)
    )
    async with engine.connect() as conn:
        return [dict(r) for r in (await conn.execute(statement)).mappings()]


async def get_fileset_file(engine: AsyncEngine, workspace: str, fileset: str, path: str) -> Row | None:
    statement = select(fileset_files).where(
        fileset_files.c.workspace == workspace, fileset_files.c.fileset == fileset, fileset_files.c.path == path
    )
    async with engine.connect() as conn:
        row = (await conn.execute(statement)).mappings().first()
        return dict(row) if row else None
