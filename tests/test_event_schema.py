"""The published JSON Schema (streams/json_schema.py), upcasters, and the event fixtures kept for every version."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

import streams.catalog  # noqa: F401 - registers every message type
from streams import registry
from streams.envelope import SYSTEM_ACTOR, Payload
from streams.json_schema import document
from streams.registry import MessageKind
from streams.serialization import MessageDecodeError, decode, encode, envelope_for
from tests.event_samples import FIXTURES, sample_record


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


def validator(doc: dict[str, Any], kind: str | None = None) -> jsonschema.Draft202012Validator:
    schema = doc if kind is None else {**doc, "$ref": f"#/$defs/{kind}", "oneOf": None}
    schema = {k: v for k, v in schema.items() if v is not None}
    return jsonschema.Draft202012Validator(schema)


def fixtures() -> list[str]:
    return sorted(p.name for p in FIXTURES.glob("*.json"))


def test_the_document_is_a_valid_2020_12_schema_naming_every_type_and_version(doc: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator.check_schema(doc)
    listed = {(m["type"], m["schema_version"], m["kind"]) for m in doc["x-loraplane-messages"]}
    assert listed == {(t.name, t.version, t.kind.value) for t in registry.all_types()}
    stored = doc["$defs"]["adapter.stored@1"]
    assert stored["properties"]["type"] == {"const": "adapter.stored"}
    assert stored["properties"]["schema_version"] == {"const": 1}
    assert stored["properties"]["aggregate_type"] == {"const": "adapter"}
    assert stored["allOf"] == [{"$ref": "#/$defs/Envelope"}]
    assert set(doc["$defs"]["Envelope"]["required"]) >= {"id", "type", "occurred_at", "actor", "payload"}
    assert len(doc["$defs"]["event"]["oneOf"]) == sum(t.kind is MessageKind.EVENT for t in registry.all_types())


@pytest.mark.parametrize("name", fixtures())
def test_every_fixture_still_decodes_to_the_current_version(name: str, doc: dict[str, Any]) -> None:
    raw = (FIXTURES / name).read_bytes()
    event = decode(raw)
    assert event.schema_version == registry.current_version(event.type)
    validator(doc, "event").validate(json.loads(raw))


def test_every_current_event_type_has_a_fixture() -> None:
    have = set(fixtures())
    missing = [
        f"{t.name}@{t.version}.json"
        for t in registry.all_types()
        if t.kind is MessageKind.EVENT and f"{t.name}@{t.version}.json" not in have
    ]
    assert not missing, f"run `python -m tests.event_samples` to add {missing}"


def test_no_old_version_lacks_an_upcaster() -> None:
    assert registry.missing_upcasters() == []


def test_what_we_encode_matches_the_published_schema(doc: dict[str, Any]) -> None:
    """Every type, commands too: a sample decoded and encoded again by our code validates, and as the right kind."""
    everything, events, commands = validator(doc), validator(doc, "event"), validator(doc, "command")
    for message in doc["x-loraplane-messages"]:
        written = json.loads(encode(decode(json.dumps(sample_record(doc, message)).encode())))
        everything.validate(written)
        assert events.is_valid(written) is (message["kind"] == "event"), message["type"]
        assert commands.is_valid(written) is (message["kind"] == "command"), message["type"]


def test_the_schema_refuses_what_decode_refuses(doc: dict[str, Any]) -> None:
    record = json.loads((FIXTURES / "workspace.created@1.json").read_text())
    events = validator(doc, "event")
    for broken in (
        {**record, "payload": {"name": 3}},
        {**record, "payload": {**record["payload"], "extra": 1}},
        {**record, "aggregate_type": "adapter"},
        {**record, "schema_version": 9},
        {k: v for k, v in record.items() if k != "occurred_at"},
    ):
        assert not events.is_valid(broken)
    assert events.is_valid(record)


@pytest.fixture()
def scratch_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations made in a test vanish after it."""
    for name in ("_TYPES", "_BY_MODEL", "_UPCASTERS", "_CURRENT"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))


@pytest.mark.usefixtures("scratch_registry")
def test_an_old_payload_is_upcast_to_the_current_version_on_decode() -> None:
    @registry.event("test.resized", version=1, aggregate_type="workspace")
    class ResizedV1(Payload):
        size_mb: int

    @registry.event("test.resized", version=2, aggregate_type="workspace")
    class ResizedV2(Payload):
        size_bytes: int
        unit: str

    @registry.upcaster("test.resized", from_version=1)
    def mb_to_bytes(data: dict[str, Any]) -> dict[str, Any]:
        return {"size_bytes": data["size_mb"] << 20, "unit": "B"}

    old = envelope_for(ResizedV1(size_mb=3), aggregate_id="w", actor=SYSTEM_ACTOR, aggregate_version=1)
    assert old.schema_version == 1
    event = decode(encode(old))
    assert event.schema_version == 2 and event.payload == ResizedV2(size_bytes=3 << 20, unit="B")
    assert event.id == old.id and event.aggregate_version == 1
    assert decode(encode(event)) == event  # the current version reads as it is
    with pytest.raises(ValueError, match="registered twice"):
        registry.upcaster("test.resized", from_version=1)(mb_to_bytes)

    listed = {(m["type"], m["schema_version"]) for m in document()["x-loraplane-messages"]}
    assert {("test.resized", 1), ("test.resized", 2)} <= listed


@pytest.mark.usefixtures("scratch_registry")
def test_an_old_payload_without_an_upcaster_is_a_decode_error_naming_the_step() -> None:
    @registry.event("test.renamed", version=1, aggregate_type="workspace")
    class RenamedV1(Payload):
        name: str

    @registry.event("test.renamed", version=2, aggregate_type="workspace")
    class RenamedV2(Payload):
        title: str

    assert registry.missing_upcasters() == ["test.renamed v1"]
    old = envelope_for(RenamedV1(name="a"), aggregate_id="w", actor=SYSTEM_ACTOR, aggregate_version=1)
    with pytest.raises(MessageDecodeError, match=r"no upcaster from test\.renamed v1 to v2"):
        decode(encode(old))

    @registry.upcaster("test.renamed", from_version=1)
    def wrong(data: dict[str, Any]) -> dict[str, Any]:
        return data  # forgot the rename

    with pytest.raises(MessageDecodeError, match="upcast to v2 is invalid"):
        decode(encode(old))
