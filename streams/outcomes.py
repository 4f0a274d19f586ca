"""The event every agent emits when it refuses a command, whatever the aggregate."""

from __future__ import annotations

from enum import StrEnum

from streams.envelope import Payload
from streams.registry import ANY_AGGREGATE, event


class RejectionCode(StrEnum):
    CONFLICT = "conflict"
    INVALID = "invalid"
    NOT_FOUND = "not_found"


@event("command.rejected", aggregate_type=ANY_AGGREGATE)
class CommandRejected(Payload):
    command_type: str
    code: RejectionCode
    reason: str
    # The request field the rejection is about, e.g. "name", so the API can answer with a field path.
    field: str | None = None
