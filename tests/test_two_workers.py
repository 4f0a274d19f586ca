"""Two workers in one consumer group: they split the command partitions, each runs only the artifact jobs of its own,
and when one dies in the middle of its jobs the other takes its partitions over and finishes them, once."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil

from infra.kafka import partition_of
from streams.topics import COMMANDS
from tests.fake_civitai import FakeCivitai
from tests.support import Api, Stack, events, wait_until
from tests.test_artifact_crash_recovery import _big_kohya_lora, create_slow_civitai_lora

OWNING = re.compile(r"owning command partitions \[([\d, ]*)\]")


def owned(log: Path) -> frozenset[int] | None:
    """The partitions a worker last said it owns, from its log."""
    found = OWNING.findall(log.read_text(errors="replace")) if log.exists() else []
    return frozenset(int(p) for p in found[-1].split(",") if p.strip()) if found else None


def adapter_name_in(partitions: frozenset[int], prefix: str) -> str:
    while True:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        if partition_of(f"default/{name}".encode(), COMMANDS.partitions) in partitions:
            return name


def mine(stack: Stack, names: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for event in events(stack):
        name = event["aggregate_id"].removeprefix("default/")
        if name in out:
            out[name].append(event)
    return out


def test_two_workers_split_the_partitions_and_one_takes_over_what_the_other_left(
    stack: Stack, user: Api, civitai_server: FakeCivitai, tmp_path: Path
) -> None:
    first = stack.pids()["worker"]
    first_log = stack.data_dir / "logs" / "worker.log"
    env = {**psutil.Process(first).environ(), "LORAPLANE_WORKER_INSTANCE_ID": f"second-{uuid.uuid4().hex[:6]}"}
    second_log = tmp_path / "second-worker.log"
    with second_log.open("wb") as out:
        second = subprocess.Popen(
            [sys.executable, "-m", "infra.cli", "worker"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        theirs = wait_until(lambda: owned(second_log) or None, timeout=120, message="the second worker's partitions")
        ours = wait_until(
            lambda: (o := owned(first_log)) is not None and not (o & theirs) and o | theirs == set(range(6)) and o,
            timeout=60,
            message="the first worker to give them up",
        )
        assert theirs and ours

        body = _big_kohya_lora()
        names = [adapter_name_in(theirs, "second"), adapter_name_in(theirs, "second"), adapter_name_in(ours, "first")]
        for i, name in enumerate(names):
            version_id = 98_100 + i + (uuid.uuid4().int % 10_000) * 10
            create_slow_civitai_lora(user, civitai_server, name, version_id, body, throttle_s=0.3)

        def downloading() -> bool:
            got = mine(stack, names[:2])
            return all(
                any(e["type"] == "adapter.progressed" and e["payload"]["progress"]["bytes_done"] > 0 for e in got[n])
                for n in names[:2]
            )

        wait_until(downloading, timeout=90, interval=0.2, message="the second worker's downloads under way")
        ran = second_log.read_text(errors="replace")
        assert all(f"artifact job adapter:default/{n}:1 started" in ran for n in names[:2]), "it ran its own jobs"
        assert f"adapter:default/{names[2]}:1" not in ran, "it ran a job of the first worker's partitions"

        os.kill(second.pid, signal.SIGKILL)
        second.wait(10)
        left = mine(stack, names[:2])
        assert not any(e["type"] == "adapter.stored" for got in left.values() for e in got), "done before the kill"

        wait_until(lambda: owned(first_log) == set(range(6)), timeout=120, message="the first worker to take over")

        def finished() -> bool:
            return all(any(e["type"] == "adapter.stored" for e in got) for got in mine(stack, names).values())

        wait_until(finished, timeout=240, interval=1, message="every adapter stored")
        for name, got in mine(stack, names).items():
            counts = collections.Counter(e["type"] for e in got)
            assert counts["adapter.stored"] == 1 and counts["adapter.rejected"] == 0, (name, counts)
            assert user.get(f"/api/v1/lora/{name}").json()["status"] == "ready"
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)
