"""A replay reads the log's partitions side by side, in whatever order its fetches bring them: the read model it
builds must equal projecting the same events in the order they happened. The log is a realistic one
(tests/event_history.py) written across every partition of a broker of its own; 20,000 events were enough to show
instances left `placed` that were `running` when a report was read before its placement."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import streams.catalog  # noqa: F401 - registers every message type
from api.readmodel.database import create_engine, create_schema
from api.readmodel.projector import EventRecord, Projector
from api.readmodel.replay import replay
from api.readmodel.tables import metadata, projection_offsets
from infra.local_stack import LocalStack
from infra.settings import Settings
from streams.envelope import Envelope
from streams.serialization import encode
from tests.event_history import History, write_log

EVENTS = 20_000


def _comparable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


async def _tables(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every read-model table but the offsets (which say where each partition was read to)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                table.name: {tuple(map(_comparable, row)) for row in await conn.execute(select(table))}
                for table in metadata.sorted_tables
                if table is not projection_offsets
            }
    finally:
        await engine.dispose()


async def _in_log_order(url: str, events: list[Envelope]) -> None:
    engine = create_engine(url)
    await create_schema(engine)
    projector = Projector(engine)
    try:
        records = [EventRecord("in-order", 0, offset, encode(event)) for offset, event in enumerate(events)]
        for start in range(0, len(records), 5000):
            await projector.apply(records[start : start + 5000])
    finally:
        projector.close()
        await engine.dispose()


def test_a_replay_of_a_realistic_log_equals_projecting_it_in_log_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = list(itertools.islice(History(random.Random(11)).events(), EVENTS))

    async def run() -> None:
        own = {"data_dir": tmp_path / "data", "kafka_bootstrap_servers": None, "s3_endpoint": None}
        stack = LocalStack(Settings.model_validate({**own, "broker_port": 0, "s3_port": 0}))
        env = await stack.start_services()
        try:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            *_, batches = await write_log(env["KAFKA_BOOTSTRAP_SERVERS"], iter(events), 500)
            assert batches > 6  # several batches on every partition: fetches bring them in turns
            stats = await replay(Settings(), f"sqlite+aiosqlite:///{tmp_path / 'replayed.db'}")
            assert stats.events == EVENTS
        finally:
            await stack.stop()
        await _in_log_order(f"sqlite+aiosqlite:///{tmp_path / 'in-order.db'}", events)

        replayed = await _tables(f"sqlite+aiosqlite:///{tmp_path / 'replayed.db'}")
        in_order = await _tables(f"sqlite+aiosqlite:///{tmp_path / 'in-order.db'}")
        assert replayed["deployment_instances"] and replayed["instance_reports"] and replayed["usage_rows"]
        differing = {name: len(rows ^ in_order[name]) for name, rows in replayed.items() if rows != in_order[name]}
        assert differing == {}

    asyncio.run(run())
