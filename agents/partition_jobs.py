"""A worker's long-running jobs (artifact fetches, evaluation runs), each belonging to its aggregate's commands
partition: the worker that owns the partition runs it, once per key, and stops it when the partition goes to another
worker (which runs it again from the folded log; the reports carry the same ids, so only one set counts)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from infra.kafka import partition_of
from streams.topics import COMMANDS

log = logging.getLogger(__name__)


def commands_partition(aggregate_id: str) -> int:
    """The commands partition of an aggregate: the worker that owns it runs the aggregate's jobs."""
    return partition_of(aggregate_id.encode(), COMMANDS.partitions)


class PartitionJobs:
    def __init__(self, what: str) -> None:
        self._what = what  # how the logs name a job: "artifact job", "evaluation"
        self._running: dict[str, tuple[int, asyncio.Task[None]]] = {}  # by key: (partition, task)

    def keys(self) -> list[str]:
        return sorted(self._running)

    def spawn(self, key: str, aggregate_id: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` as the job `key` unless it runs already. A failure is logged: the job runs again when the
        worker restarts (or its partition moves)."""
        if key in self._running:
            return

        async def run() -> None:
            try:
                await work()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s %s could not report; it runs again when the worker restarts", self._what, key)
            finally:
                if (running := self._running.get(key)) is not None and running[1] is asyncio.current_task():
                    del self._running[key]

        log.info("%s %s started", self._what, key)
        task = asyncio.get_running_loop().create_task(run(), name=f"{self._what} {key}")
        self._running[key] = (commands_partition(aggregate_id), task)

    def cancel(self, key: str) -> bool:
        """Stop the job `key` (not when the caller is that job itself); whether one was stopped."""
        running = self._running.get(key)
        if running is None or running[1] is asyncio.current_task():
            return False
        running[1].cancel()
        return True

    def keep_only(self, partitions: frozenset[int]) -> None:
        """Stop the jobs of the partitions this worker gave up."""
        for key, (partition, task) in list(self._running.items()):
            if partition not in partitions:
                log.info("%s %s: its partition went to another worker; stopped", self._what, key)
                task.cancel()

    async def stop(self, *others: asyncio.Task[None]) -> None:
        """Cancel every job (and `others`) and wait until they have ended."""
        tasks = [task for _, task in self._running.values()] + list(others)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
