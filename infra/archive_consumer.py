"""A consumer that reads the archived part of a topic from S3 where the embedded broker no longer holds it.

Offsets of `loraplane.events` are contiguous (no compaction, no transactions), so a fetch that answers with a
record past the position asked for means the broker's batches before it were archived and deleted by the log keeper
(`infra.log_keeper`); Tansu then answers from its first remaining batch. This consumer hands the caller the archived
records of that stretch first (`infra.log_archive`), then the broker's, so every reader (start-up folds, followers,
replay, the event tools) sees each offset from 0 once, in order, as if nothing had been trimmed. The beginning of an
archived topic is offset 0, not the broker's oldest batch. Used only with the embedded broker (`LORAPLANE_LOG_ARCHIVE`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from infra.log_archive import LogArchive

_log = logging.getLogger(__name__)

Records = dict[TopicPartition, list[ConsumerRecord[Any, Any]]]


class ArchiveAwareConsumer(AIOKafkaConsumer):
    def __init__(self, *topics: str, archive: LogArchive, archived_topics: Collection[str], **options: Any) -> None:
        super().__init__(*topics, **options)
        self._archive = archive
        self._archived_topics = frozenset(archived_topics)
        self._earliest = options.get("auto_offset_reset", "latest") == "earliest" and not options.get("group_id")
        # The offset the caller gets next, where known; None: positioned by the broker (the end, a commit) and not
        # known until the first records arrive.
        self._next: dict[TopicPartition, int | None] = {}
        self._broker_from: dict[TopicPartition, int] = {}  # the first offset the broker answered with past a gap

    # -- positions ------------------------------------------------------------------------------

    def assign(self, partitions: Any) -> None:
        super().assign(partitions)
        self._next.clear()
        self._broker_from.clear()

    def seek(self, partition: TopicPartition, offset: int) -> None:
        super().seek(partition, offset)
        self._next[partition] = offset

    async def seek_to_end(self, *partitions: TopicPartition) -> bool:
        for tp in partitions or tuple(self.assignment()):
            self._next[tp] = None
        return await super().seek_to_end(*partitions)

    async def seek_to_committed(self, *partitions: TopicPartition) -> dict[TopicPartition, int | None]:
        for tp in partitions or tuple(self.assignment()):
            self._next[tp] = None
        return await super().seek_to_committed(*partitions)

    async def seek_to_beginning(self, *partitions: TopicPartition) -> bool:
        chosen = partitions or tuple(self.assignment())
        others = [tp for tp in chosen if tp.topic not in self._archived_topics]
        for tp in chosen:
            if tp.topic in self._archived_topics:
                self.seek(tp, 0)
        if others:
            return await super().seek_to_beginning(*others)
        return True

    # -- reading --------------------------------------------------------------------------------

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> Records:
        wanted = [tp for tp in (partitions or tuple(self.assignment())) if tp.topic in self._archived_topics]
        for tp in wanted:
            if tp not in self._next and self._earliest:
                self.seek(tp, 0)  # a fresh reader from the beginning starts at 0, not at the broker's oldest batch
        archived = await self._from_archive(wanted, max_records)
        if archived:
            return archived
        batches: Records = await super().getmany(*partitions, timeout_ms=timeout_ms, max_records=max_records)
        out: Records = {}
        for tp, records in batches.items():
            expected = self._next.get(tp)
            if records and tp.topic in self._archived_topics and expected is not None and records[0].offset > expected:
                # Trimmed below records[0]: read [expected, records[0]) from the archive first (the next calls), then
                # the broker again from there; these records come again then.
                self._broker_from[tp] = records[0].offset
                super().seek(tp, expected)
                continue
            if records:
                self._next[tp] = records[-1].offset + 1
                out[tp] = records
        return out

    async def _from_archive(self, partitions: list[TopicPartition], max_records: int | None) -> Records:
        """Records of the partitions whose position lies in a stretch the broker no longer holds."""
        out: Records = {}
        for tp in partitions:
            position, broker_from = self._next.get(tp), self._broker_from.get(tp)
            if position is None or broker_from is None or position >= broker_from:
                continue
            records = await asyncio.to_thread(self._archive.read, tp, position, broker_from, max_records)
            if not records:  # neither the broker nor the archive holds them: say so, go on with the broker's
                _log.error("offsets %d-%d of %s are neither on the broker nor archived", position, broker_from - 1, tp)
                self.seek(tp, broker_from)
                continue
            self.seek(tp, records[-1].offset + 1)
            out[tp] = list(records)
        return out
