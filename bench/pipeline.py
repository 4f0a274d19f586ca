"""Command pipeline benchmark: commands through the API against raw aiokafka on the same broker, in the same run.

Run `python bench/pipeline.py`. It starts the embedded stack (`loraplane up` on free ports in a temporary directory,
no node agent), then:

  (a) raw: 32 concurrent `send_and_wait` of workspace-sized messages to a topic of the same partitions, through
      our producer settings: messages/s; and the round trip (produce -> a consumer tailing the topic receives it)
      at the same concurrency: p50/p99.
  (b) pipeline: workspace creates (`POST /v2/workspaces?wait=30`) from 32 concurrent clients: commands/s and
      write -> outcome p50/p99 (the answer comes once the outcome is projected into the read model).
      Goals: commands/s >= 0.25 of raw messages/s; p99 <= 5 x the raw round trip p99.
  (c) history: `--total` creates (default 100,000) in rounds of `--round` (default 10,000), p99 per round.
      Goal: the last round's p99 within 1.5 x the first's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import psutil
from aiokafka import TopicPartition

from infra.kafka import make_consumer, make_producer, read_to_end
from infra.kafka_admin import ensure_topics
from infra.s3 import make_client
from infra.settings import Settings
from infra.tansu_objects import batch_bases
from streams.topics import COMMANDS, EVENTS, TopicSpec
from tests.support import Stack, read_topic, start_stack, stop_stack

CONCURRENCY = 32
MESSAGE = b"x" * 600  # about the size of a workspace.create envelope


@dataclass
class Run:
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def line(self, what: str, unit: str) -> str:
        return (
            f"{what}: {self.rate:,.0f} {unit}/s; p50 {self.pct(50) * 1000:.0f} ms, p99 {self.pct(99) * 1000:.0f} ms"
            f" ({len(self.latencies)} in {self.seconds:.1f}s)"
        )


async def concurrently(count: int, one: Callable[[], Awaitable[float]]) -> Run:
    """`count` calls of `one()` (returning its latency), CONCURRENCY at a time."""
    latencies: list[float] = []
    remaining = iter(range(count))

    async def worker() -> None:
        for _ in remaining:
            latencies.append(await one())

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return Run(time.perf_counter() - began, latencies)


async def raw(settings: Settings, count: int, stack: Stack) -> tuple[Run, Run]:
    topic = TopicSpec(f"bench.raw.{uuid.uuid4().hex[:8]}", partitions=COMMANDS.partitions)
    await ensure_topics(settings.require_kafka(), [topic])
    producer = make_producer(settings)
    await producer.start()
    try:

        async def send() -> float:
            began = time.perf_counter()
            await producer.send_and_wait(topic.name, MESSAGE, key=uuid.uuid4().bytes)
            return time.perf_counter() - began

        await concurrently(200, send)  # warm up: metadata, connections
        before = cpu_by_process(stack)
        throughput = await concurrently(count, send)
        print(throughput.line("raw produce, 32 concurrent", "messages"), flush=True)
        print_cpu(before, cpu_by_process(stack), throughput, "message")

        consumer = make_consumer(settings)  # the decision path's fetch wait (the stack's, below)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            await read_to_end(consumer, partitions, lambda tp, records: None, fetch_max_wait_ms=500)
            arrived: dict[bytes, asyncio.Future[float]] = {}

            async def tail() -> None:
                while True:
                    batches = await consumer.getmany(*partitions, timeout_ms=1000)
                    now = time.perf_counter()
                    for records in batches.values():
                        for record in records:
                            if (waiting := arrived.get(record.key)) is not None and not waiting.done():
                                waiting.set_result(now)

            tailing = asyncio.create_task(tail())

            async def round_trip() -> float:
                key = uuid.uuid4().bytes
                arrived[key] = waiting = asyncio.get_running_loop().create_future()
                began = time.perf_counter()
                try:
                    await producer.send_and_wait(topic.name, MESSAGE, key=key)
                    return await asyncio.wait_for(waiting, 30) - began
                finally:
                    del arrived[key]

            trips = await concurrently(max(200, count // 4), round_trip)
            tailing.cancel()
        finally:
            await consumer.stop()
        return throughput, trips
    finally:
        await producer.stop()


async def creates(api: httpx.AsyncClient, count: int) -> Run:
    async def create() -> float:
        began = time.perf_counter()
        answer = await api.post("/v2/workspaces", params={"wait": 30}, json={"name": f"w-{uuid.uuid4().hex[:12]}"})
        if answer.status_code != 201:
            raise RuntimeError(f"create answered {answer.status_code}: {answer.text}")
        return time.perf_counter() - began

    return await concurrently(count, create)


async def run(stack: Stack, args: argparse.Namespace) -> None:
    env = stack.cli_env()
    # The fetch wait of the stack's decision path (`loraplane up` sets 20 ms): Tansu answers a fetch only when it
    # runs out, so the raw round trip must wait as long as the pipeline's hops do.
    settings = Settings.model_validate(
        {"kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"], "kafka_fetch_max_wait_ms": 20}
    )
    throughput, trips = await raw(settings, args.raw, stack)
    print(trips.line("raw round trip, 32 concurrent", "messages"), flush=True)

    key = stack.issue_key("admin", "bench")
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60, limits=limits
    ) as api:
        await creates(api, 100)  # warm up
        before = cpu_by_process(stack)
        pipeline = await creates(api, args.commands)
        print(pipeline.line("pipeline, 32 concurrent clients", "commands"), flush=True)
        print_cpu(before, cpu_by_process(stack), pipeline, "command")
        print(f"throughput ratio pipeline / raw: {pipeline.rate / throughput.rate:.3f} (goal >= 0.25)")
        print(f"p99 ratio pipeline / raw round trip: {pipeline.pct(99) / trips.pct(99):.2f} (goal <= 5)", flush=True)

        await asyncio.to_thread(print_hops, stack)

        if args.total:
            p99s = []
            done = 0
            while done < args.total:
                size = min(args.round, args.total - done)
                before = cpu_by_process(stack)
                one = await creates(api, size)
                done += size
                p99s.append(one.pct(99))
                print(
                    f"round {len(p99s)}: {done:,} written; "
                    + one.line("", "commands").lstrip(": ")
                    + broker_size(stack)
                    + cpu_a_command(before, cpu_by_process(stack), size),
                    flush=True,
                )
            print(f"last round p99 / first round p99: {p99s[-1] / p99s[0]:.2f} (goal <= 1.5)")


def cpu_by_process(stack: Stack) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process of the stack, and of this one (the clients)."""
    found: dict[str, float] = {}
    processes = [psutil.Process(), *psutil.Process(stack.process.pid).children(recursive=True)]
    for process in processes:
        try:
            times = process.cpu_times()
            words = [w for w in process.cmdline() if not w.startswith("-")]
        except psutil.Error:
            continue
        name = "bench clients" if process.pid == os.getpid() else " ".join(Path(w).name for w in words[:3])[:60]
        found[f"{name} [{process.pid}]"] = times.user + times.system
    return found


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each process spent between two `cpu_by_process` readings."""
    return {name: after[name] - before.get(name, 0.0) for name in after}


def print_cpu(before: dict[str, float], after: dict[str, float], run: Run, unit: str) -> None:
    """Where the CPU of a run went: each process's share of one core over the run's wall time, and a `unit`'s."""
    used = cpu_used(before, after)
    total = sum(used.values())
    print(f"CPU over the run ({run.seconds:.1f} s wall, {os.cpu_count()} cores): {total:.1f} s in all")
    for name, seconds in sorted(used.items(), key=lambda item: -item[1]):
        if seconds >= 0.05 * run.seconds:
            per_command = seconds / len(run.latencies) * 1000
            print(f"  {name}: {seconds:.1f} s ({seconds / run.seconds:.0%} of a core, {per_command:.2f} ms a {unit})")


def cpu_a_command(before: dict[str, float], after: dict[str, float], commands: int) -> str:
    """Each process's CPU a command over a round, the largest first: where a slower round's time went."""
    used = sorted(((seconds, name) for name, seconds in cpu_used(before, after).items()), reverse=True)

    def short(name: str) -> str:  # "weed mini [12]" -> weed, "python infra.cli api [13]" -> api
        words = name.split(" [")[0].split()
        return words[-1] if words[:2] == ["python", "infra.cli"] else words[0]

    shares = [f"{short(name)} {seconds / commands * 1000:.1f}" for seconds, name in used[:5]]
    return "; CPU ms a command: " + ", ".join(shares)


def broker_size(stack: Stack) -> str:
    """The most record-batch objects a partition of each topic holds on the embedded broker (what a fetch lists)."""
    settings = stack.settings()
    client = make_client(settings)
    sizes = {
        topic.name: max(
            len(batch_bases(client, settings.broker_log_bucket, TopicPartition(topic.name, p)))
            for p in range(topic.partitions)
        )
        for topic in (COMMANDS, EVENTS)
    }
    return "; batches per partition at most: " + ", ".join(f"{name} {size}" for name, size in sizes.items())


def print_hops(stack: Stack) -> None:
    """Where the time of a create goes: API -> decision (the command's and the event's occurred_at)."""
    sent = {
        r.json()["command_id"]: datetime.fromisoformat(r.json()["occurred_at"])
        for r in read_topic(stack, COMMANDS.name)
        if r.json().get("type") == "workspace.create"
    }
    hops = sorted(
        (datetime.fromisoformat(e["occurred_at"]) - sent[e["command_id"]]).total_seconds()
        for e in (r.json() for r in read_topic(stack, EVENTS.name))
        if e.get("type") == "workspace.created" and e["command_id"] in sent
    )
    if hops:
        pct = {p: hops[min(len(hops) - 1, int(p / 100 * len(hops)))] * 1000 for p in (50, 99)}
        print(f"API publish -> decided: p50 {pct[50]:.0f} ms, p99 {pct[99]:.0f} ms ({len(hops)} commands)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=int, default=3000, help="raw messages for the produce baseline")
    parser.add_argument("--commands", type=int, default=2000, help="commands for the pipeline figure")
    parser.add_argument("--total", type=int, default=100_000, help="commands written in rounds (0: skip)")
    parser.add_argument("--round", type=int, default=10_000, help="commands per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        stack = start_stack(Path(tmp) / "stack", extra_env={"LORAPLANE_NODE": "off"})
        try:
            asyncio.run(run(stack, args))
        finally:
            stop_stack(stack)


if __name__ == "__main__":
    main()
