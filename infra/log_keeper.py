"""The embedded broker's log keeper: keeps Tansu's partitions short so its cost stays flat as history grows.

Tansu's S3 engine lists a partition's batch objects on every fetch below its end, so each live round trip slows as
a partition's history grows (`../shared/notes/tansu.md`). Every `LORAPLANE_LOG_KEEPER_EVERY_S` the keeper looks at
each partition that holds more than twice `LORAPLANE_LOG_KEEP_BATCHES` objects and:
- `loraplane.events` (the log of record): copies the records below the newest `keep` batches to archive segments in
  the broker's bucket (`infra.log_archive`), and only once they are stored deletes those batches. Readers find the
  archived stretch there (`infra.archive_consumer`), so the log still reads from offset 0. Each round stores a small
  segment; once `MERGE_RUN` of them lie in a row they are merged into one of up to `SEGMENT_RECORDS`.
- `loraplane.commands`: deletes the batches whose commands the worker group has committed (decided and acked;
  the decisions are events). Nothing archives them: they are requests, not the record.
Run by `loraplane up` when it runs the broker; never against a real Kafka, whose fetches do not list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from minio import Minio

from infra.kafka import make_bulk_consumer, make_consumer, stop_quietly
from infra.log_archive import LogArchive
from infra.log_trim import batches_to_delete, should_trim
from infra.s3 import make_client
from infra.settings import Settings
from infra.tansu_objects import batch_bases, delete_batches
from streams.topics import COMMANDS, EVENTS

_log = logging.getLogger(__name__)

SEGMENT_RECORDS = 5_000  # the most records one archive segment holds (a reader holds one per partition decoded)
MERGE_RUN = 8  # small segments in a row that are merged into one (`LogArchive.compact`)


@dataclass
class KeeperRound:
    archived: dict[TopicPartition, int] = field(default_factory=dict)  # records written to the archive
    merged: dict[TopicPartition, int] = field(default_factory=dict)  # small archive segments merged into one
    deleted: dict[TopicPartition, int] = field(default_factory=dict)  # batch objects deleted from the broker

    def __bool__(self) -> bool:
        return bool(self.archived or self.merged or self.deleted)


class LogKeeper:
    def __init__(self, settings: Settings, say: Callable[[str], None] = _log.info) -> None:
        self._settings = settings
        self._say = say
        self._client: Minio = make_client(settings)
        self._archive = LogArchive(self._client, settings.broker_log_bucket)
        self._keep = settings.log_keep_batches
        # What the keeper reads it reads from the broker itself, never through the archive it writes.
        self._broker_only = settings.model_copy(update={"log_archive": False})

    async def run(self) -> None:
        """Keep the log every few seconds until cancelled; a failed round is logged and tried again."""
        while True:
            try:
                done = await self.keep_once()
                if done:
                    _log.debug(
                        "log keeper: archived %s, merged segments %s, deleted batches %s",
                        done.archived,
                        done.merged,
                        done.deleted,
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._say(f"log keeper: {exc!r}; trying again in {self._settings.log_keeper_every_s:g}s")
            await asyncio.sleep(self._settings.log_keeper_every_s)

    async def keep_once(self) -> KeeperRound:
        done = KeeperRound()
        for partition in range(EVENTS.partitions):
            await self._keep_events(TopicPartition(EVENTS.name, partition), done)
        committed: dict[TopicPartition, int] | None = None
        for partition in range(COMMANDS.partitions):
            tp = TopicPartition(COMMANDS.name, partition)
            bases = await asyncio.to_thread(batch_bases, self._client, self._settings.broker_log_bucket, tp)
            if not should_trim(len(bases), self._keep):
                continue
            if committed is None:
                committed = await self._committed_commands()
            await self._delete(tp, batches_to_delete(bases, committed.get(tp, 0), self._keep), done)
        return done

    async def _keep_events(self, tp: TopicPartition, done: KeeperRound) -> None:
        bucket = self._settings.broker_log_bucket
        bases = await asyncio.to_thread(batch_bases, self._client, bucket, tp)
        if not should_trim(len(bases), self._keep):
            return
        cut = bases[len(bases) - self._keep]  # the first offset of the batches that stay
        archived_end = await asyncio.to_thread(self._archive.end, tp)
        if archived_end < cut:
            if archived_end < bases[0]:
                # The broker no longer holds what the archive lacks: never trim past a hole.
                _log.error("log keeper: %s lacks offsets %d-%d; not trimming it", tp, archived_end, bases[0] - 1)
                return
            written = await archive_range(self._broker_only, self._archive, tp, archived_end, cut)
            done.archived[tp] = written
            archived_end += written
            compaction = await asyncio.to_thread(self._archive.compact, tp, SEGMENT_RECORDS, MERGE_RUN)
            if compaction.merged:
                done.merged[tp] = compaction.merged
        await self._delete(tp, batches_to_delete(bases, archived_end, self._keep), done)

    async def _delete(self, tp: TopicPartition, bases: list[int], done: KeeperRound) -> None:
        if bases:
            done.deleted[tp] = await asyncio.to_thread(
                delete_batches, self._client, self._settings.broker_log_bucket, tp, bases
            )

    async def _committed_commands(self) -> dict[TopicPartition, int]:
        """The worker group's committed offset of each commands partition (0 where it committed none). Asked with
        OffsetFetch through a consumer of the group that never joins it (Tansu drops the admin client's request)."""
        consumer = make_consumer(self._broker_only, group_id=self._settings.worker_group_id)
        await consumer.start()
        try:
            partitions = [TopicPartition(COMMANDS.name, p) for p in range(COMMANDS.partitions)]
            consumer.assign(partitions)
            out = {}
            for tp in partitions:
                offset = await consumer.committed(tp)
                if offset is not None and offset >= 0:
                    out[tp] = offset
            return out
        finally:
            await stop_quietly(consumer)


async def archive_range(
    settings: Settings,
    archive: LogArchive,
    tp: TopicPartition,
    start: int,
    end: int,
    segment_records: int = SEGMENT_RECORDS,
) -> int:
    """Copy the broker's records [start, end) of `tp` to archive segments of up to `segment_records`; how many were
    stored. `settings` must read the broker itself (`log_archive` off), never through the archive it writes."""
    consumer = make_bulk_consumer(settings, auto_offset_reset="none")
    await consumer.start()
    stored = 0
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        pending: list[ConsumerRecord[Any, Any]] = []
        position = start
        while position < end:
            batches = await consumer.getmany(tp, timeout_ms=2 * settings.kafka_bulk_fetch_max_wait_ms + 1000)
            for record in batches.get(tp, []):
                if record.offset >= end:
                    break
                if record.offset != position:
                    raise RuntimeError(f"{tp} jumps from offset {position} to {record.offset}: not archiving it")
                pending.append(record)
                position += 1
                if len(pending) == segment_records:
                    await asyncio.to_thread(archive.put, tp, pending)
                    stored += len(pending)
                    pending = []
        if pending:
            await asyncio.to_thread(archive.put, tp, pending)
            stored += len(pending)
    finally:
        await stop_quietly(consumer)
    return stored
