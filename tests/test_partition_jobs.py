"""A worker's jobs by partition (agents.partition_jobs): once per key, stopped with their partition, failures logged."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from agents.partition_jobs import PartitionJobs, commands_partition


def test_a_job_runs_once_per_key_and_stops_with_its_partition() -> None:
    async def scenario() -> None:
        jobs = PartitionJobs("test job")
        started: list[str] = []
        release = asyncio.Event()

        def work(name: str) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                started.append(name)
                await release.wait()

            return run

        ids = [f"aggregate-{i}" for i in range(40)]
        for aggregate_id in ids:
            jobs.spawn(aggregate_id, aggregate_id, work(aggregate_id))
            jobs.spawn(aggregate_id, aggregate_id, work(aggregate_id + "-again"))  # already running: ignored
        await asyncio.sleep(0)
        assert sorted(started) == sorted(ids) and jobs.keys() == sorted(ids)

        kept = frozenset({commands_partition(ids[0])})
        jobs.keep_only(kept)
        await asyncio.sleep(0)
        assert jobs.keys() == sorted(i for i in ids if commands_partition(i) in kept)
        assert 0 < len(jobs.keys()) < len(ids)  # some stopped, some kept

        assert jobs.cancel(ids[0]) and not jobs.cancel("nobody")
        await asyncio.sleep(0)
        assert ids[0] not in jobs.keys()
        await jobs.stop()
        assert jobs.keys() == []

    asyncio.run(scenario())


def test_a_failed_job_is_logged_and_can_run_again(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        jobs = PartitionJobs("test job")
        runs: list[int] = []

        async def fails() -> None:
            runs.append(1)
            raise RuntimeError("no S3")

        jobs.spawn("k", "a", fails)
        await asyncio.sleep(0.01)
        assert jobs.keys() == []
        jobs.spawn("k", "a", fails)
        await asyncio.sleep(0.01)
        assert len(runs) == 2

    asyncio.run(scenario())
    assert "test job k could not report; it runs again when the worker restarts" in caplog.text
