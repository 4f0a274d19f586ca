"""Engine creation; SQLite gets WAL so the API reads while the projector writes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, insert, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.readmodel.tables import metadata, schema_fingerprints

log = logging.getLogger(__name__)


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True)


def fingerprint() -> str:
    """The tables' shape: names, columns, types, keys. Another shape means the rows were made by other code."""
    shape = [
        f"{table.name}:{column.name}:{column.type!r}:{column.primary_key}:{column.nullable}"
        for table in metadata.sorted_tables
        for column in table.columns
    ]
    return hashlib.sha256("\n".join(shape).encode()).hexdigest()


def _create(conn: Connection) -> None:
    wanted = fingerprint()
    if inspect(conn).has_table(schema_fingerprints.name):
        found = conn.execute(select(schema_fingerprints.c.fingerprint)).scalars().all()
        if found == [wanted]:
            return
        # The read model is disposable: it is rebuilt from the log (its offsets go with the tables).
        log.warning("the read model was made by another version of loraplane; rebuilding it from the event log")
        metadata.drop_all(conn)
    elif inspect(conn).get_table_names():
        log.warning("the read model predates its schema fingerprint; rebuilding it from the event log")
        metadata.drop_all(conn)
    metadata.create_all(conn)
    conn.execute(insert(schema_fingerprints).values(fingerprint=wanted))


async def create_schema(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_create)
