"""How each event changes the read model's rows. One function per event type, all idempotent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Insert, insert, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from api.readmodel.deployment_projections import DEPLOYMENT_PROJECTIONS
from api.readmodel.evaluation_projections import EVALUATION_PROJECTIONS
from api.readmodel.registry_projections import REGISTRY_PROJECTIONS
from api.readmodel.rows import Rows, execute_many
from api.readmodel.tables import api_keys, command_outcomes, owners, workspaces
from api.readmodel.usage_projections import USAGE_PROJECTIONS
from streams.api_keys import ApiKeyCreated, ApiKeyRevoked
from streams.envelope import Envelope
from streams.outcomes import CommandRejected
from streams.ownership import CREATED_BY, ENDED_BY, owner_after
from streams.usage import AGGREGATE as USAGE
from streams.workspaces import WorkspaceCreated, WorkspaceDeleted

Projection = Callable[[Rows, Envelope], None]


def _workspace_created(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, WorkspaceCreated)
    rows.put(
        workspaces,
        {
            "name": payload.name,
            "description": payload.description,
            "version": event.aggregate_version,
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            "creator_type": event.actor.type.value,
            "creator_id": event.actor.id,
            "creator_name": event.actor.name,
        },
    )


def _workspace_deleted(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, WorkspaceDeleted)
    rows.delete(workspaces, (payload.name,))


def _api_key_created(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, ApiKeyCreated)
    rows.put(
        api_keys,
        {
            "key_id": payload.key_id,
            "name": payload.name,
            "role": payload.role.value,
            "team": payload.team,
            "key_hash": payload.key_hash,
            "version": event.aggregate_version,
            "created_at": event.occurred_at,
            "revoked": False,
            "creator_id": event.actor.id,
            "creator_name": event.actor.name,
        },
    )


def _api_key_revoked(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, ApiKeyRevoked)
    rows.update(api_keys, (payload.key_id,), {"revoked": True, "version": event.aggregate_version})


PROJECTIONS: dict[str, Projection] = {
    "workspace.created": _workspace_created,
    "workspace.deleted": _workspace_deleted,
    "api_key.created": _api_key_created,
    "api_key.revoked": _api_key_revoked,
    **REGISTRY_PROJECTIONS,
    **DEPLOYMENT_PROJECTIONS,
    **USAGE_PROJECTIONS,
    **EVALUATION_PROJECTIONS,
}
# Event types that change who owns an aggregate (project_owner).
OWNERSHIP_EVENTS = CREATED_BY | ENDED_BY


def changes_owner(event: Envelope) -> bool:
    """Whether `project_owner` has anything to do for `event` (usage rows carry their team themselves)."""
    return event.type in OWNERSHIP_EVENTS and event.aggregate_type != USAGE


def project_owners(rows: Rows, events: list[Envelope]) -> None:
    """The `owners` rows of `events` (each one `changes_owner`), in their order. Only these events touch `owners`, so
    a batch may fold them after its other projections, reading the rows they need with a few statements."""
    rows.prefetch(owners, [(event.aggregate_type, event.aggregate_id) for event in events])
    for event in events:
        project_owner(rows, event)


def project_owner(rows: Rows, event: Envelope) -> None:
    """The `owners` row of the event's aggregate, as streams.ownership.owner_after folds it."""
    key = (event.aggregate_type, event.aggregate_id)
    row = rows.get(owners, key)
    current = row["team"] if row is not None else None
    after = owner_after(current, event)
    if after == current:
        return
    if after is None:
        rows.delete(owners, key)
    else:
        shared = bool(getattr(event.payload, "shared", False))
        rows.put(
            owners,
            {
                "aggregate_type": event.aggregate_type,
                "aggregate_id": event.aggregate_id,
                "team": after,
                "shared": shared,
            },
        )


def outcome_row(event: Envelope) -> dict[str, Any]:
    """The row `command_outcomes` keeps for the command `event` answers, if it is the command's first event."""
    rejection = event.payload if isinstance(event.payload, CommandRejected) else None
    return {
        "command_id": event.command_id,
        "team": event.actor.team,
        "status": "rejected" if rejection else "succeeded",
        "event_type": event.type,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "code": rejection.code.value if rejection else None,
        "reason": rejection.reason if rejection else None,
        "field": rejection.field if rejection else None,
        "occurred_at": event.occurred_at,
    }


def record_outcomes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """The first event of a command is its outcome; later ones (and redeliveries) change nothing. `rows` hold one
    row per command, from its first event in the batch, so a row already stored is the only conflict."""
    if not rows:
        return
    statement: Insert
    if conn.dialect.name == "sqlite":
        statement = _SQLITE_NEW_OUTCOMES
    elif conn.dialect.name == "postgresql":
        statement = _POSTGRESQL_NEW_OUTCOMES
    else:
        stored = select(command_outcomes.c.command_id).where(
            command_outcomes.c.command_id.in_([row["command_id"] for row in rows])
        )
        known = set(conn.scalars(stored))
        rows = [row for row in rows if row["command_id"] not in known]
        if not rows:
            return
        statement = insert(command_outcomes)
    execute_many(conn, statement, rows)


_SQLITE_NEW_OUTCOMES = sqlite_insert(command_outcomes).on_conflict_do_nothing(index_elements=["command_id"])
_POSTGRESQL_NEW_OUTCOMES = postgresql_insert(command_outcomes).on_conflict_do_nothing(index_elements=["command_id"])
