"""Reading and writing the snapshots of one follower's state (agents.snapshots) in S3 (infra.snapshot_store).

Start-up: the newest snapshot that is valid (hash, format version, the same aggregates and state versions) is
loaded and the log is read from its positions; a snapshot that fails is logged and the next older one is tried,
then none (fold from offset 0). Writing: after every `snapshot_every` events folded, in a task of its own. The
state is captured between two events (the task runs only while the follower's owner awaits, and fold and position
advance happen with no await between them; positions are read before and after the capture to be sure), and the
encoding and the upload run in a thread, off the decision path. Only the newest `snapshot_keep` are kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents import snapshots
from agents.aggregate import Aggregate
from agents.snapshots import Captured, Snapshot, SnapshotInvalid
from agents.state import AgentState
from infra.s3 import make_client
from infra.settings import Settings
from infra.snapshot_store import SnapshotStore

log = logging.getLogger(__name__)


class Snapshotter:
    def __init__(self, settings: Settings, store: SnapshotStore, who: str) -> None:
        self.every = settings.snapshot_every
        self.keep = settings.snapshot_keep
        self.store = store
        self.who = who
        self.since_last = 0  # events folded since the last snapshot (or start)
        self.written: list[str] = []  # keys this process wrote, oldest first
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def for_settings(settings: Settings, who: str | None) -> Snapshotter | None:
        """None when snapshots are off (LORAPLANE_SNAPSHOT_EVERY=0), nobody was named, or there is no S3."""
        if who is None or settings.snapshot_every <= 0 or settings.s3_endpoint is None:
            return None
        name = who.replace("/", "_")
        return Snapshotter(settings, SnapshotStore(make_client(settings), settings.s3_bucket, name), name)

    async def newest(self, aggregates: Mapping[str, Aggregate], handled_window_s: float) -> Snapshot | None:
        """The newest usable snapshot, or None (logged why)."""
        try:
            keys = await asyncio.to_thread(self.store.keys)
        except Exception as exc:
            log.warning("could not list snapshots under %s (folding from the start): %s", self.store.prefix, exc)
            return None
        for key in keys:
            started = time.perf_counter()
            try:
                data = await asyncio.to_thread(self.store.get, key)
                snapshot = await asyncio.to_thread(snapshots.load, data, aggregates, handled_window_s)
            except SnapshotInvalid as exc:
                log.warning("snapshot %s ignored: %s", key, exc)
                continue
            except Exception as exc:
                log.warning("snapshot %s unreadable, ignored: %s", key, exc)
                continue
            log.info(
                "snapshot %s loaded: %d aggregates at offset %d in %.2fs",
                key,
                len(snapshot.state.entries),
                snapshot.total_offset,
                time.perf_counter() - started,
            )
            return snapshot
        return None

    def counted(self, events: int) -> bool:
        """Count events folded; whether a snapshot is due (and none is being written)."""
        self.since_last += events
        return self.since_last >= self.every and not self.busy

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def write_soon(self, captured: Captured) -> None:
        """Encode and upload a capture in a thread, from a task of its own."""
        self.since_last = 0
        self._task = asyncio.get_running_loop().create_task(self._write(captured), name=f"snapshot {self.who}")

    def write_following(
        self,
        state: AgentState,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        folded_until: Mapping[TopicPartition, int],
    ) -> None:
        """Capture the state with the consumer's positions, from a task of its own (so at a point between two events),
        then encode and upload it in a thread. `folded_until` (live): per partition, the offset up to which the state
        may already hold events the follower published itself, ahead of its position; while any is ahead, the state
        does not match the positions and the capture waits for a later count."""
        self.since_last = 0
        self._task = asyncio.get_running_loop().create_task(
            self._capture_and_write(state, consumer, partitions, folded_until), name=f"snapshot {self.who}"
        )

    async def _capture_and_write(
        self,
        state: AgentState,
        consumer: AIOKafkaConsumer,
        partitions: list[TopicPartition],
        folded_until: Mapping[TopicPartition, int],
    ) -> None:
        try:
            before = {tp: await consumer.position(tp) for tp in partitions}
            captured = snapshots.capture(state, {tp.partition: o for tp, o in before.items()}, self.who)
            after = {tp: await consumer.position(tp) for tp in partitions}
        except Exception as exc:  # the consumer stopping meanwhile
            log.warning("could not capture a snapshot: %s", exc)
            return
        # A position awaited (the capture may straddle an event), or the state holds published events past a
        # position: not a state of the log up to these positions. The next count tries again.
        if after != before or any(folded_until.get(tp, 0) > offset for tp, offset in before.items()):
            self.since_last = self.every
            return
        await self._write(captured)

    async def _write(self, captured: Captured) -> None:
        key = self.store.key_for(captured.total_offset)
        started = time.perf_counter()
        try:
            size = await asyncio.to_thread(self._encode_and_put, key, captured)
        except Exception as exc:
            log.warning("could not write snapshot %s: %s", key, exc)
            return
        self.written.append(key)
        log.info(
            "snapshot %s written: %d aggregates, %d bytes, in %.2fs",
            key,
            len(captured.entries),
            size,
            time.perf_counter() - started,
        )

    def _encode_and_put(self, key: str, captured: Captured) -> int:
        data = snapshots.encode(captured)
        self.store.put(key, data)
        for old in self.store.keep_newest(self.keep):
            log.info("snapshot %s removed (keeping the newest %d)", old, self.keep)
        return len(data)

    async def idle(self) -> None:
        """Wait for the snapshot being written, if any."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
