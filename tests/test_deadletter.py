"""Messages no agent can read land in the dead-letter topic with the reason; the worker keeps going."""

from __future__ import annotations

import json
import uuid

from tests.support import Api, Stack, produced, read_topic, wait_until

POISON = {
    b"\x00\xff not json at all": "not JSON",
    b"[1, 2, 3]": "not a JSON object",
    json.dumps({"type": "workspace.explode", "schema_version": 1}).encode(): "unknown message type",
    json.dumps({"type": "workspace.create", "schema_version": 99}).encode(): "unknown message type",
    json.dumps(
        {"type": "workspace.create", "schema_version": 1, "aggregate_type": "workspace", "payload": {"name": "x"}}
    ).encode(): "invalid workspace.create v1",
}


def test_poison_messages_go_to_the_dead_letter_topic(stack: Stack, user: Api) -> None:
    marker = uuid.uuid4().hex
    with produced(stack.bootstrap) as producer:
        for body in POISON:
            producer.send("loraplane.commands", body, key=marker.encode())

    def dead() -> list[str]:
        return [
            r.headers["x-deadletter-reason"].decode()
            for r in read_topic(stack, "loraplane.deadletter")
            if r.key == marker.encode()
        ]

    reasons = wait_until(lambda: len(dead()) == len(POISON) and dead(), message="dead letters")
    for expected, reason in zip(POISON.values(), reasons, strict=True):
        assert expected in reason

    # the same worker still decides the next command
    name = f"after-poison-{marker[:8]}"
    assert user.post("/v2/workspaces", params={"wait": 15}, json={"name": name}).status_code == 201
