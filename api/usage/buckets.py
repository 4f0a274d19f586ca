"""Usage rows summed into time buckets and groups, in the shape of OpenAI's usage API. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

BucketWidth = Literal["1m", "1h", "1d"]
GroupBy = Literal["api_key", "model"]

SECONDS: dict[str, int] = {"1m": 60, "1h": 3600, "1d": 86400}
# The most buckets one answer holds (OpenAI's limits for 1m and 1h are 1440 and 168; a year of days here).
MAX_BUCKETS: dict[str, int] = {"1m": 1440, "1h": 744, "1d": 366}
# How many buckets back `from` reaches when it is not given.
DEFAULT_BUCKETS: dict[str, int] = {"1m": 60, "1h": 24, "1d": 7}


@dataclass(frozen=True)
class UsageRecord:
    minute: datetime
    api_key_id: str
    model: str
    base_model: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Totals:
    api_key_id: str | None
    model: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Bucket:
    start: int  # Unix seconds
    end: int
    results: tuple[Totals, ...]


def floor_to(at: int, width: BucketWidth) -> int:
    return at - at % SECONDS[width]


def span(start: int, end: int, width: BucketWidth) -> tuple[int, int]:
    """The bucket-aligned [start, end) covering the asked one."""
    step = SECONDS[width]
    return floor_to(start, width), -(-end // step) * step


def bucket_usage(
    records: Iterable[UsageRecord],
    *,
    width: BucketWidth,
    start: int,
    end: int,
    group_by: Sequence[GroupBy],
    unit_price: Callable[[str | None], float],
) -> list[Bucket]:
    """Every bucket of [start, end) (aligned), each with one result per group that used anything in it.

    Cost = (prompt + completion tokens) x the unit price of the row's base model, summed per result."""
    step = SECONDS[width]
    start, end = span(start, end, width)
    groups: dict[int, dict[tuple[str | None, str | None], Totals]] = {}
    for record in records:
        at = int(record.minute.astimezone(UTC).timestamp())
        if not start <= at < end:
            continue
        key = (
            record.api_key_id if "api_key" in group_by else None,
            record.model if "model" in group_by else None,
        )
        bucket = groups.setdefault(floor_to(at, width), {})
        totals = bucket.get(key) or bucket.setdefault(key, Totals(*key))
        totals.requests += record.requests
        totals.prompt_tokens += record.prompt_tokens
        totals.completion_tokens += record.completion_tokens
        totals.cost += (record.prompt_tokens + record.completion_tokens) * unit_price(record.base_model)
    return [
        Bucket(
            at,
            at + step,
            tuple(groups.get(at, {})[k] for k in sorted(groups.get(at, {}), key=lambda k: (k[0] or "", k[1] or ""))),
        )
        for at in range(start, end, step)
    ]
