"""Usage of the inference gateway: tokens per API key, model and minute, recorded in batches.

A gateway process counts what it forwards and sends `usage.record` at most every few seconds, one command per API
key (the aggregate id), each row one model in one UTC minute. The command id is made once per batch and kept on
retries, so a batch sent twice is recorded once (agents dedupe by command id).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from streams.envelope import Frozen, Payload
from streams.registry import command, event

AGGREGATE = "usage"
MAX_ROWS = 1000


class UsageRow(Frozen):
    minute: datetime  # the start of the UTC minute the requests ended in
    model: str = Field(min_length=1, max_length=512)  # as the requests named it
    base_model: str | None = Field(None, max_length=255)  # what the unit price is looked up by
    requests: int = Field(ge=1)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


@command("usage.record", aggregate_type=AGGREGATE)
class RecordUsage(Payload):
    api_key_id: str = Field(min_length=1, max_length=64)
    gateway_id: str = Field(min_length=1, max_length=255)
    rows: tuple[UsageRow, ...] = Field(min_length=1, max_length=MAX_ROWS)


@event("usage.recorded", aggregate_type=AGGREGATE)
class UsageRecorded(Payload):
    api_key_id: str
    gateway_id: str
    rows: tuple[UsageRow, ...]
