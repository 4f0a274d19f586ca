"""A consumer of `loraplane.events` that knows nothing of our code: a plain aiokafka consumer reads the topic and
validates every record with `jsonschema` against the document `GET /v2/events/schema` publishes.

The validating part imports neither `streams` nor `infra`: only aiokafka, jsonschema and the HTTP answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import jsonschema
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.support import Api, Stack

TOPIC = "loraplane.events"


async def read_everything(bootstrap: str) -> list[tuple[int, int, bytes]]:
    """Every record of the topic up to its end as fetches report it (the high watermark: our broker's
    ListOffsets is not to be trusted), as (partition, offset, value)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=200)
    await consumer.start()
    try:
        partitions = [TopicPartition(TOPIC, p) for p in sorted(consumer.partitions_for_topic(TOPIC) or [])]
        assert partitions
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        out: list[tuple[int, int, bytes]] = []
        remaining = list(partitions)
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=600)
            for tp, records in batches.items():
                out.extend((tp.partition, r.offset, r.value) for r in records)
            if not any(batches.values()):
                remaining = [tp for tp in remaining if not await at_end(consumer, tp)]
        return out
    finally:
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            pass


async def at_end(consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    high = consumer.highwater(tp)
    return high is not None and await consumer.position(tp) >= high


def event_validator(published: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """Validates a record of the events topic: the document's `#/$defs/event`, with the document's `$defs`."""
    schema = {key: value for key, value in published.items() if key != "oneOf"}
    schema["$ref"] = "#/$defs/event"
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_every_record_validates_against_the_published_schema(stack: Stack, user: Api, admin: Api) -> None:
    tag = uuid.uuid4().hex[:8]
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"contract-{tag}"}).status_code == 201
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"contract-{tag}"}).status_code == 409
    assert user.delete(f"/v2/workspaces/contract-{tag}", params={"wait": 10}).status_code == 204
    made = admin.post("/v2/admin/api-keys", params={"wait": 10}, json={"name": f"contract-{tag}"})
    assert made.status_code == 201, made.text
    assert admin.delete(f"/v2/admin/api-keys/{made.json()['id']}", params={"wait": 10}).status_code == 204

    answer = user.get("/v2/events/schema")
    assert answer.status_code == 200
    validator = event_validator(answer.json())

    records = asyncio.run(read_everything(stack.bootstrap))
    problems = []
    seen: set[str] = set()
    for partition, offset, value in records:
        record = json.loads(value)
        seen.add(record["type"])
        where = f"{partition}:{offset} {record['type']}"
        problems += [f"{where}: {error.message}" for error in validator.iter_errors(record)]
    assert not problems, "\n".join(problems[:20])
    assert {"workspace.created", "workspace.deleted", "command.rejected", "api_key.created", "api_key.revoked"} <= seen

    # and the schema is no rubber stamp: a record that breaks its type's payload is refused
    created = next(json.loads(v) for _, _, v in records if json.loads(v)["type"] == "workspace.created")
    assert validator.is_valid(created)
    assert not validator.is_valid({**created, "payload": {**created["payload"], "name": 42}})
    assert not validator.is_valid({**created, "type": "workspace.vanished"})
