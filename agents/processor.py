"""Turns commands into events: decode, dedupe, decide, publish. Never lets a message crash a worker.

Commands come in batches (what one fetch brought). They are decided in order, each against the state
the earlier ones leave, and all their events are published at once: one record batch per partition,
each aggregate's events whole in one batch, so a decision lands all or nothing and the broker stores
one object per partition per round rather than one per event.

Faust acks a message whose handler raised, and it is never seen again, so nothing escapes from
`handle_many`: unreadable messages and failures a retry cannot fix go to the dead-letter topic with
the reason; failures a retry can fix (the broker briefly away) are retried until they succeed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiokafka import AIOKafkaProducer

from agents.aggregate import Aggregate, Rejected
from agents.api_keys import ApiKey
from agents.event_log import EventLogFollower
from agents.follow_ups import FollowUpRunner, FollowUps
from agents.ownership import acting, refusal
from agents.state import AgentState, AggregateState, folded
from infra.errors import is_retriable
from infra.faults import crash_point
from infra.kafka import make_producer, publish, publish_together, stop_quietly
from infra.positions import PositionStore
from infra.s3 import make_client
from infra.settings import Settings
from infra.telemetry import continued_from, current_traceparent, tracer
from streams import registry
from streams.api_keys import AGGREGATE as API_KEYS
from streams.envelope import Envelope, MessageKind, Payload
from streams.outcomes import CommandRejected
from streams.serialization import MessageDecodeError, decode, envelope_for
from streams.topics import COMMANDS, DEADLETTER, DEADLETTER_REASON_HEADER, DEADLETTER_SOURCE_HEADER, EVENTS

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
MAX_BACKOFF_S = 10.0


@dataclass(frozen=True)
class Message:
    """A command as it came off the topic."""

    value: bytes | None
    headers: Headers
    source: str  # topic:partition:offset, for the dead-letter topic and logs
    key: bytes | None = None


@dataclass(frozen=True)
class _Command:
    message: Message
    command: Envelope
    aggregate: Aggregate


@dataclass(frozen=True)
class _Decision:
    command: _Command
    events: list[Envelope]


class Observer(Protocol):
    """Work that follows decisions (the artifacts agent): told once the log is folded, then which command partitions
    this worker owns after each rebalance, then of each event this processor publishes, with the command it answers.
    Must return at once; long work goes to tasks of its own."""

    def started(self, state: AgentState) -> None: ...

    def owned(self, partitions: frozenset[int]) -> None: ...

    def decided(self, event: Envelope, command: Envelope, /) -> None: ...


class CommandProcessor:
    def __init__(
        self,
        settings: Settings,
        aggregates: Iterable[Aggregate],
        observers: Sequence[Observer] = (),
        follow_ups: Sequence[FollowUps] = (),
        snapshots_as: str | None = None,
    ) -> None:
        self._observers = tuple(observers)
        self._follow_ups = (
            FollowUpRunner(
                settings,
                follow_ups,
                self._send_follow_ups,
                PositionStore(
                    make_client(settings), settings.s3_bucket, f"positions/{settings.worker_group_id}/follow-ups"
                ),
            )
            if follow_ups
            else None
        )
        self.state = AgentState({aggregate.name: aggregate for aggregate in aggregates})
        self._settings = settings
        self._follower = EventLogFollower(settings, self.state, snapshots_as)
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()
        self._started = False
        self._owned: frozenset[int] = frozenset()
        self._ownership_lock = asyncio.Lock()

    async def start(self) -> None:
        """Connect and fold the whole event log in; safe to call more than once."""
        async with self._start_lock:
            if not self._started:
                self._producer = make_producer(self._settings)  # aiokafka needs the running loop
                await self._producer.start()
                await self._follower.start()
                self._started = True
                for observer in self._observers:
                    observer.started(self.state)

    async def owned(self, partitions: frozenset[int]) -> None:
        """The command partitions this worker owns now, after a rebalance: the observers take up the work of those
        (another worker's, if it died) and drop the rest; the events of the partitions it gains get their follow-ups
        from where the last owner saved its position."""
        await self.start()
        async with self._ownership_lock:  # rebalances follow each other: take them up in order
            gained = partitions - self._owned
            self._owned = partitions
            log.info("owning command partitions %s (gained %s)", sorted(partitions), sorted(gained))
            await self._follower.catch_up()
            for observer in self._observers:
                observer.owned(partitions)
            if gained and self._follow_ups is not None:
                await self._follow_ups.resume(self.state, await self._follower.positions(), gained)

    async def stop(self) -> None:
        if self._started and self._producer is not None:
            if self._follow_ups is not None:
                await self._follow_ups.stop()
            await self._follower.stop()
            await stop_quietly(self._producer)
            self._started = False

    async def handle(self, raw: bytes | None, headers: Headers, source: str, key: bytes | None = None) -> None:
        await self.handle_many([Message(raw, headers, source, key)])

    async def handle_many(self, messages: Sequence[Message]) -> None:
        """Decide a batch of commands in order and publish all their events at once: each decision's events in one
        record batch (applied all or nothing, live and on replay), the decisions of one partition sharing batches.
        Returns once every decision has landed, so the caller acks the commands only then."""
        await self.start()
        pending = [readable for message in messages if (readable := await self._readable(message)) is not None]
        backoff = 0.2
        while pending:
            try:
                pending = await self._decide_and_publish(pending)
            except Exception as exc:
                if not is_retriable(exc):
                    log.exception("%d commands failed", len(pending))
                    for item in pending:
                        await self._deadletter(item.message, f"{type(exc).__name__}: {exc}")
                    return
                log.warning("%d commands: %s; retrying in %.1fs", len(pending), exc, backoff)
            if pending:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _readable(self, message: Message) -> _Command | None:
        try:
            command = decode(message.value)
        except MessageDecodeError as exc:
            await self._deadletter(message, str(exc))
            return None
        meta = registry.lookup(command.type, command.schema_version)
        aggregate = self.state.aggregates.get(command.aggregate_type)
        if meta is None or meta.kind is not MessageKind.COMMAND:
            await self._deadletter(message, f"{command.type} is not a command")
            return None
        if aggregate is None:
            await self._deadletter(message, f"no agent handles {command.aggregate_type} commands")
            return None
        return _Command(message, command, aggregate)

    async def _decide_and_publish(self, commands: Sequence[_Command]) -> list[_Command]:
        """One round: decide every command not yet handled, publish; the commands whose batch did not land for a
        reason a retry can cure (their decisions are made again next round, against the state as it is then)."""
        await self._follower.catch_up()
        decisions: list[_Decision] = []
        ahead: dict[tuple[str, str], AggregateState] = {}  # aggregates as this round's decisions leave them
        decided: set[str] = set()
        for item in commands:
            command = item.command
            duplicate = command.command_id in self.state.handled_commands or command.command_id in decided
            decided.add(command.command_id)
            key = (command.aggregate_type, command.aggregate_id)
            current = ahead.get(key) or self.state.get(*key)
            try:
                events = self._decide(item.aggregate, current, command, duplicate)
            except Exception as exc:
                log.exception("command %s (%s) failed", command.command_id, command.type)
                await self._deadletter(item.message, f"{type(exc).__name__}: {exc}")
                continue
            if events is None:
                continue
            ahead[key] = _folded(item.aggregate, current, events)
            if events:
                decisions.append(_Decision(item, events))
        if not decisions:
            return []
        # One group per aggregate: its decisions of this round land together or not at all, so a failed batch
        # never leaves a gap in an aggregate's versions that a later batch of the round would build on.
        by_aggregate: dict[tuple[str, str], list[_Decision]] = {}
        for decision in decisions:
            command = decision.command.command
            by_aggregate.setdefault((command.aggregate_type, command.aggregate_id), []).append(decision)
        groups = list(by_aggregate.values())
        assert self._producer is not None
        retry: list[_Command] = []
        landed: list[tuple[int, int, list[Envelope]]] = []
        events_of = [[event for d in group for event in d.events] for group in groups]
        for batch in await publish_together(self._producer, EVENTS, events_of):
            members = [d for i in batch.groups for d in groups[i]]
            if batch.landed is None:
                assert batch.error is not None
                if is_retriable(batch.error):
                    retry.extend(d.command for d in members)
                    continue
                for d in members:
                    await self._deadletter(d.command.message, f"{type(batch.error).__name__}: {batch.error}")
                continue
            events = [event for d in members for event in d.events]
            await self._follower.published(batch.partition, batch.landed.offset, events)
            landed.append((batch.partition, batch.landed.offset + len(events), events))
            for d in members:
                for event in d.events:
                    for observer in self._observers:
                        observer.decided(event, d.command.command)
        crash_point(self._settings, "after_publish", {e.type for _, _, events in landed for e in events})
        if self._follow_ups is not None:
            await self._follow_ups.after_round(self.state, landed)
        return retry

    async def _send_follow_ups(self, commands: Sequence[Envelope]) -> None:
        """Publish process managers' commands, retrying what a retry can cure; raises what it cannot."""
        assert self._producer is not None
        backoff = 0.2
        pending = list(commands)
        while pending:
            failed: list[Envelope] = []
            for batch in await publish_together(self._producer, COMMANDS, [[c] for c in pending]):
                if batch.error is not None:
                    if not is_retriable(batch.error):
                        raise batch.error
                    failed.extend(pending[i] for i in batch.groups)
            pending = failed
            if pending:
                log.warning("%d follow-up commands not sent; retrying in %.1fs", len(pending), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _decide(
        self, aggregate: Aggregate, current: AggregateState, command: Envelope, duplicate: bool
    ) -> list[Envelope] | None:
        """The events deciding `command` makes, None for a command already handled."""
        with (
            continued_from(command.traceparent),
            tracer().start_as_current_span(f"decide {command.type}") as span,
        ):
            span.set_attribute("loraplane.command_id", command.command_id)
            span.set_attribute("loraplane.aggregate", f"{command.aggregate_type}/{command.aggregate_id}")
            if duplicate:
                span.set_attribute("loraplane.duplicate", True)
                log.info("command %s already handled; skipped", command.command_id)
                return None
            payloads: Sequence[Payload]
            try:
                if (trespass := self._trespass(current, command)) is not None:
                    raise trespass
                payloads = aggregate.decide(current.value, command)
            except Rejected as rejection:
                span.set_attribute("loraplane.rejected", rejection.reason)
                payloads = [
                    CommandRejected(
                        command_type=command.type,
                        code=rejection.code,
                        reason=rejection.reason,
                        field=rejection.field,
                    )
                ]
            traceparent = current_traceparent()
            version = current.version
            events = []
            for payload in payloads:
                if not isinstance(payload, CommandRejected):
                    version += 1  # each state-changing event advances the aggregate by one
                events.append(
                    envelope_for(
                        payload,
                        aggregate_id=command.aggregate_id,
                        aggregate_type=command.aggregate_type,
                        aggregate_version=version,
                        actor=command.actor,
                        command_id=command.command_id,
                        correlation_id=command.correlation_id,
                        causation_id=command.id,
                        traceparent=traceparent,
                    )
                )
                span.add_event(events[-1].type)
            return events

    def _trespass(self, current: AggregateState, command: Envelope) -> Rejected | None:
        """The refusal of a command whose actor's team does not own the aggregate (agents.ownership), if it is one."""
        key = self.state.get(API_KEYS, command.actor.id).value
        shared = bool(getattr(current.value, "shared", False))
        adapters = getattr(current.value, "adapters", None) if shared else None
        served = {name: a.adapter_id for name, a in adapters.items()} if isinstance(adapters, Mapping) else None
        return refusal(
            command,
            acting(command, key if isinstance(key, ApiKey) else None),
            current.team,
            lambda aggregate_type, aggregate_id: self.state.get(aggregate_type, aggregate_id).team,
            shared=shared,
            served=served,
        )

    async def send_command(self, command: Envelope) -> None:
        """Publish a command of this process's own (an artifacts job's report) to the commands topic."""
        await self.start()
        assert self._producer is not None
        await publish(self._producer, COMMANDS, command)

    async def _deadletter(self, message: Message, reason: str) -> None:
        log.error("dead-lettering a message from %s: %s", message.source, reason)
        dead_headers = [
            *[(k, v) for k, v in message.headers if k not in (DEADLETTER_REASON_HEADER, DEADLETTER_SOURCE_HEADER)],
            (DEADLETTER_REASON_HEADER, reason.encode()[:4000]),
            (DEADLETTER_SOURCE_HEADER, message.source.encode()),
        ]
        backoff = 0.2
        while True:
            try:
                assert self._producer is not None
                await self._producer.send_and_wait(
                    DEADLETTER.name, value=message.value or b"", key=message.key, headers=dead_headers
                )
                return
            except Exception as exc:
                if not is_retriable(exc):
                    log.exception("could not dead-letter a message from %s; dropped", message.source)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)


def _folded(aggregate: Aggregate, current: AggregateState, events: Sequence[Envelope]) -> AggregateState:
    """The aggregate after `events`, as AgentState.apply would leave it."""
    for event in events:
        if not isinstance(event.payload, CommandRejected):
            current = folded(aggregate, current, event)
    return current
