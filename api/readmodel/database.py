"""Engine creation; SQLite gets WAL so the API reads while the projector writes."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, event, insert, inspect, select, text
from sqlalchemy import create_engine as create_sync_engine
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

        _with_pragmas(engine.sync_engine, "NORMAL")
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _with_pragmas(engine: Engine, synchronous: str, cache_kib: int | None = None) -> None:
    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        if cache_kib is not None:
            cursor.execute(f"PRAGMA cache_size=-{cache_kib}")
        cursor.close()


# A rebuild inserts rows of random keys (ids) into every index; with SQLite's default 2 MiB of page cache most of those
# inserts read their page back from the operating system once the file outgrows it.
_BULK_CACHE_KIB = 512 * 1024


def sqlite_writer(engine: AsyncEngine, *, bulk: bool = False) -> Engine | None:
    """A synchronous engine on the same SQLite file, for the projector's writes; None for another database (or one
    in memory, which a second engine would not share). `bulk` (a rebuild into a fresh file) syncs nothing to disk:
    the rows are safe once the rebuild ends, and a rebuild cut short is started again from nothing."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    writer = create_sync_engine(
        url.set(drivername="sqlite"), connect_args={"timeout": 30, "check_same_thread": False}, pool_size=1
    )
    _with_pragmas(writer, "OFF" if bulk else "NORMAL", _BULK_CACHE_KIB if bulk else None)

    # Each batch's transaction takes the write lock at its start, not at its first write: two API processes
    # projecting into one file then wait for each other instead of failing to upgrade a read lock.
    @event.listens_for(writer, "connect")
    def _manual_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(writer, "begin")
    def _begin_immediate(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return writer


def fingerprint() -> str:
    """The tables' shape: names, columns, types, keys. Another shape means the rows were made by other code."""
    shape = [
        f"{table.name}:{column.name}:{column.type!r}:{column.primary_key}:{column.nullable}"
        for table in metadata.sorted_tables
        for column in table.columns
    ]
    return hashlib.sha256("\n".join(shape).encode()).hexdigest()


# Several API processes may start on one database at once: one creates (or rebuilds) the tables, the others wait
# for it and then find them made.
_SCHEMA_LOCK = 0x6C6F7262


def _create(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
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
