"""The read model's unit of work (api.readmodel.rows): what a batch's projections change is what the tables hold
after its flush, read back with plain SQL, on SQLite here and on PostgreSQL in test_readmodel_postgres."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, event, select

from api.readmodel.database import create_engine, create_schema, sqlite_writer
from api.readmodel.rows import Rows
from api.readmodel.tables import api_keys, deployment_instances, instance_adapters, owners

T = TypeVar("T")
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def in_transaction(url: str, work: Callable[[Connection], T]) -> T:
    async def run() -> T:
        engine = create_engine(url)
        try:
            await create_schema(engine)
            async with engine.begin() as conn:
                return await conn.run_sync(work)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def key_row(key_id: str, **values: Any) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "name": key_id,
        "role": "user",
        "team": "default",
        "key_hash": "h" * 64,
        "version": 1,
        "created_at": AT,
        "creator_id": "admin",
        "creator_name": "admin",
        **values,
    }


def instance_row(instance_id: str, node_id: str) -> dict[str, Any]:
    return {
        "instance_id": instance_id,
        "deploy_id": "d1",
        "state": "placed",
        "node_id": node_id,
        "device_indexes": [0],
        "requested_seq": 1,
        "updated_at": AT,
    }


def adapter_row(instance_id: str, name: str) -> dict[str, Any]:
    return {"instance_id": instance_id, "name": name, "deploy_id": "d1", "state": "loaded", "updated_at": AT}


def exercise(url: str) -> None:
    """Two batches, the second changing what the first stored in every way a projection can; asserts the tables."""

    def first(conn: Connection) -> None:
        rows = Rows(conn)
        rows.put(api_keys, key_row("stays"))
        rows.put(api_keys, key_row("patched"))
        rows.put(api_keys, key_row("deleted"))
        rows.put(api_keys, key_row("replaced", name="old"))
        rows.put(deployment_instances, instance_row("i1", "n1"))
        for name in ("a", "b"):
            rows.put(instance_adapters, adapter_row("i1", name))
        rows.put(instance_adapters, adapter_row("i2", "a"))
        rows.put(owners, {"aggregate_type": "workspace", "aggregate_id": "w1", "team": "red"})
        rows.flush()

    def second(conn: Connection) -> None:
        rows = Rows(conn)
        rows.update(api_keys, ("patched",), {"revoked": True, "version": 2})  # not read: an UPDATE
        rows.update(api_keys, ("missing",), {"revoked": True})  # no such row: nothing appears
        rows.delete(api_keys, ("deleted",))
        rows.update(api_keys, ("deleted",), {"revoked": True})  # after its delete: nothing comes back
        rows.put(api_keys, key_row("replaced", name="new"))
        rows.update(api_keys, ("replaced",), {"version": 3})
        rows.put(api_keys, key_row("new-one"))
        rows.update(deployment_instances, ("i1",), {"state": "running"})
        instance = rows.get(deployment_instances, ("i1",))  # read after a patch: the stored row with it applied
        assert instance is not None and instance["state"] == "running" and instance["node_id"] == "n1"
        rows.put(instance_adapters, adapter_row("i1", "c"))  # put in this batch, then deleted with the stored ones
        rows.delete_where(instance_adapters, instance_id="i1")
        rows.put(instance_adapters, adapter_row("i1", "d"))  # after the delete: kept
        rows.prefetch(owners, [("workspace", "w1"), ("workspace", "nobody")])
        assert rows.get(owners, ("workspace", "w1")) == {
            "aggregate_type": "workspace",
            "aggregate_id": "w1",
            "team": "red",
            "shared": False,  # the column's default, filled in by put
        }
        assert rows.get(owners, ("workspace", "nobody")) is None
        rows.flush()
        rows.flush()  # a second flush has nothing left to write

    in_transaction(url, first)
    in_transaction(url, second)

    def read(conn: Connection) -> dict[str, Any]:
        return {
            "keys": {(r.key_id, r.name, r.revoked, r.version) for r in conn.execute(select(api_keys))},
            "instances": {(r.instance_id, r.state, r.node_id) for r in conn.execute(select(deployment_instances))},
            "adapters": {(r.instance_id, r.name) for r in conn.execute(select(instance_adapters))},
        }

    assert in_transaction(url, read) == {
        "keys": {
            ("stays", "stays", False, 1),
            ("patched", "patched", True, 2),
            ("replaced", "new", False, 3),
            ("new-one", "new-one", False, 1),
        },
        "instances": {("i1", "running", "n1")},
        "adapters": {("i1", "d"), ("i2", "a")},
    }


def test_a_batch_writes_what_its_projections_changed(tmp_path: Path) -> None:
    exercise(f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}")


def test_rows_read_once_are_not_read_again_and_prefetch_reads_many_at_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}"

    def store(conn: Connection) -> None:
        rows = Rows(conn)
        for n in range(1200):
            rows.put(owners, {"aggregate_type": "workspace", "aggregate_id": f"w{n}", "team": "red"})
        rows.flush()

    in_transaction(url, store)

    def read(conn: Connection) -> list[str]:
        statements: list[str] = []
        event.listen(conn, "before_cursor_execute", lambda *args: statements.append(args[2]))
        rows = Rows(conn)
        rows.prefetch(owners, [("workspace", f"w{n}") for n in range(0, 1300, 2)])  # 650 keys, 50 of them absent
        for n in range(0, 1300, 2):
            found = rows.get(owners, ("workspace", f"w{n}"))
            assert (found is not None and found["team"] == "red") == (n < 1200)
        assert rows.get(owners, ("workspace", "w1")) is not None  # not prefetched: read now
        assert rows.get(owners, ("workspace", "w1")) is not None  # and only once
        return statements

    statements = in_transaction(url, read)
    assert len(statements) == 3  # two prefetch chunks and the one row not prefetched


def test_prefetch_looks_rows_up_by_their_key_and_never_scans_the_table(tmp_path: Path) -> None:
    """A row-value IN over the whole key makes SQLite scan the table, so each batch of the projector cost as much as
    the table held (the pipeline's rounds slowed as the read model grew): each statement must search the key."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}"

    def store(conn: Connection) -> None:
        rows = Rows(conn)
        for kind in ("workspace", "adapter"):
            for n in range(100):
                rows.put(owners, {"aggregate_type": kind, "aggregate_id": f"{kind[0]}{n}", "team": kind})
        rows.flush()

    in_transaction(url, store)

    def read(conn: Connection) -> list[str]:
        executed: list[tuple[str, Any]] = []
        event.listen(conn, "before_cursor_execute", lambda *args: executed.append((args[2], args[3])))
        rows = Rows(conn)
        keys = [("workspace", "w1"), ("adapter", "a2"), ("workspace", "w3"), ("adapter", "none"), ("team", "x")]
        rows.prefetch(owners, keys)
        assert [(found or {}).get("team") for found in (rows.get(owners, key) for key in keys)] == [
            "workspace",
            "adapter",
            "workspace",
            None,
            None,
        ]
        plans = []
        for statement, parameters in list(executed):
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            plans.append(" / ".join(str(step[-1]) for step in plan))
        return plans

    plans = in_transaction(url, read)
    for plan in plans:
        assert "SCAN owners" not in plan and "USING INDEX sqlite_autoindex_owners" in plan, plan
    assert len(plans) == 3  # one statement per aggregate type asked for, none per key


def test_only_a_rebuild_gets_the_large_page_cache(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}")
    try:
        caches = {}
        for bulk in (True, False):
            writer = sqlite_writer(engine, bulk=bulk)
            assert writer is not None
            with writer.connect() as conn:
                caches[bulk] = conn.exec_driver_sql("PRAGMA cache_size").scalar()
            writer.dispose()
    finally:
        asyncio.run(engine.dispose())
    assert caches == {True: -512 * 1024, False: -2000}  # KiB; -2000 is SQLite's own default


def test_a_row_with_a_column_the_table_lacks_is_refused_by_name(tmp_path: Path) -> None:
    def put(conn: Connection) -> None:
        Rows(conn).put(api_keys, key_row("k", colour="blue"))

    with pytest.raises(KeyError, match="api_keys has no column \\['colour'\\]"):
        in_transaction(f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}", put)
