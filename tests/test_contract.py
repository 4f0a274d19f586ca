"""The wire contract: envelopes round-trip; anything unreadable is refused with a reason."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

import streams.catalog  # noqa: F401
from streams import registry
from streams.envelope import SYSTEM_ACTOR, Envelope
from streams.serialization import MessageDecodeError, decode, encode, envelope_for, headers_for, key_for
from streams.topics import ALL_TOPICS, EVENTS
from streams.workspaces import CreateWorkspace, WorkspaceCreated


def test_round_trip() -> None:
    command = envelope_for(
        CreateWorkspace(name="a", description="d"),
        aggregate_id="a",
        actor=SYSTEM_ACTOR,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    assert decode(encode(command)) == command
    assert command.command_id == command.id == command.correlation_id
    assert key_for(command) == b"a"
    assert dict(headers_for(command)) == {"x-type": b"workspace.create", "traceparent": command.traceparent.encode()}


def test_messages_are_immutable() -> None:
    command = envelope_for(CreateWorkspace(name="a"), aggregate_id="a", actor=SYSTEM_ACTOR)
    with pytest.raises(ValidationError):
        command.type = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        command.payload.name = "b"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"type": "x"}', "schema_version"),
        (b'{"type": "workspace.create", "schema_version": 7}', "unknown message type"),
    ],
)
def test_unreadable_messages_have_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(MessageDecodeError, match=reason):
        decode(raw)


def test_bad_payload_names_the_field() -> None:
    good = json.loads(encode(envelope_for(CreateWorkspace(name="a"), aggregate_id="a", actor=SYSTEM_ACTOR)))
    good["payload"]["name"] = ["not", "a", "string"]
    with pytest.raises(MessageDecodeError, match="name"):
        decode(json.dumps(good).encode())
    good["payload"] = {"name": "a", "unexpected": True}
    with pytest.raises(MessageDecodeError, match="unexpected"):
        decode(json.dumps(good).encode())


def test_aggregate_type_must_match_the_registered_one() -> None:
    raw = json.loads(encode(envelope_for(CreateWorkspace(name="a"), aggregate_id="a", actor=SYSTEM_ACTOR)))
    raw["aggregate_type"] = "adapter"
    with pytest.raises(MessageDecodeError, match="belongs to aggregate type"):
        decode(json.dumps(raw).encode())


def test_registry_knows_every_type_once_and_names_follow_the_convention() -> None:
    types = registry.all_types()
    assert len({(t.name, t.version) for t in types}) == len(types)
    for t in types:
        verb = t.name.split(".", 1)[1]
        if t.kind.value == "event":
            assert verb.endswith("ed"), f"event {t.name} should be past tense"
        else:
            assert not verb.endswith("ed"), f"command {t.name} should be imperative"


def test_event_log_is_kept_forever() -> None:
    assert EVENTS.configs["retention.ms"] == "-1" and EVENTS.configs["cleanup.policy"] == "delete"
    assert len({t.name for t in ALL_TOPICS}) == len(ALL_TOPICS)


def test_event_envelope_carries_the_aggregate_version() -> None:
    event = envelope_for(WorkspaceCreated(name="a"), aggregate_id="a", actor=SYSTEM_ACTOR, aggregate_version=1)
    assert isinstance(decode(encode(event)), Envelope) and decode(encode(event)).aggregate_version == 1
