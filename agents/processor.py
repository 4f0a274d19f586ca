"""Turns one command into events: decode, dedupe, decide, publish. Never lets a message crash a worker.

Faust acks a message whose handler raised, and it is never seen again, so nothing escapes from
`handle`: unreadable messages and failures a retry cannot fix go to the dead-letter topic with the
reason; failures a retry can fix (the broker briefly away) are retried until they succeed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer

from agents.aggregate import Aggregate, Rejected
from agents.event_log import EventLogFollower
from agents.state import AgentState
from infra.errors import is_retriable
from infra.kafka import make_producer, publish, stop_quietly
from infra.settings import Settings
from infra.telemetry import continued_from, current_traceparent, tracer
from streams import registry
from streams.envelope import Envelope, MessageKind, Payload
from streams.outcomes import CommandRejected
from streams.serialization import MessageDecodeError, decode, envelope_for
from streams.topics import COMMANDS, DEADLETTER, DEADLETTER_REASON_HEADER, DEADLETTER_SOURCE_HEADER, EVENTS

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]
MAX_BACKOFF_S = 10.0


class Observer(Protocol):
    """Work that follows decisions (the artifacts agent): told once the log is folded, then of each event
    this processor publishes, with the command it answers. Must return at once; long work goes to tasks
    of its own."""

    def started(self, state: AgentState) -> None: ...

    def decided(self, event: Envelope, command: Envelope, /) -> None: ...


class CommandProcessor:
    def __init__(
        self,
        settings: Settings,
        aggregates: Iterable[Aggregate],
        observers: Sequence[Observer] = (),
        snapshots_as: str | None = None,
    ) -> None:
        self._observers = tuple(observers)
        self.state = AgentState({aggregate.name: aggregate for aggregate in aggregates})
        self._settings = settings
        self._follower = EventLogFollower(settings, self.state, snapshots_as)
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()
        self._started = False

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

    async def stop(self) -> None:
        if self._started and self._producer is not None:
            await self._follower.stop()
            await stop_quietly(self._producer)
            self._started = False

    async def handle(self, raw: bytes | None, headers: Headers, source: str, key: bytes | None = None) -> None:
        await self.start()
        try:
            command = decode(raw)
        except MessageDecodeError as exc:
            await self._deadletter(raw, key, headers, str(exc), source)
            return
        meta = registry.lookup(command.type, command.schema_version)
        aggregate = self.state.aggregates.get(command.aggregate_type)
        if meta is None or meta.kind is not MessageKind.COMMAND:
            await self._deadletter(raw, key, headers, f"{command.type} is not a command", source)
            return
        if aggregate is None:
            await self._deadletter(raw, key, headers, f"no agent handles {command.aggregate_type} commands", source)
            return
        backoff = 0.2
        while True:
            try:
                await self._decide_and_publish(command, aggregate)
                return
            except Exception as exc:
                if not is_retriable(exc):
                    log.exception("command %s (%s) failed", command.command_id, command.type)
                    await self._deadletter(raw, key, headers, f"{type(exc).__name__}: {exc}", source)
                    return
                log.warning("command %s: %s; retrying in %.1fs", command.command_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _decide_and_publish(self, command: Envelope, aggregate: Aggregate) -> None:
        with (
            continued_from(command.traceparent),
            tracer().start_as_current_span(f"decide {command.type}") as span,
        ):
            span.set_attribute("loraplane.command_id", command.command_id)
            span.set_attribute("loraplane.aggregate", f"{command.aggregate_type}/{command.aggregate_id}")
            await self._follower.catch_up()
            if command.command_id in self.state.handled_commands:
                span.set_attribute("loraplane.duplicate", True)
                log.info("command %s already handled; skipped", command.command_id)
                return
            current = self.state.get(command.aggregate_type, command.aggregate_id)
            version = current.version
            payloads: Sequence[Payload]
            try:
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
            for payload in payloads:
                rejected = isinstance(payload, CommandRejected)
                if not rejected:
                    version += 1  # each state-changing event advances the aggregate by one
                event = envelope_for(
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
                assert self._producer is not None
                await self._follower.published(event, await publish(self._producer, EVENTS, event))
                span.add_event(event.type)
                for observer in self._observers:
                    observer.decided(event, command)

    async def send_command(self, command: Envelope) -> None:
        """Publish a command of this process's own (an artifacts job's report) to the commands topic."""
        await self.start()
        assert self._producer is not None
        await publish(self._producer, COMMANDS, command)

    async def _deadletter(
        self, raw: bytes | None, key: bytes | None, headers: Headers, reason: str, source: str
    ) -> None:
        log.error("dead-lettering a message from %s: %s", source, reason)
        dead_headers = [
            *[(k, v) for k, v in headers if k not in (DEADLETTER_REASON_HEADER, DEADLETTER_SOURCE_HEADER)],
            (DEADLETTER_REASON_HEADER, reason.encode()[:4000]),
            (DEADLETTER_SOURCE_HEADER, source.encode()),
        ]
        backoff = 0.2
        while True:
            try:
                assert self._producer is not None
                await self._producer.send_and_wait(DEADLETTER.name, value=raw or b"", key=key, headers=dead_headers)
                return
            except Exception as exc:
                if not is_retriable(exc):
                    log.exception("could not dead-letter a message from %s; dropped", source)
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
