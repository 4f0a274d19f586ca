"""`GET /v2/usage`: the inference gateway's usage in time buckets, per API key and model. An admin key sees every
key's usage (and may pick one with `api_key_id`); a user key sees its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import Parameter, QueryParameter

from api.auth import Principal
from api.errors import Unprocessable
from api.params import TeamFilter
from api.readmodel.usage_queries import usage_records
from api.teams import scope
from api.usage.buckets import DEFAULT_BUCKETS, MAX_BUCKETS, SECONDS, BucketWidth, GroupBy, bucket_usage, span
from api.usage.schemas import UsageBucket, UsagePage, UsageResult
from infra.settings import Settings
from streams.api_keys import Role

# Documented as what a client can rely on: whole seconds, or an RFC 3339 time (ISO 8601 forms beyond it are taken too).
_MOMENT_SCHEMA = {
    "anyOf": [{"type": "string", "pattern": "^([0-9]{1,11})?$"}, {"type": "string", "format": "date-time"}]
}
Moment = Annotated[
    str | None,
    Parameter(description="Unix seconds or ISO 8601 (UTC when no zone is given)", schema_extra=_MOMENT_SCHEMA),
]


def _moment(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if value.lstrip("-").isdigit():
        seconds = int(value)
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise Unprocessable(
                f"{name} is Unix seconds or an ISO 8601 time, not {value!r}", loc=["query", name]
            ) from None
        seconds = int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    if not 0 <= seconds <= 253402300799:  # up to 9999-12-31
        raise Unprocessable(f"{name} is out of range", loc=["query", name])
    return seconds


@get(
    "/v2/usage",
    tags=["inference"],
    summary="Tokens and requests through the inference gateway, in time buckets, by API key and model",
)
async def get_usage(
    request: Request[Principal, str, State],
    state: State,
    bucket: Annotated[BucketWidth, Parameter(description="Bucket width")] = "1d",
    group_by: Annotated[list[GroupBy] | None, Parameter(description="Group each bucket's results by these")] = None,
    from_: Annotated[
        str | None,
        QueryParameter(
            name="from", description="Start (inclusive): Unix seconds or ISO 8601", schema_extra=_MOMENT_SCHEMA
        ),
    ] = None,
    to: Moment = None,
    api_key_id: Annotated[str | None, Parameter(description="Admin keys: only this key's usage")] = None,
    team: TeamFilter = None,
) -> UsagePage:
    principal = request.user
    end = _moment(to, "to") or int(time.time()) + 1
    start = _moment(from_, "from")
    if start is None:
        start = span(end, end, bucket)[1] - DEFAULT_BUCKETS[bucket] * SECONDS[bucket]
    if start >= end:
        raise Unprocessable("from must be before to", loc=["query", "from"])
    aligned_start, aligned_end = span(start, end, bucket)
    if (aligned_end - aligned_start) // SECONDS[bucket] > MAX_BUCKETS[bucket]:
        raise Unprocessable(
            f"at most {MAX_BUCKETS[bucket]} buckets of {bucket} per answer: narrow from/to or widen the bucket",
            loc=["query", "from"],
        )
    if principal.role is not Role.ADMIN:
        if api_key_id not in (None, principal.key_id):
            raise Unprocessable("a user key sees its own usage only", loc=["query", "api_key_id"])
        api_key_id = principal.key_id
    records = await usage_records(state.engine, aligned_start, aligned_end, api_key_id, scope(principal, team))
    settings: Settings = state.settings
    buckets = bucket_usage(
        records,
        width=bucket,
        start=aligned_start,
        end=aligned_end,
        group_by=group_by or [],
        unit_price=settings.unit_price,
    )
    return UsagePage(
        data=[
            UsageBucket(
                start_time=b.start,
                end_time=b.end,
                results=[
                    UsageResult(
                        input_tokens=r.prompt_tokens,
                        output_tokens=r.completion_tokens,
                        num_model_requests=r.requests,
                        api_key_id=r.api_key_id,
                        model=r.model,
                        cost=round(r.cost, 10),
                    )
                    for r in b.results
                ],
            )
            for b in buckets
        ]
    )


ROUTES: list[Any] = [get_usage]
