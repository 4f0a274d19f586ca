"""Publishing commands and waiting for their outcome to reach the read model (`?wait=`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from litestar import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import REJECTIONS, ApiError, Unavailable
from api.readmodel import queries
from infra.kafka import make_producer, publish, stop_quietly
from infra.settings import Settings
from infra.telemetry import current_traceparent
from streams.envelope import Actor, Envelope, Payload
from streams.outcomes import RejectionCode
from streams.serialization import envelope_for
from streams.topics import COMMANDS

T = TypeVar("T")

# How often a write waiting for the broker's acknowledgement looks whether the broker has stalled.
_STALL_TICK_S = 0.1
RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Budget:
    until: float  # event-loop time

    @property
    def left(self) -> float:
        return max(0.0, self.until - asyncio.get_running_loop().time())


class CommandStatus(BaseModel):
    command_id: str
    status: Literal["pending", "succeeded", "rejected"]
    event_type: str | None = None
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    code: str | None = None
    reason: str | None = None
    occurred_at: datetime | None = None


class CommandBus:
    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._settings = settings
        self._engine = engine
        self._producer: AIOKafkaProducer = make_producer(settings)
        self._waiters: dict[str, asyncio.Event] = {}
        self._batch = asyncio.Event()  # set (and replaced) after every projected batch
        # Publishes not acknowledged yet (by start time), and when the broker last acknowledged one: see `_stalled`.
        self._unacknowledged: dict[asyncio.Future[Any], float] = {}
        self._last_ack = 0.0

    async def start(self) -> None:
        await self._producer.start()
        self._last_ack = asyncio.get_running_loop().time()

    async def stop(self) -> None:
        await stop_quietly(self._producer)

    def projected(self, command_ids: Sequence[str]) -> None:
        """Called by the read-model follower after it committed these commands' outcomes."""
        for command_id in command_ids:
            if waiter := self._waiters.get(command_id):
                waiter.set()
        batch, self._batch = self._batch, asyncio.Event()
        batch.set()

    async def wait_until(self, check: Callable[[], Awaitable[T | None]], wait: float) -> T | None:
        """Re-run `check` after each projected batch until it returns something or `wait` runs out: for
        outcomes that come after the command's first event (an artifact stored, refused)."""
        deadline = asyncio.get_running_loop().time() + min(wait, self._settings.api_max_wait_s)
        while True:
            batch = self._batch
            if (found := await check()) is not None:
                return found
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batch.wait(), remaining)

    async def send(self, payload: Payload, *, aggregate_id: str, actor: Actor, wait: float) -> str:
        """Publish a command; with `wait` > 0, return once its outcome is projected or `wait` runs out.

        Raises `Unavailable` (503, `Retry-After`) when the broker does not take it: at once when the broker has
        stalled already (nothing was sent), within `api_publish_stall_s` otherwise."""
        command = envelope_for(payload, aggregate_id=aggregate_id, actor=actor, traceparent=current_traceparent())
        wait = min(wait, self._settings.api_max_wait_s)
        waiter = self._waiters.setdefault(command.command_id, asyncio.Event()) if wait > 0 else None
        try:
            await self._publish(command)
            if waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), wait)
        finally:
            self._waiters.pop(command.command_id, None)
        return command.command_id

    async def _publish(self, command: Envelope) -> None:
        loop = asyncio.get_running_loop()
        if self._stalled(loop.time()):
            raise _not_sent()
        sent = asyncio.ensure_future(publish(self._producer, COMMANDS, command))
        self._unacknowledged[sent] = loop.time()
        sent.add_done_callback(self._acknowledged)
        # Not cancelled when the answer gives up on it: the producer keeps the record and may still deliver it.
        while not sent.done():
            await asyncio.wait({sent}, timeout=_STALL_TICK_S)
            if not sent.done() and self._stalled(loop.time()):
                raise _maybe_sent(command.command_id)
        if (error := sent.exception()) is not None:
            if isinstance(error, KafkaError):
                raise _maybe_sent(command.command_id) from error
            raise error

    def _acknowledged(self, sent: asyncio.Future[Any]) -> None:
        self._unacknowledged.pop(sent, None)
        if not sent.cancelled() and sent.exception() is None:
            self._last_ack = asyncio.get_running_loop().time()

    def _stalled(self, now: float) -> bool:
        """The broker is taken for unavailable while a publish has waited longer than `api_publish_stall_s` and
        no publish was acknowledged meanwhile. A broker that is slow but working keeps acknowledging others."""
        stall = self._settings.api_publish_stall_s
        oldest = min(self._unacknowledged.values(), default=now)
        return now - oldest > stall and now - self._last_ack > stall

    async def status(self, command_id: str) -> CommandStatus:
        return _status(command_id, await queries.get_outcome(self._engine, command_id))

    def budget(self, wait: float) -> Budget:
        """One `?wait=` for a whole request: publishing, the outcome, and any later event it waits for."""
        return Budget(asyncio.get_running_loop().time() + min(wait, self._settings.api_max_wait_s))

    async def pending(self, command_id: str) -> Response[Any]:
        """The answer while a command's outcome is not known yet: 202, its status, where to ask again."""
        return accepted(await self.status(command_id))

    async def outcome(self, command_id: str, loc_prefix: Sequence[str]) -> Response[Any] | None:
        """None when the command succeeded; a 202 while it is pending; raises the rejection as an ApiError."""
        row = await queries.get_outcome(self._engine, command_id)
        status = _status(command_id, row)
        if row is None:
            return accepted(status)
        if status.status == "rejected":
            error = REJECTIONS.get(RejectionCode(status.code), ApiError) if status.code else ApiError
            field = row["field"]
            raise error(status.reason or "rejected", loc=[*loc_prefix, field] if field else list(loc_prefix))
        return None


class MaybeRecorded(Unavailable):
    """The broker did not acknowledge the command in time: the producer may still deliver it. What the command
    names (a staged upload) must stay where it is."""


def _not_sent() -> Unavailable:
    return Unavailable(
        "the event broker is not answering, so the command was not sent; nothing was recorded: "
        f"send the request again after {RETRY_AFTER_S} s",
        retry_after_s=RETRY_AFTER_S,
    )


def _maybe_sent(command_id: str) -> MaybeRecorded:
    return MaybeRecorded(
        f"the event broker did not acknowledge command {command_id}: it may or may not have been recorded. "
        f"GET /v2/commands/{command_id} tells once the broker is back (`pending` until then, and for good if "
        "it was not recorded). Sending the request again makes a new command: if this one was recorded after "
        "all, a repeated create answers 409",
        headers={"Location": f"/v2/commands/{command_id}"},
        retry_after_s=RETRY_AFTER_S,
    )


def accepted(status: CommandStatus) -> Response[Any]:
    return Response(
        status.model_dump(mode="json"), status_code=202, headers={"Location": f"/v2/commands/{status.command_id}"}
    )


def _status(command_id: str, row: dict[str, Any] | None) -> CommandStatus:
    if row is None:
        return CommandStatus(command_id=command_id, status="pending")
    return CommandStatus.model_validate(row)
