"""How `usage.recorded` changes the read model: one row per reported row, replaced if the event comes again."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert

from api.readmodel.tables import usage_rows
from streams.envelope import Envelope
from streams.usage import UsageRecorded

# Built once: usage is most of a long log, and building a statement costs more than running it.
_DELETE_ROWS = delete(usage_rows).where(usage_rows.c.event_id == bindparam("k_event_id"))
_INSERT_ROWS = insert(usage_rows)


def write_usage(conn: Connection, events: list[Envelope]) -> None:
    """The rows of many `usage.recorded` at once (two statements, however many events). They may be written at the
    end of a batch, after events that came later: no other event touches usage rows, which are keyed by event id."""
    by_id = {event.id: event for event in events}  # the same event delivered twice is recorded once
    conn.execute(_DELETE_ROWS, [{"k_event_id": event_id} for event_id in by_id])
    rows = [row for event in by_id.values() for row in _rows(event)]
    if rows:
        conn.execute(_INSERT_ROWS, rows)


def _rows(event: Envelope) -> list[dict[str, Any]]:
    payload = event.payload
    assert isinstance(payload, UsageRecorded)
    return [
        {
            "event_id": event.id,
            "row": index,
            "minute": row.minute,
            "api_key_id": payload.api_key_id,
            "team": event.actor.team,
            "model": row.model,
            "base_model": row.base_model,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "gateway_id": payload.gateway_id,
        }
        for index, row in enumerate(payload.rows)
    ]


def _usage_recorded(conn: Connection, event: Envelope) -> None:
    write_usage(conn, [event])


USAGE_PROJECTIONS = {"usage.recorded": _usage_recorded}
# Projections that may take a whole batch's events of their type at once, at the batch's end.
USAGE_BATCH_PROJECTIONS = {"usage.recorded": write_usage}
