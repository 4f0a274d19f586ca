"""How `usage.recorded` changes the read model: one row per reported row, replaced if the event comes again."""

from __future__ import annotations

from api.readmodel.rows import Rows
from api.readmodel.tables import usage_rows
from streams.envelope import Envelope
from streams.usage import UsageRecorded


def _usage_recorded(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, UsageRecorded)
    for index, row in enumerate(payload.rows):
        rows.put(
            usage_rows,
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
            },
        )


USAGE_PROJECTIONS = {"usage.recorded": _usage_recorded}
