"""`loraplane replay` rebuilds the read model from offset 0; the rebuilt state equals the live one."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any

from tests.support import Api, Stack, read_topic, wait_until


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def test_replay_equals_live(stack: Stack, user: Api, admin: Api, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    for i in range(5):
        assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"replay-{tag}-{i}"}).status_code == 201
    assert user.delete(f"/v2/workspaces/replay-{tag}-0", params={"wait": 10}).status_code == 204
    assert user.post("/v2/workspaces", params={"wait": 10}, json={"name": f"replay-{tag}-1"}).status_code == 409
    assert admin.post("/v2/admin/api-keys", params={"wait": 10}, json={"name": f"k-{tag}"}).status_code == 201

    live = stack.data_dir / "readmodel.db"
    total = len(read_topic(stack, "loraplane.events"))
    wait_until(
        lambda: sum(r[0] for r in sqlite3.connect(live).execute("SELECT next_offset FROM projection_offsets")) == total,
        message="the live read model to catch up",
    )

    rebuilt = tmp_path / "rebuilt.db"
    result = stack.cli("replay", "--database-url", f"sqlite+aiosqlite:///{rebuilt}")
    assert result.returncode == 0, result.stderr
    assert f"replayed {total} events" in result.stdout and "events/s" in result.stdout

    assert dump(rebuilt) == dump(live)

    again = stack.cli("replay", "--database-url", f"sqlite+aiosqlite:///{rebuilt}")
    assert again.returncode != 0 and "fresh database" in again.stderr
