"""How `usage.recorded` changes the read model: one row per reported row, replaced if the event comes again."""

from __future__ import annotations

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from api.readmodel.tables import usage_rows
from streams.envelope import Envelope
from streams.usage import UsageRecorded


async def _usage_recorded(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, UsageRecorded)
    await conn.execute(delete(usage_rows).where(usage_rows.c.event_id == event.id))
    await conn.execute(
        insert(usage_rows),
        [
            {
                "event_id": event.id,
                "row": index,
                "minute": row.minute,
                "api_key_id": payload.api_key_id,
                "model": row.model,
                "base_model": row.base_model,
                "requests": row.requests,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "gateway_id": payload.gateway_id,
            }
            for index, row in enumerate(payload.rows)
        ],
    )


USAGE_PROJECTIONS = {"usage.recorded": _usage_recorded}
