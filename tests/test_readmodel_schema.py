"""A read model made by another version of the code is dropped and rebuilt from the log, not half-used."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from api.readmodel.database import create_engine, create_schema, fingerprint


def make(path: Path) -> None:
    async def run() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            await create_schema(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_an_older_read_model_is_rebuilt_and_a_current_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "rm.db"
    with sqlite3.connect(path) as conn:  # what an older loraplane made: no fingerprint, a column fewer
        conn.execute("CREATE TABLE deployment_adapters (deploy_id TEXT, name TEXT)")
        conn.execute("CREATE TABLE projection_offsets (topic TEXT, partition INT, next_offset INT)")
        conn.execute("INSERT INTO projection_offsets VALUES ('loraplane.events', 0, 42)")
    make(path)
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(deployment_adapters)")}
        assert "on_demand" in columns
        assert conn.execute("SELECT count(*) FROM projection_offsets").fetchone() == (0,)  # replayed from the start
        assert conn.execute("SELECT fingerprint FROM schema_fingerprints").fetchall() == [(fingerprint(),)]
        conn.execute("INSERT INTO projection_offsets VALUES ('loraplane.events', 0, 7)")
    make(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT next_offset FROM projection_offsets").fetchall() == [(7,)]
        conn.execute("UPDATE schema_fingerprints SET fingerprint = 'other'")
    make(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM projection_offsets").fetchone() == (0,)
