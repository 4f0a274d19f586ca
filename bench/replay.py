"""Replay and start-up benchmark: a long event log read from offset 0, by `loraplane replay` (into a fresh SQLite
read model) and by the worker's and the node agent's start-up fold, against raw aiokafka reading the same log.

Run `python bench/replay.py` (`--events N`, default 1,000,000). It starts the embedded broker and S3 only (Tansu on
SeaweedFS, `LocalStack.start_services`, in a temporary directory: no API or agents to react to the log), then:
  1. writes N realistic events (`tests/event_history.py`: workspaces, API keys, adapters, seed 004 files,
     deployments placed, started and deleted with adapters loaded, gateway usage, rejections; the real payloads in
     the real envelopes) straight to a fresh `loraplane.events`, keyed and partitioned as `infra.kafka.publish`
     does, in record batches of `--batch` records (Tansu stores one S3 object per batch);
  2. raw: a plain aiokafka consumer, the replay's fetch settings, reads every partition from offset 0 to its end and
     decodes nothing (the baseline);
  3. `loraplane replay --database-url sqlite+aiosqlite:///...` as a subprocess, its own figure and the wall time;
  4. the worker's start-up (`EventLogFollower.start()` folding every aggregate of `agents.app`) and the node agent's
     (the cluster and deployments), each twice: once folding the log (and, with snapshots on, writing one:
     LORAPLANE_SNAPSHOT_EVERY), then again (with a snapshot, the tail only).
Goals (issue 10): replay >= 20,000 events/s; start-up with snapshots <= 5 s at 1M events. Writing 1M events took
75 s on a quiet machine here, 86% of it building and encoding the pydantic envelopes; the whole default run about
ten minutes. `--events 100000` is a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import logging
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import ConsumerRecord, TopicPartition

from agents.app import AGGREGATES
from agents.cluster import CLUSTER
from agents.deployments import DEPLOYMENTS
from agents.event_log import EventLogFollower
from agents.state import AgentState
from infra.kafka import make_bulk_consumer, read_to_end, stop_quietly
from infra.local_stack import LocalStack
from infra.settings import Settings
from streams.topics import EVENTS
from tests.event_history import History, write_log


async def read_raw(settings: Settings) -> tuple[int, float]:
    """Every record from offset 0, nothing decoded: the replay's consumer settings and loop, no work per record."""
    consumer = make_bulk_consumer(settings)
    await consumer.start()
    try:
        partitions = [TopicPartition(EVENTS.name, p) for p in sorted(consumer.partitions_for_topic(EVENTS.name) or ())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        count = 0

        def counted(_tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
            nonlocal count
            count += len(records)

        started = time.perf_counter()
        await read_to_end(
            consumer, partitions, counted, fetch_max_wait_ms=settings.kafka_bulk_fetch_max_wait_ms, max_records=5000
        )
        return count, time.perf_counter() - started
    finally:
        await stop_quietly(consumer)


def run_replay(env: dict[str, str], database: Path) -> tuple[int, float, float, float]:
    """`loraplane replay` into a fresh SQLite file: (events, its own seconds, wall seconds with the process, CPU
    seconds of the process: on a shared machine the wall time also counts the time it waited for a core)."""
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "replay", "--database-url", f"sqlite+aiosqlite:///{database}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - started
    found = re.search(r"replayed (\d+) events in ([\d.]+)s", done.stdout)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"loraplane replay failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
    return int(found[1]), float(found[2]), wall, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def time_start(settings: Settings, aggregates: dict[str, Any], who: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of this process, aggregates folded). Snapshots under `snapshots/<who>/` as the
    worker's and the node agent's own (off with LORAPLANE_SNAPSHOT_EVERY=0); stop() waits for one being written."""
    follower = EventLogFollower(settings, AgentState(aggregates), snapshots_as=who)
    # A restarted worker is a fresh process: collect what the start-up before left (its state, 10M objects at 1M
    # events) here rather than at some moment of the timed one.
    gc.collect()
    cpu, started = time.process_time(), time.perf_counter()
    await follower.start()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await follower.stop()
    return elapsed, cpu, len(follower.state.entries)


async def start_ups(settings: Settings) -> dict[str, list[tuple[float, float, int]]]:
    kinds = {
        "worker": ("worker", {a.name: a for a in AGGREGATES}),
        "node agent": ("node-bench", {CLUSTER.name: CLUSTER, DEPLOYMENTS.name: DEPLOYMENTS}),
    }
    return {
        kind: [await time_start(settings, aggregates, who) for _ in range(2)]
        for kind, (who, aggregates) in kinds.items()
    }


async def services(data_dir: Path) -> tuple[LocalStack, dict[str, str]]:
    embedded = {"kafka_bootstrap_servers": None, "s3_endpoint": None, "broker_port": 0, "s3_port": 0}
    stack = LocalStack(Settings.model_validate({"data_dir": data_dir, **embedded}), log=lambda line: print(f"  {line}"))
    return stack, await stack.start_services()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=500, help="records per record batch written (default 500)")
    parser.add_argument("--seed", type=int, default=20_261_128)
    args = parser.parse_args()
    # What the start-ups say of themselves: the snapshot loaded (and how long that took), the events folded.
    logging.basicConfig(format="  %(name)s: %(message)s")
    for name in ("agents.event_log", "agents.snapshotting"):
        logging.getLogger(name).setLevel(logging.INFO)
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        return asyncio.run(run(Path(tmp), args.events, args.batch, args.seed))


def _written(done: int) -> None:
    print(f"  {done:,} events written", flush=True)


async def run(work: Path, events: int, batch: int, seed: int) -> int:
    stack, env = await services(work / "data")
    try:
        os.environ.update(env)
        settings = Settings()
        print(f"writing {events:,} events in batches of up to {batch} records per partition")
        history = itertools.islice(History(random.Random(seed)).events(), events)
        build, wrote, batches = await write_log(env["KAFKA_BOOTSTRAP_SERVERS"], history, batch, _written)
        print(f"  written in {wrote:.1f}s ({build:.1f}s building and encoding), {batches:,} record batches")

        raw_count, raw_s = await read_raw(settings)
        replayed, replay_s, replay_wall, replay_cpu = await asyncio.to_thread(
            run_replay, dict(os.environ), work / "rebuilt.db"
        )
        folds = await start_ups(settings)
    finally:
        # Stopping the broker under aiokafka's background tasks makes them log every failed reconnect.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        await stack.stop()

    raw_rate, replay_rate = raw_count / raw_s, replayed / replay_s
    wait = settings.kafka_bulk_fetch_max_wait_ms
    print(f"\nlog: {events:,} events, {batches:,} record batches, bulk fetch wait {wait} ms")
    print(f"raw aiokafka read, nothing decoded:  {raw_count:>9,} events {raw_s:7.1f} s {raw_rate:9,.0f} events/s")
    print(
        f"loraplane replay (SQLite):           {replayed:>9,} events {replay_s:7.1f} s {replay_rate:9,.0f} events/s"
        f"  ratio {replay_rate / raw_rate:.2f}"
    )
    print(
        f"  the process: wall {replay_wall:.1f} s with its start,"
        f" CPU {replay_cpu:.1f} s ({replayed / replay_cpu:,.0f} events/s of CPU)"
    )
    snapshot_every = os.environ.get("LORAPLANE_SNAPSHOT_EVERY", "unset")
    for kind, runs in folds.items():
        (first, first_cpu, aggregates), (second, second_cpu, _) = runs
        print(
            f"{kind} start-up: first {first:6.1f} s ({events / first:8,.0f} events/s, {aggregates:,} aggregates),"
            f" again {second:6.1f} s  ratio to raw read {first / raw_s:.2f} / {second / raw_s:.2f}"
            f"  (CPU {first_cpu:.1f} s / {second_cpu:.1f} s)"
        )
    print(f"LORAPLANE_SNAPSHOT_EVERY={snapshot_every}")
    print("goals: replay >= 20,000 events/s; start-up with a snapshot <= 5 s at 1M events")
    return 0 if replayed == raw_count == events else 1


if __name__ == "__main__":
    raise SystemExit(main())
