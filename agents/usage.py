"""Usage the inference gateways report (streams.usage): recorded as reported, once per command.

There is nothing to decide beyond the rows' shape (the contract checks it): the event is the record, and the read
model sums it. The state is the number of batches recorded, so each event advances the aggregate's version.
"""

from __future__ import annotations

from collections.abc import Sequence

from agents.aggregate import Aggregate, Rejected
from streams.envelope import Envelope, Payload
from streams.outcomes import RejectionCode
from streams.usage import AGGREGATE, RecordUsage, UsageRecorded


def decide(current: int | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if not isinstance(payload, RecordUsage):
        raise Rejected(RejectionCode.INVALID, f"usage does not handle {command.type}")
    if payload.api_key_id != command.aggregate_id:
        raise Rejected(RejectionCode.INVALID, "usage is recorded under its API key's id", field="api_key_id")
    return [UsageRecorded(api_key_id=payload.api_key_id, gateway_id=payload.gateway_id, rows=payload.rows)]


def evolve(current: int | None, event: Envelope) -> int | None:
    return (current or 0) + 1 if isinstance(event.payload, UsageRecorded) else current


USAGE = Aggregate(AGGREGATE, decide, evolve, int)
