"""How each event changes the read model's rows. One function per event type, all idempotent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import delete, insert, update
from sqlalchemy.ext.asyncio import AsyncConnection

from api.readmodel.deployment_projections import DEPLOYMENT_PROJECTIONS
from api.readmodel.registry_projections import REGISTRY_PROJECTIONS
from api.readmodel.tables import api_keys, command_outcomes, workspaces
from api.readmodel.usage_projections import USAGE_PROJECTIONS
from streams.api_keys import ApiKeyCreated, ApiKeyRevoked
from streams.envelope import Envelope
from streams.outcomes import CommandRejected
from streams.workspaces import WorkspaceCreated, WorkspaceDeleted

Projection = Callable[[AsyncConnection, Envelope], Awaitable[None]]


async def _workspace_created(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, WorkspaceCreated)
    await conn.execute(delete(workspaces).where(workspaces.c.name == payload.name))
    await conn.execute(
        insert(workspaces).values(
            name=payload.name,
            description=payload.description,
            version=event.aggregate_version,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            creator_type=event.actor.type.value,
            creator_id=event.actor.id,
            creator_name=event.actor.name,
        )
    )


async def _workspace_deleted(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, WorkspaceDeleted)
    await conn.execute(delete(workspaces).where(workspaces.c.name == payload.name))


async def _api_key_created(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, ApiKeyCreated)
    await conn.execute(delete(api_keys).where(api_keys.c.key_id == payload.key_id))
    await conn.execute(
        insert(api_keys).values(
            key_id=payload.key_id,
            name=payload.name,
            role=payload.role.value,
            key_hash=payload.key_hash,
            version=event.aggregate_version,
            created_at=event.occurred_at,
            revoked=False,
            creator_id=event.actor.id,
            creator_name=event.actor.name,
        )
    )


async def _api_key_revoked(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, ApiKeyRevoked)
    await conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == payload.key_id)
        .values(revoked=True, version=event.aggregate_version)
    )


PROJECTIONS: dict[str, Projection] = {
    "workspace.created": _workspace_created,
    "workspace.deleted": _workspace_deleted,
    "api_key.created": _api_key_created,
    "api_key.revoked": _api_key_revoked,
    **REGISTRY_PROJECTIONS,
    **DEPLOYMENT_PROJECTIONS,
    **USAGE_PROJECTIONS,
}


async def record_outcome(conn: AsyncConnection, event: Envelope) -> None:
    """The first event of a command is its outcome; later ones (and redeliveries) change nothing."""
    rejection = event.payload if isinstance(event.payload, CommandRejected) else None
    exists = await conn.scalar(
        command_outcomes.select()
        .with_only_columns(command_outcomes.c.command_id)
        .where(command_outcomes.c.command_id == event.command_id)
    )
    if exists:
        return
    await conn.execute(
        insert(command_outcomes).values(
            command_id=event.command_id,
            status="rejected" if rejection else "succeeded",
            event_type=event.type,
            aggregate_type=event.aggregate_type,
            aggregate_id=event.aggregate_id,
            code=rejection.code.value if rejection else None,
            reason=rejection.reason if rejection else None,
            field=rejection.field if rejection else None,
            occurred_at=event.occurred_at,
        )
    )
