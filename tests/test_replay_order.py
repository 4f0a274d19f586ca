"""A replay reads the log's partitions side by side, in whatever order its fetches bring them: the read model it
builds must equal projecting the same events in the order they happened. The log is a realistic one
(tests/event_history.py) written across every partition of a broker of its own; 20,000 events were enough to show
instances left `placed` that were `running` when a report was read before its placement."""

from __future__ import annotations

import asyncio
import itertools
import random
from pathlib import Path

import pytest

import streams.catalog  # noqa: F401 - registers every message type
from api.readmodel.database import create_engine, create_schema
from api.readmodel.projector import EventRecord, Projector
from api.readmodel.replay import replay
from api.readmodel.tables import projection_offsets
from infra.local_stack import LocalStack
from infra.settings import Settings
from streams.envelope import Envelope
from streams.serialization import encode
from tests.event_history import History, write_log
from tests.support import read_model_rows

EVENTS = 20_000


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

    asyncio.run(run())
    replayed = read_model_rows(f"sqlite+aiosqlite:///{tmp_path / 'replayed.db'}")
    in_order = read_model_rows(f"sqlite+aiosqlite:///{tmp_path / 'in-order.db'}")
    del replayed[projection_offsets.name], in_order[projection_offsets.name]  # where each partition was read to
    assert replayed["deployment_instances"] and replayed["instance_reports"] and replayed["usage_rows"]
    differing = {name: len(rows ^ in_order[name]) for name, rows in replayed.items() if rows != in_order[name]}
    assert differing == {}
