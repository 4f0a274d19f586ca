"""Replay and start-up benchmark: a long event log read from offset 0, by `loraplane replay` (into a fresh SQLite
read model) and by the worker's and the node agent's start-up fold, against raw aiokafka reading the same log.

Run `python bench/replay.py` (`--events N`, default 1,000,000). It starts the embedded broker and S3 only (Tansu on
SeaweedFS, `LocalStack.start_services`, in a temporary directory: no API or agents to react to the log), then:
  1. writes N realistic events (`tests/event_history.py`: workspaces, API keys, adapters, seed 004 files,
     deployments placed, started and deleted with adapters loaded, gateway usage, rejections; the real payloads in
     the real envelopes) straight to a fresh `loraplane.events`, keyed and partitioned as `infra.kafka.publish`
     does, in record batches of `--batch` records (Tansu stores one S3 object per batch). With `--archive-segment N`,
     all but the newest batches of each partition then go to archive segments of N records and leave the broker, the
     state a long-lived `loraplane up` leaves (its log keeper stores a segment a round), so every read below goes
     through the archive, the raw one too (`--merge`: the segments merged as the keeper merges them);
  2. raw: a plain aiokafka consumer, the replay's fetch settings, reads every partition from offset 0 to its end and
     decodes nothing (the baseline);
  3. `loraplane replay --database-url sqlite+aiosqlite:///...` as a subprocess, its own figure and the wall time;
  4. the worker's start-up (`EventLogFollower.start()` folding every aggregate of `agents.app`) and the node agent's
     (the cluster and deployments), each twice and each in a fresh process, as a restart is: once folding the log
     (and, with snapshots on, writing one: LORAPLANE_SNAPSHOT_EVERY), then again (with a snapshot, the tail only).
Goals (issue 10): replay >= 20,000 events/s; start-up with snapshots <= 5 s at 1M events. Writing 1M events took
75 s on a quiet machine here, 86% of it building and encoding the pydantic envelopes; the whole default run about
ten minutes. `--events 100000` is a quick run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
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
from infra.log_archive import LogArchive
from infra.log_keeper import MERGE_RUN, SEGMENT_RECORDS, archive_range
from infra.s3 import make_client
from infra.settings import Settings
from infra.tansu_objects import batch_bases, delete_batches
from streams.topics import EVENTS
from tests.event_history import History, write_log

ARCHIVE_KEEP = 2  # batches each partition keeps on the broker with --archive-segment


async def archive_log(settings: Settings, segment_records: int, merge: bool) -> tuple[int, int]:
    """Leave the log as a long-lived `loraplane up` does: each partition's records below its newest `ARCHIVE_KEEP`
    batches in archive segments of `segment_records` (its keeper stores one a round, a few hundred records), those
    batches deleted from the broker; with `merge`, the segments merged as the keeper merges them over time. (segment
    objects left, batches deleted)"""
    client = make_client(settings)
    bucket = settings.broker_log_bucket
    archive = LogArchive(client, bucket)
    broker_only = settings.model_copy(update={"log_archive": False})
    deleted = 0
    for partition in range(EVENTS.partitions):
        tp = TopicPartition(EVENTS.name, partition)
        bases = await asyncio.to_thread(batch_bases, client, bucket, tp)
        if len(bases) <= ARCHIVE_KEEP:
            continue
        cut = bases[-ARCHIVE_KEEP]
        await archive_range(broker_only, archive, tp, 0, cut, segment_records)
        deleted += await asyncio.to_thread(delete_batches, client, bucket, tp, bases[:-ARCHIVE_KEEP])
        while merge and (await asyncio.to_thread(archive.compact, tp, SEGMENT_RECORDS, MERGE_RUN)).merged:
            pass
    segments = sum(len(archive.segments(TopicPartition(EVENTS.name, p))) for p in range(EVENTS.partitions))
    return segments, deleted


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
    cpu, started = time.process_time(), time.perf_counter()
    await follower.start()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    await follower.stop()
    return elapsed, cpu, len(follower.state.entries)


START_UPS = {
    "worker": ("worker", {a.name: a for a in AGGREGATES}),
    "node agent": ("node-bench", {CLUSTER.name: CLUSTER, DEPLOYMENTS.name: DEPLOYMENTS}),
}


def start_ups() -> dict[str, list[tuple[float, float, int]]]:
    """Each start-up twice, each in a process of its own (`--start-up`), as a restarted worker or node agent is."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for kind in START_UPS:
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, __file__, "--start-up", kind], capture_output=True, text=True, timeout=3600
            )
            sys.stdout.write(done.stderr)  # what the start-up logged of itself
            if done.returncode != 0:
                raise SystemExit(f"the {kind} start-up failed ({done.returncode})")
            found = json.loads(done.stdout.strip().splitlines()[-1])
            out.setdefault(kind, []).append((found["wall"], found["cpu"], found["aggregates"]))
    return out


def start_up(kind: str) -> int:
    """One start-up of `kind` against the stack in this process's environment; its figures as a JSON line."""
    who, aggregates = START_UPS[kind]
    wall, cpu, folded = asyncio.run(time_start(Settings(), aggregates, who))
    print(json.dumps({"wall": wall, "cpu": cpu, "aggregates": folded}))
    return 0


async def services(data_dir: Path) -> tuple[LocalStack, dict[str, str]]:
    embedded = {"kafka_bootstrap_servers": None, "s3_endpoint": None, "broker_port": 0, "s3_port": 0}
    stack = LocalStack(Settings.model_validate({"data_dir": data_dir, **embedded}), log=lambda line: print(f"  {line}"))
    return stack, await stack.start_services()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log (default 1,000,000)")
    parser.add_argument("--batch", type=int, default=500, help="records per record batch written (default 500)")
    parser.add_argument("--seed", type=int, default=20_261_128)
    parser.add_argument("--start-up", choices=sorted(START_UPS), help=argparse.SUPPRESS)  # one, in a child process
    parser.add_argument(
        "--archive-segment",
        type=int,
        default=0,
        help="archive all but the newest batches of each partition in segments of this many records, as the log"
        " keeper does, so the reads go through the archive (default 0: the log stays on the broker)",
    )
    parser.add_argument(
        "--merge", action="store_true", help="with --archive-segment: merge the segments as the keeper does"
    )
    args = parser.parse_args()
    # What the start-ups say of themselves: the snapshot loaded (and how long that took), the events folded.
    logging.basicConfig(format="  %(name)s: %(message)s")
    for name in ("agents.event_log", "agents.snapshotting"):
        logging.getLogger(name).setLevel(logging.INFO)
    if args.start_up:
        return start_up(args.start_up)
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        return asyncio.run(run(Path(tmp), args.events, args.batch, args.seed, args.archive_segment, args.merge))


def _written(done: int) -> None:
    print(f"  {done:,} events written", flush=True)


async def run(work: Path, events: int, batch: int, seed: int, archive_segment: int, merge: bool) -> int:
    stack, env = await services(work / "data")
    try:
        os.environ.update(env)
        settings = Settings()
        print(f"writing {events:,} events in batches of up to {batch} records per partition")
        history = itertools.islice(History(random.Random(seed)).events(), events)
        build, wrote, batches = await write_log(env["KAFKA_BOOTSTRAP_SERVERS"], history, batch, _written)
        print(f"  written in {wrote:.1f}s ({build:.1f}s building and encoding), {batches:,} record batches")
        if archive_segment:
            began = time.perf_counter()
            segments, deleted = await archive_log(settings, archive_segment, merge)
            print(
                f"  archived in {time.perf_counter() - began:.1f}s: {segments:,} segment objects"
                f" ({archive_segment} records each{', merged' if merge else ''}), {deleted:,} batches left the broker"
            )

        raw_count, raw_s = await read_raw(settings)
        replayed, replay_s, replay_wall, replay_cpu = await asyncio.to_thread(
            run_replay, dict(os.environ), work / "rebuilt.db"
        )
        folds = await asyncio.to_thread(start_ups)
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
