"""Start-up from a snapshot against the real broker and S3 of the test stack: a follower loads the newest valid
snapshot and folds only the tail, to the same state as a fold from offset 0; a damaged snapshot is ignored."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

import streams.catalog  # noqa: F401
from agents import snapshots
from agents.app import AGGREGATES
from agents.event_log import EventLogFollower
from agents.state import AgentState
from infra.kafka import stop_quietly
from infra.s3 import make_client
from infra.settings import Settings
from infra.snapshot_store import SnapshotStore
from streams.envelope import SYSTEM_ACTOR
from streams.serialization import encode, envelope_for, key_for
from streams.topics import EVENTS
from streams.workspaces import WorkspaceCreated
from tests.support import Stack

EVERY = 50


def settings_for(stack: Stack, tmp_path: Path, **overrides: object) -> Settings:
    return stack.settings(kafka_fetch_max_wait_ms=20, data_dir=tmp_path, **overrides)


async def append_events(stack: Stack, count: int) -> dict[int, int]:
    """Events written straight to the log, as a worker would have written them: per partition, the offset after the
    last one written."""
    prefix = f"snap-{uuid.uuid4().hex[:8]}"
    events = [
        envelope_for(
            WorkspaceCreated(name=f"{prefix}-{i}"),
            aggregate_id=f"{prefix}-{i}",
            actor=SYSTEM_ACTOR,
            aggregate_version=1,
        )
        for i in range(count)
    ]
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        sent = [await producer.send("loraplane.events", value=encode(e), key=key_for(e)) for e in events]
        stored = await asyncio.gather(*sent)
    finally:
        await stop_quietly(producer)
    ends: dict[int, int] = {}
    for record in stored:
        ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
    return ends


async def started(settings: Settings, who: str | None) -> EventLogFollower:
    follower = EventLogFollower(settings, AgentState({a.name: a for a in AGGREGATES}), snapshots_as=who)
    await follower.start()
    return follower


async def positions(follower: EventLogFollower) -> dict[int, int]:
    consumer = follower._consumer
    assert consumer is not None
    return {tp.partition: await consumer.position(tp) for tp in follower._partitions}


async def same_end(*followers: EventLogFollower, past: dict[int, int] | None = None) -> dict[int, int]:
    """Catch every follower up until all stand at the same positions (the stack may still be writing), at or past
    `past` (what the test wrote: a catch-up reads only up to the end its consumer has seen so far)."""
    for _ in range(50):
        for follower in followers:
            await follower.catch_up()
        reached = [await positions(f) for f in followers]
        arrived = all(reached[0].get(p, 0) >= end for p, end in (past or {}).items())
        if arrived and all(r == reached[0] for r in reached):
            return reached[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"followers never met: {reached}")


def test_start_up_loads_the_newest_snapshot_and_folds_only_the_tail(stack: Stack, tmp_path: Path) -> None:
    who = f"test-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, tmp_path, snapshot_every=EVERY, snapshot_keep=2)
    store = SnapshotStore(make_client(settings), settings.s3_bucket, who)

    async def scenario() -> None:
        await append_events(stack, EVERY + 10)
        first = await started(settings, who)  # no snapshot yet: folds from 0, then writes one
        assert first.snapshot_loaded is None and first.tail_folded >= EVERY + 10
        await first.stop()
        [written] = store.keys()
        assert written == store.key_for(first.tail_folded)

        await append_events(stack, 30)
        second = await started(settings, who)
        full = await started(settings, None)  # snapshots off: from offset 0
        try:
            loaded = second.snapshot_loaded
            assert loaded is not None and loaded.total_offset == first.tail_folded
            end = sum((await positions(second)).values())
            assert second.tail_folded == end - loaded.total_offset, "read more than the tail"
            assert 30 <= second.tail_folded < full.tail_folded
            await same_end(second, full)
            assert second.state == full.state
            assert len(second.state.entries) > EVERY

            # While following: a snapshot every EVERY events, of the state at the positions it names.
            await same_end(second, full, past=await append_events(stack, EVERY + 5))
            assert second.snapshots is not None
            await second.snapshots.idle()
            newest = store.keys()[0]
            assert newest != written and len(store.keys()) == 2
            snapshot = snapshots.load(store.get(newest), second.state.aggregates)
            assert snapshot.positions == await positions(second)
            assert snapshots.snapshot_equals_fold(full.state, snapshot)
        finally:
            await second.stop()
            await full.stop()

    asyncio.run(scenario())


def test_a_damaged_snapshot_is_ignored(stack: Stack, tmp_path: Path) -> None:
    who = f"test-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, tmp_path, snapshot_every=EVERY, snapshot_keep=3)
    store = SnapshotStore(make_client(settings), settings.s3_bucket, who)

    def damage(key: str) -> None:
        head, _, body = gzip.decompress(store.get(key)).partition(b"\n")
        altered = body.replace(b'"exists":true', b'"exists":false', 1)
        assert altered != body
        store.put(key, gzip.compress(head + b"\n" + altered))

    async def scenario() -> None:
        await append_events(stack, EVERY + 10)
        first = await started(settings, who)
        await first.stop()
        [older] = store.keys()
        damage(older)
        # The only snapshot is damaged: ignored, the log folded from offset 0 (and a good one written in its place).
        again = await started(settings, who)
        full = await started(settings, None)
        try:
            assert again.snapshot_loaded is None
            # the whole log, not a tail; `full` started later, so the stack may have written one more event by then
            assert first.tail_folded <= again.tail_folded <= full.tail_folded
            await same_end(again, full)
            assert again.state == full.state
        finally:
            await again.stop()
            await full.stop()

        # With a good snapshot behind a damaged newer one, the older is used.
        await append_events(stack, EVERY + 10)
        await (await started(settings, who)).stop()
        newest, good = store.keys()[:2]  # the one just written, and the one rewritten after the damage
        damage(newest)
        last = await started(settings, who)
        full = await started(settings, None)
        try:
            assert last.snapshot_loaded is not None
            assert store.key_for(last.snapshot_loaded.total_offset) == good
            await same_end(last, full)
            assert last.state == full.state
        finally:
            await last.stop()
            await full.stop()

    asyncio.run(scenario())


def test_a_snapshot_beyond_the_end_of_the_log_is_ignored(stack: Stack, tmp_path: Path) -> None:
    """A log reset while S3 kept the snapshots: their positions lie past the log's end, so they cannot be used."""
    who = f"test-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, tmp_path, snapshot_every=EVERY)
    store = SnapshotStore(make_client(settings), settings.s3_bucket, who)

    async def scenario() -> None:
        await append_events(stack, 5)
        planted = AgentState({a.name: a for a in AGGREGATES})
        beyond = {p: 10**9 for p in range(EVENTS.partitions)}
        store.put(store.key_for(sum(beyond.values())), snapshots.dump(planted, beyond, who))
        follower = await started(settings, who)
        full = await started(settings, None)
        try:
            assert follower.snapshot_loaded is None
            await same_end(follower, full)
            assert follower.state == full.state and follower.state.entries
        finally:
            await follower.stop()
            await full.stop()

    asyncio.run(scenario())


def test_events_verify_compares_the_newest_snapshot_with_a_fold(stack: Stack, tmp_path: Path) -> None:
    who = f"verify-{uuid.uuid4().hex[:8]}"
    settings = settings_for(stack, tmp_path, snapshot_every=EVERY)
    store = SnapshotStore(make_client(settings), settings.s3_bucket, who)

    async def snapshot_written() -> None:
        await append_events(stack, EVERY + 5)
        follower = await started(settings, who)
        await follower.stop()

    asyncio.run(snapshot_written())
    [written] = store.keys()
    agreed = stack.cli("events", "verify", "--snapshot", who, timeout=300)
    assert agreed.returncode == 0, agreed.stdout + agreed.stderr
    assert f"snapshot of {who} at offset" in agreed.stdout and "equals a fold" in agreed.stdout

    # A snapshot that is well formed (its hash matches) but holds a state the log does not give.
    good = snapshots.load(store.get(written), {a.name: a for a in AGGREGATES})
    altered = AgentState(dict(good.state.aggregates), dict(good.state.entries))
    dropped = sorted(altered.entries)[0]
    del altered.entries[dropped]
    store.put(store.key_for(good.total_offset + 1), snapshots.dump(altered, good.positions, who))
    differs = stack.cli("events", "verify", "--snapshot", who, timeout=300)
    assert differs.returncode == 1, differs.stdout + differs.stderr
    assert f"{dropped[0]}/{dropped[1]}: missing from the snapshot" in differs.stdout
