"""Process managers driven from the log: the commands that events call for, sent once per event even across crashes.

A process manager here is a pure function `(state, event) -> commands`, whose command ids derive from the event's id
(`streams.envelope.derived_id`), so sending them twice is harmless: the processor drops the repeat. The runner keeps,
per partition of the event log, the offset up to which every event's follow-ups have reached the commands topic, and
saves it to S3 every few seconds. Live, the processor hands it each round's landed events and waits for their
follow-ups before acknowledging the commands. At start, it reads the events from the saved positions to where the
folded state ends and sends their follow-ups again: whatever a crash cut off between an event and its follow-up is
sent then (and what did get through is dropped as a repeat).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import TopicPartition

from agents.state import AgentState
from infra.kafka import read_events_between
from infra.positions import PositionStore
from infra.settings import Settings
from streams.envelope import Envelope
from streams.topics import EVENTS

log = logging.getLogger(__name__)

FollowUps = Callable[[AgentState, Envelope], Sequence[Envelope]]
Send = Callable[[Sequence[Envelope]], Awaitable[None]]
SAVE_EVERY_S = 5.0  # a crash resends the follow-ups of at most this long (repeats are dropped)


class FollowUpRunner:
    def __init__(self, settings: Settings, managers: Sequence[FollowUps], send: Send, store: PositionStore) -> None:
        self._settings = settings
        self._managers = tuple(managers)
        self._send = send
        self._store = store
        self._followed: dict[int, int] = {}
        self._saved: dict[int, int] = {}
        self._saver: asyncio.Task[None] | None = None

    def commands_for(self, state: AgentState, events: Sequence[Envelope]) -> list[Envelope]:
        return [command for event in events for manager in self._managers for command in manager(state, event)]

    async def resume(
        self, state: AgentState, folded_to: Mapping[TopicPartition, int], partitions: frozenset[int]
    ) -> None:
        """When this worker comes to own `partitions` (at start, or taking over a dead worker's), with `state` holding
        the log up to `folded_to`: follow up every event of theirs past the saved positions."""
        saved = await asyncio.to_thread(self._store.load)
        ends = {tp.partition: offset for tp, offset in folded_to.items() if tp.partition in partitions}
        if not saved:
            # Never run before: the log's past was followed up by the processes that wrote it (or predates this).
            log.info("no follow-up positions saved; following up from the end of the log")
            everything = {tp.partition: offset for tp, offset in folded_to.items()}
            await asyncio.to_thread(self._store.save, everything)
            self._saved.update(everything)
        else:
            behind = {
                TopicPartition(EVENTS.name, p): saved.get(p, 0) for p, end in ends.items() if saved.get(p, 0) < end
            }
            events = await read_events_between(self._settings, behind, folded_to)
            commands = self.commands_for(state, events)
            if commands:
                log.info("sending %d follow-ups of %d events past the saved positions", len(commands), len(events))
                await self._send(commands)
            self._saved.update({p: o for p, o in saved.items() if p in partitions})
        for partition, offset in ends.items():
            self._followed[partition] = max(self._followed.get(partition, 0), offset)
        if self._saver is None:
            self._saver = asyncio.get_running_loop().create_task(self._save_periodically(), name="follow-up positions")

    async def after_round(self, state: AgentState, landed: Sequence[tuple[int, int, Sequence[Envelope]]]) -> None:
        """Live: send the follow-ups of a round's landed batches ((partition, next offset, events)), then count
        those partitions as followed up to there."""
        commands = self.commands_for(state, [event for _, _, events in landed for event in events])
        if commands:
            await self._send(commands)
        for partition, next_offset, _ in landed:
            self._followed[partition] = max(self._followed.get(partition, 0), next_offset)

    async def stop(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
            self._saver = None
            await self._save_changes()

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            try:
                await self._save_changes()
            except Exception as exc:
                log.warning("could not save follow-up positions (%s); trying again", exc)

    async def _save_changes(self) -> None:
        changed = {p: o for p, o in self._followed.items() if self._saved.get(p) != o}
        if changed:
            await asyncio.to_thread(self._store.save, changed)
            self._saved.update(changed)
