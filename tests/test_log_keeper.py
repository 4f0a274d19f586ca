"""The embedded broker's log keeper on a stack of its own: partitions archived and trimmed, the log still whole.

The stack keeps 3 record batches per partition (LORAPLANE_LOG_KEEP_BATCHES), so a few dozen writes trim it. Then
the broker alone no longer holds offset 0, and every reader of ours still reads the whole log from the archive and
the broker: a worker and a read model starting from nothing, `events export` and `verify`, `replay`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from infra.kafka import read_from_start
from infra.log_archive import LogArchive
from infra.s3 import make_client
from infra.tansu_objects import batch_bases
from streams.topics import COMMANDS, EVENTS
from tests.services import external_services
from tests.support import Api, Stack, read_topic, start_stack, stop_stack, wait_until

KEEP = 3
KEEPER_ENV = {
    "LORAPLANE_NODE": "off",
    "LORAPLANE_LOG_KEEP_BATCHES": str(KEEP),
    "LORAPLANE_LOG_KEEPER_EVERY_S": "0.5",
    "LORAPLANE_SNAPSHOT_EVERY": "0",  # start-ups fold the whole log, through the archive
}
WORKSPACES = 60


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with external_services() as external:
        if external:
            pytest.skip("the log keeper runs only beside the embedded broker")
        data_dir = Path(tmp_path_factory.mktemp("log-keeper"))
        stack = start_stack(data_dir, extra_env=KEEPER_ENV)
        try:
            yield stack
        finally:
            left = stop_stack(stack)
            assert not left, f"processes left behind: {left}"


def _batches(stack: Stack, topic: str) -> dict[int, list[int]]:
    settings = stack.settings()
    client = make_client(settings)
    return {p: batch_bases(client, settings.broker_log_bucket, TopicPartition(topic, p)) for p in range(6)}


def _first_offsets_on_the_broker(stack: Stack) -> dict[int, int]:
    """Where a plain consumer that knows nothing of the archive starts reading each partition from its beginning."""

    async def read() -> dict[int, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            partitions = [TopicPartition(EVENTS.name, p) for p in range(EVENTS.partitions)]
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, 0)
            first: dict[int, int] = {}
            while len(first) < len(partitions):
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    if records:
                        first.setdefault(tp.partition, records[0].offset)
            return first
        finally:
            await consumer.stop()

    return asyncio.run(read())


def _names(stack: Stack, key: str) -> set[str]:
    with Api(stack, key) as api:
        out: set[str] = set()
        page = 1
        while True:
            answer = api.get("/v2/workspaces", params={"page": page, "page_size": 1000})
            if answer.status_code != 200 or not answer.json()["data"]:
                return out
            out |= {w["name"] for w in answer.json()["data"]}
            page += 1


def test_the_keeper_trims_the_broker_and_every_reader_still_reads_the_whole_log(kept: Stack, tmp_path: Path) -> None:
    key = kept.issue_key("admin", "keeper")
    tag = uuid.uuid4().hex[:6]
    names = {f"kept-{tag}-{i}" for i in range(WORKSPACES)}
    with Api(kept, key) as api:
        for name in sorted(names):
            assert api.post("/v2/workspaces", params={"wait": 30}, json={"name": name}).status_code == 201

    # the broker keeps few batches per partition: the rest of the events are archived, the commands dropped
    def trimmed() -> bool:
        events, commands = _batches(kept, EVENTS.name), _batches(kept, COMMANDS.name)
        return all(len(b) <= 2 * KEEP for b in events.values()) and all(len(b) <= 2 * KEEP for b in commands.values())

    wait_until(trimmed, timeout=60, interval=0.5, message="the keeper to trim every partition")
    first = _first_offsets_on_the_broker(kept)
    assert sum(first.values()) > 0, f"the broker still starts every partition at 0: {first}"
    settings = kept.settings()
    archive = LogArchive(make_client(settings), settings.broker_log_bucket)
    for partition, offset in first.items():
        assert archive.end(TopicPartition(EVENTS.name, partition)) >= offset

    # our readers see every offset from 0, once, in order
    records = read_topic(kept, EVENTS.name)
    offsets: dict[int, list[int]] = defaultdict(list)
    for record in records:
        offsets[record.partition].append(record.offset)
    for partition, seen in offsets.items():
        assert seen == list(range(len(seen))), f"partition {partition} is not whole"
    created = {r.json()["aggregate_id"] for r in records if r.json()["type"] == "workspace.created"}
    assert names <= created

    exported = tmp_path / "all.jsonl"
    result = kept.cli("events", "export", "--output", str(exported))
    assert result.returncode == 0, result.stderr
    assert len(exported.read_text().splitlines()) == len(records)
    assert names <= {json.loads(line)["aggregate_id"] for line in exported.read_text().splitlines()}
    verified = kept.cli("events", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{len(records)} records" in verified.stdout and "no problems" in verified.stdout

    rebuilt = tmp_path / "rebuilt.db"
    replayed = kept.cli("replay", "--database-url", f"sqlite+aiosqlite:///{rebuilt}")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(records)} events" in replayed.stdout
    with sqlite3.connect(rebuilt) as db:
        assert names <= {row[0] for row in db.execute("SELECT name FROM workspaces")}


def _read_archive(archive: LogArchive, tp: TopicPartition, end: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record from offset 0 to `end`, as a reader goes: segment after segment."""
    out: list[ConsumerRecord[bytes, bytes]] = []
    while len(out) < end:
        got = archive.read(tp, len(out), end, limit=7)
        assert got, f"nothing archived at offset {len(out)} of {tp}"
        out += got
    return out


def test_small_segments_merge_and_a_reader_that_listed_before_still_reads_each_record_once(kept: Stack) -> None:
    settings = kept.settings()
    tp = TopicPartition(f"archive-merge-{uuid.uuid4().hex[:6]}", 0)
    writer = LogArchive(make_client(settings), settings.broker_log_bucket)
    records = [
        ConsumerRecord(tp.topic, 0, offset, 1_700_000_000_000 + offset, 0, b"k", f"v{offset}".encode(), None, 1, 4, [])
        for offset in range(240)
    ]
    for first in range(0, 200, 20):  # ten rounds of the keeper, a small segment each
        writer.put(tp, records[first : first + 20])
    reader = LogArchive(make_client(settings), settings.broker_log_bucket)
    assert [r.value for r in reader.read(tp, 0, 200)] == [r.value for r in records[:20]]  # it listed ten segments

    done = writer.compact(tp, max_records=5_000, min_run=8)
    assert (done.merged, done.removed_covered) == (10, 0)
    assert [(s.first, s.end) for s in writer.segments(tp)] == [(0, 200)]
    # the reader's listing names segments that are gone now: it lists again and reads on from the merged one
    assert [r.value for r in _read_archive(reader, tp, 200)] == [r.value for r in records[:200]]

    # a merge cut short between storing the merged segment and removing its parts: each record is read once all the
    # same, and the next compaction removes the parts
    writer.put(tp, records[200:220])
    writer.put(tp, records[220:240])
    writer.put(tp, records[200:240])
    fresh = LogArchive(make_client(settings), settings.broker_log_bucket)
    assert [r.offset for r in _read_archive(fresh, tp, 240)] == list(range(240))
    done = writer.compact(tp, max_records=5_000, min_run=8)
    assert (done.merged, done.removed_covered) == (0, 2)
    assert [(s.first, s.end) for s in writer.segments(tp)] == [(0, 200), (200, 240)]
    merged = writer.compact(tp, max_records=5_000, min_run=2)
    assert merged.merged == 2
    assert [(s.first, s.end) for s in writer.segments(tp)] == [(0, 240)]
    again = LogArchive(make_client(settings), settings.broker_log_bucket)
    back = _read_archive(again, tp, 240)
    assert [(r.offset, r.timestamp, r.key, r.value) for r in back] == [
        (r.offset, r.timestamp, r.key, r.value) for r in records
    ]


def test_a_worker_and_a_read_model_starting_from_nothing_fold_the_archived_log(kept: Stack) -> None:
    key = kept.issue_key("admin", "restart")
    before = _names(kept, key)
    assert sum(_first_offsets_on_the_broker(kept).values()) > 0  # the log is trimmed (the test before wrote it)

    # the worker, killed, starts again and folds the whole log (no snapshots here): it still knows every name
    kept_pid = kept.pids()["worker"]
    os.kill(kept_pid, signal.SIGKILL)
    wait_until(lambda: kept.pids().get("worker") not in (None, kept_pid), timeout=60, message="the worker restarted")
    taken = sorted(n for n in before if n.startswith("kept-"))[0]
    with Api(kept, key) as api:
        refused = api.post("/v2/workspaces", params={"wait": 60}, json={"name": taken})
        assert refused.status_code == 409, refused.text  # decided against the folded, archived creation

    # the read model deleted while stopped is projected again from offset 0
    data_dir = kept.data_dir
    left = stop_stack(kept)
    assert not left, f"processes left behind: {left}"
    for path in data_dir.glob("readmodel.db*"):
        path.unlink()
    restarted = start_stack(data_dir, extra_env=KEEPER_ENV)
    kept.process, kept.env = restarted.process, restarted.env
    kept.api_url = restarted.api_url
    wait_until(lambda: _names(kept, key) >= before, timeout=120, interval=1, message="the read model rebuilt")
    with Api(kept, key) as api:
        name = f"after-{uuid.uuid4().hex[:6]}"
        assert api.post("/v2/workspaces", params={"wait": 60}, json={"name": name}).status_code == 201


def test_a_reader_not_told_of_the_archive_warns_that_it_misses_the_start(
    kept: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader built without LORAPLANE_LOG_ARCHIVE (a hand-made Settings, a shell without `loraplane up`'s stack.env)
    starts at the broker's oldest batch: it says so, where the archive-aware read starts every partition at 0."""
    assert sum(_first_offsets_on_the_broker(kept).values()) > 0  # the log is trimmed (the tests before wrote it)

    def first_offsets(log_archive: bool) -> dict[int, int]:
        first: dict[int, int] = {}

        def on_records(tp: TopicPartition, records: list[Any]) -> None:
            first.setdefault(tp.partition, records[0].offset)

        asyncio.run(read_from_start(kept.settings(log_archive=log_archive), EVENTS, on_records))
        return first

    def warnings() -> list[str]:  # ours only: aiokafka may warn of its own matters meanwhile
        return [r.getMessage() for r in caplog.records if r.name == "infra.kafka"]

    with caplog.at_level(logging.WARNING, logger="infra.kafka"):
        whole = first_offsets(True)
        assert not warnings()
        partial = first_offsets(False)
    assert set(whole.values()) == {0}
    trimmed = {p: offset for p, offset in partial.items() if offset > 0}
    assert trimmed
    warned = warnings()
    assert len(warned) == len(trimmed)
    for partition, offset in trimmed.items():
        assert any(f"partition={partition})" in m and f"offset {offset} " in m for m in warned), warned
    assert all("LORAPLANE_LOG_ARCHIVE=true" in m for m in warned)
