"""One sample record of every event type and version, made from the published JSON Schema, for
`tests/fixtures/events/`. Run once per new type or version: `python -m tests.event_samples` writes the
samples that are missing and never rewrites one that exists (an old version's sample is the fixture that
proves the log stays readable after a bump)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "events"
# Every string pattern the payloads use, with a value that matches it.
PATTERN_SAMPLES = {"^[0-9a-f]{64}$": "0123456789abcdef" * 4, "^[a-z0-9]+$": "0123456789abcdef"}
SAMPLE_TIME = "2026-01-02T03:04:05.678901Z"


def sample(schema: dict[str, Any], defs: dict[str, Any], name: str = "value") -> Any:
    """A value valid for `schema`, every optional field filled in (the first choice of every union that is not
    null), so a fixture exercises as much of its payload as it can."""
    if "$ref" in schema:
        return sample(defs[schema["$ref"].rsplit("/", 1)[1]], defs, name)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            choices = [c for c in schema[key] if c.get("type") != "null"] or schema[key]
            return sample(choices[0], defs, name)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {key: sample(sub, defs, key) for key, sub in props.items()}
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        items = schema.get("prefixItems") or [schema.get("items", {})] * count
        return [sample(item, defs, name) for item in items]
    if kind == "string":
        if "pattern" in schema:
            return PATTERN_SAMPLES[schema["pattern"]]
        if schema.get("format") == "date-time":
            return SAMPLE_TIME
        text = f"sample-{name}"
        return text.ljust(schema.get("minLength", 0), "x")[: schema.get("maxLength", len(text))]
    if kind == "integer":
        return max(1, schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return None  # any JSON value


def sample_record(document: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    """A whole record (envelope and payload) of one type and version in the published document."""
    defs = document["$defs"]
    entry = defs[message["$ref"].rsplit("/", 1)[1]]
    record = sample(defs["Envelope"], defs)
    for key, sub in entry["properties"].items():
        record[key] = sample(sub, defs, key)
    record["aggregate_type"] = message["aggregate_type"] or "workspace"
    record["aggregate_version"] = 1
    record["causation_id"] = record["traceparent"] = None
    record["occurred_at"] = SAMPLE_TIME
    record["actor"] = {"type": "SYSTEM", "id": "system", "name": "loraplane"}
    return record


def fixture_path(name: str, version: int) -> Path:
    return FIXTURES / f"{name}@{version}.json"


def write_missing() -> list[Path]:
    import streams.catalog  # noqa: F401 - registers every message type
    from streams.json_schema import document
    from streams.serialization import decode

    doc = document()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    written = []
    for message in doc["x-loraplane-messages"]:
        path = fixture_path(message["type"], message["schema_version"])
        if message["kind"] != "event" or path.exists():
            continue
        record = sample_record(doc, message)
        decode(json.dumps(record).encode())  # a sample our own decoder refuses is no fixture
        path.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_missing():
        print(path, file=sys.stderr)
