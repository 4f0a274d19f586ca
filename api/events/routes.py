"""`GET /v2/events/schema`: the published JSON Schema of every message type and version (as `loraplane events
schema` prints it), for consumers of `loraplane.events` that validate records without our code. Any key."""

from __future__ import annotations

from functools import cache
from typing import Any

from litestar import get

from streams.json_schema import JsonSchema, document


@cache
def _published() -> JsonSchema:
    return document()  # the registry is complete once the app has imported streams.catalog


@get(
    "/v2/events/schema",
    tags=["events"],
    summary="JSON Schema of every event and command type and version (the envelope, payload per type@version)",
)
async def events_schema() -> JsonSchema:
    return _published()


ROUTES: list[Any] = [events_schema]
