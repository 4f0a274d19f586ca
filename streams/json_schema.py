"""The published JSON Schema of every message: the envelope, with its `payload` per `type` and `schema_version`.

One document (JSON Schema 2020-12) that a consumer who knows nothing of our code can validate any record with:
`#/$defs/event` matches a record of `loraplane.events`, `#/$defs/command` one of `loraplane.commands`, and the
document itself either. Each type and version is `#/$defs/{type}@{version}` (e.g. `adapter.stored@1`): the
envelope with `type`, `schema_version` (and `aggregate_type`, when the type belongs to one) fixed and `payload`
that version's model. The schemas describe what we write (pydantic's serialization mode). `x-loraplane-messages`
lists the types for tools.
"""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

from streams.envelope import Envelope, MessageKind
from streams.registry import ANY_AGGREGATE, MessageType, all_types

DIALECT = "https://json-schema.org/draft/2020-12/schema"
ENVELOPE_DEF = "Envelope"
JsonSchema = dict[str, Any]


def message_key(name: str, version: int) -> str:
    """The `$defs` key of one type and version, e.g. `adapter.stored@1`."""
    return f"{name}@{version}"


def document() -> JsonSchema:
    """The whole document, built from the registry as it is now (callers that serve it keep one)."""
    types = all_types()
    models = [(Envelope, "serialization"), *((t.model, "serialization") for t in types)]
    refs, shared = models_json_schema(models, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    defs: JsonSchema = shared.get("$defs", {})
    envelope = defs[ENVELOPE_DEF]
    assert refs[(Envelope, "serialization")]["$ref"].endswith(f"/{ENVELOPE_DEF}")
    envelope["properties"]["payload"] = {"type": "object", "description": "described per type by each message"}
    envelope["required"] = list(envelope["properties"])  # we write every field, defaults included
    defs.pop("Payload", None)
    for entry in types:
        payload_ref = refs[(entry.model, "serialization")]["$ref"]
        defs[message_key(entry.name, entry.version)] = _message(entry, payload_ref)
    for kind in MessageKind:
        defs[kind.value] = {
            "description": f"any {kind.value} record",
            "oneOf": [{"$ref": f"#/$defs/{message_key(t.name, t.version)}"} for t in types if t.kind is kind],
        }
    return {
        "$schema": DIALECT,
        "title": "loraplane messages",
        "description": __doc__,
        "oneOf": [{"$ref": f"#/$defs/{kind.value}"} for kind in MessageKind],
        "$defs": defs,
        "x-loraplane-messages": [
            {
                "type": t.name,
                "schema_version": t.version,
                "kind": t.kind.value,
                "aggregate_type": None if t.aggregate_type == ANY_AGGREGATE else t.aggregate_type,
                "$ref": f"#/$defs/{message_key(t.name, t.version)}",
            }
            for t in types
        ],
    }


def _message(entry: MessageType, payload_ref: str) -> JsonSchema:
    fixed: JsonSchema = {
        "type": {"const": entry.name},
        "schema_version": {"const": entry.version},
        "payload": {"$ref": payload_ref},
    }
    if entry.aggregate_type != ANY_AGGREGATE:
        fixed["aggregate_type"] = {"const": entry.aggregate_type}
    required = ["type", "schema_version", "payload"]
    if entry.kind is MessageKind.EVENT:  # every event carries the aggregate's version (unchanged on a rejection)
        fixed["aggregate_version"] = {"type": "integer", "minimum": 0}
        required.append("aggregate_version")
    return {
        "title": f"{entry.name} v{entry.version}",
        "description": f"{entry.kind.value} `{entry.name}` version {entry.version} ({entry.model.__name__})",
        "allOf": [{"$ref": f"#/$defs/{ENVELOPE_DEF}"}],
        "properties": fixed,
        "required": required,
        "x-kind": entry.kind.value,
    }
