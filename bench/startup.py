"""Start-up of a worker's fold (EventLogFollower over every aggregate) with and without a snapshot.

Run `python bench/startup.py [--events 20000]`. Starts the embedded stack (no node agent), writes the events
straight to `loraplane.events` in large record batches (workspaces created, seed 004 files reserved and stored in
one directory, usage records), then times `EventLogFollower.start()`: from offset 0 with snapshots off; with snapshots
on and none stored yet (folds from 0, then writes one: its encode and upload time is shown apart); from that
snapshot with no tail; and from it with a tail of `--tail` events.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaProducer

import streams.catalog  # noqa: F401
from agents.app import AGGREGATES
from agents.event_log import EventLogFollower
from agents.state import AgentState
from infra.kafka import stop_quietly
from infra.settings import Settings
from streams.artifacts import Analysis, StoredFile, blob_key
from streams.envelope import SYSTEM_ACTOR, Envelope
from streams.lora_files import LoraFileReserved, LoraFileStored
from streams.naming import EntityType
from streams.serialization import encode, envelope_for, key_for
from streams.usage import UsageRecorded, UsageRow
from streams.workspaces import WorkspaceCreated

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.support import Stack, start_stack, stop_stack


def realistic(count: int, start: int) -> list[Envelope]:
    events: list[Envelope] = []
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    for i in range(start, start + count):
        kind = i % 4
        if kind == 0:
            events.append(
                envelope_for(
                    WorkspaceCreated(name=f"ws-{i}"), aggregate_id=f"ws-{i}", actor=SYSTEM_ACTOR, aggregate_version=1
                )
            )
        elif kind == 2:  # the file reserved just before, validated (so no worker reruns its job)
            path = f"styles/f{i - 1}.safetensors"
            sha = f"{i - 1:064x}"
            stored = LoraFileStored(
                partial_path=path,
                file=StoredFile(path=f"f{i - 1}.safetensors", key=blob_key(sha), sha256=sha, size=1000 + i),
                analysis=Analysis(container="safetensors", format="peft", rank=8),
            )
            events.append(envelope_for(stored, aggregate_id="styles", actor=SYSTEM_ACTOR, aggregate_version=0))
        elif kind == 1:
            reserved = LoraFileReserved(
                entity_type=EntityType.STYLES,
                partial_path=f"styles/f{i}.safetensors",
                filename=f"f{i}.safetensors",
                original_filename=f"f{i}.safetensors",
                staged_key=f"staging/{i}",
                size=1000 + i,
                sha256=f"{i:064x}",
            )
            # versions of the one directory count up in log order (one partition: the key is its id)
            events.append(envelope_for(reserved, aggregate_id="styles", actor=SYSTEM_ACTOR, aggregate_version=0))
        else:
            row = UsageRow(minute=now, model="m", requests=1, prompt_tokens=10, completion_tokens=5)
            recorded = UsageRecorded(api_key_id=f"key{i % 50}", gateway_id="g", rows=(row,))
            events.append(envelope_for(recorded, aggregate_id=f"key{i % 50}", actor=SYSTEM_ACTOR, aggregate_version=0))
    return events


class Versions:
    def __init__(self) -> None:
        self.next: dict[str, int] = {}

    def number(self, events: list[Envelope]) -> list[Envelope]:
        out = []
        for e in events:
            if e.aggregate_version == 0:
                v = self.next[e.aggregate_id] = self.next.get(e.aggregate_id, 0) + 1
                e = e.model_copy(update={"aggregate_version": v})
            out.append(e)
        return out


async def write(bootstrap: str, events: list[Envelope]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=100, max_batch_size=1 << 20
    )
    await producer.start()
    began = time.perf_counter()
    try:
        sent = [await producer.send("loraplane.events", value=encode(e), key=key_for(e)) for e in events]
        await asyncio.gather(*sent)
    finally:
        await stop_quietly(producer)
    return time.perf_counter() - began


async def timed_start(settings: Settings, who: str | None) -> tuple[float, EventLogFollower]:
    follower = EventLogFollower(settings, AgentState({a.name: a for a in AGGREGATES}), snapshots_as=who)
    began = time.perf_counter()
    await follower.start()
    took = time.perf_counter() - began
    return took, follower


async def run(stack: Stack, events: int, tail: int) -> None:
    env = stack.env
    settings = Settings(
        kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
        s3_endpoint=env["S3_ENDPOINT"],
        s3_bucket=env["S3_BUCKET"],
        kafka_fetch_max_wait_ms=20,
        snapshot_every=max(1, events // 2),
    )
    versions = Versions()
    wrote = await write(stack.bootstrap, versions.number(realistic(events, 0)))
    print(f"wrote {events} events in {wrote:.1f}s")
    who = f"bench-{uuid.uuid4().hex[:6]}"

    took, plain = await timed_start(settings.model_copy(update={"snapshot_every": 0}), None)
    await plain.stop()
    print(
        f"start, no snapshots:              {took:6.2f}s ({plain.tail_folded} events, {plain.tail_folded / took:,.0f}/s)"  # noqa: E501
    )

    took, first = await timed_start(settings, who)
    began = time.perf_counter()
    await first.stop()  # waits for the snapshot being written
    assert first.snapshots is not None and first.snapshots.written, "no snapshot written"
    print(f"start, snapshots on, none stored: {took:6.2f}s (then {time.perf_counter() - began:.2f}s to write one)")
    size = len(first.snapshots.store.get(first.snapshots.written[-1]))
    print(f"  snapshot: {len(first.state.entries)} aggregates, {size:,} bytes gzip'd")

    took, again = await timed_start(settings, who)
    await again.stop()
    assert again.snapshot_loaded is not None
    assert again.state == first.state, "the snapshot's state differs from the fold it was taken of"
    print(f"start from the snapshot, no tail:  {took:6.2f}s  ({again.tail_folded} events folded)")

    await write(stack.bootstrap, versions.number(realistic(tail, events)))
    took, tailed = await timed_start(settings, who)
    await tailed.stop()
    assert tailed.snapshot_loaded is not None
    print(f"start from the snapshot + tail:    {took:6.2f}s  ({tailed.tail_folded} events folded)")
    took, plain = await timed_start(settings.model_copy(update={"snapshot_every": 0}), None)
    await plain.stop()
    assert plain.state == tailed.state, "snapshot + tail differs from the fold from offset 0"
    print(f"start, no snapshots (same log):    {took:6.2f}s  ({plain.tail_folded} events)")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--tail", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        stack = start_stack(Path(tmp) / "stack", extra_env={"LORAPLANE_NODE": "off"})
        try:
            asyncio.run(run(stack, args.events, args.tail))
        finally:
            stop_stack(stack)


if __name__ == "__main__":
    main()
