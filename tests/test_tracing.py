"""One trace from the HTTP request to the agent's decision, carried through Kafka headers.

The API app and the command processor run in this process (with an in-memory exporter), against the
session's real broker: the command travels over the real topic between them.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

from litestar.testing import TestClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agents.app import AGGREGATES
from agents.processor import CommandProcessor
from api.app import create_app
from tests.support import Stack, read_topic, wait_until


def test_http_request_to_agent_decision_is_one_trace(stack: Stack, admin_key: str, tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    settings = stack.settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}", kafka_fetch_max_wait_ms=20, data_dir=tmp_path
    )
    name = f"traced-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings, span_exporter=exporter)) as client:
        client.headers["Authorization"] = f"Bearer {admin_key}"
        wait_until(lambda: client.get("/v2/workspaces").status_code == 200, message="the key in the new read model")
        exporter.clear()
        accepted = client.post("/v2/workspaces", json={"name": name})
        assert accepted.status_code == 202
        command_id = accepted.json()["command_id"]

    record = wait_until(
        lambda: next((r for r in read_topic(stack, "loraplane.commands") if r.key == name.encode()), None),
        message="the command on its topic",
    )
    assert "traceparent" in record.headers

    async def decide() -> None:
        processor = CommandProcessor(settings, AGGREGATES)
        try:
            await processor.handle(record.value, list(record.headers.items()), "test")
        finally:
            await processor.stop()

    asyncio.run(decide())

    spans = exporter.get_finished_spans()
    http = next(s for s in spans if s.name == "POST /v2/workspaces")
    decision = next(s for s in spans if s.name == "decide workspace.create")
    assert decision.context.trace_id == http.context.trace_id
    assert decision.parent is not None and decision.parent.span_id == http.context.span_id
    assert decision.attributes is not None and decision.attributes["loraplane.command_id"] == command_id

    # the event the decision produced carries the same trace onwards
    produced = wait_until(
        lambda: [r.json() for r in read_topic(stack, "loraplane.events") if r.key == name.encode()],
        message="the decision's event",
    )
    trace_id = f"{http.context.trace_id:032x}"
    assert produced and produced[0]["traceparent"].split("-")[1] == trace_id
    assert json.loads(record.value or b"{}")["traceparent"].split("-")[1] == trace_id
