"""Publishing commands and waiting for their outcome to reach the read model (`?wait=`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaProducer
from litestar import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import REJECTIONS, ApiError
from api.readmodel import queries
from infra.kafka import make_producer, publish, stop_quietly
from infra.settings import Settings
from infra.telemetry import current_traceparent
from streams.envelope import Actor, Payload
from streams.outcomes import RejectionCode
from streams.serialization import envelope_for
from streams.topics import COMMANDS

T = TypeVar("T")


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

    async def start(self) -> None:
        await self._producer.start()

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
        """Publish a command; with `wait` > 0, return once its outcome is projected or `wait` runs out."""
        command = envelope_for(payload, aggregate_id=aggregate_id, actor=actor, traceparent=current_traceparent())
        wait = min(wait, self._settings.api_max_wait_s)
        waiter = self._waiters.setdefault(command.command_id, asyncio.Event()) if wait > 0 else None
        try:
            await publish(self._producer, COMMANDS, command)
            if waiter is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), wait)
        finally:
            self._waiters.pop(command.command_id, None)
        return command.command_id

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


def accepted(status: CommandStatus) -> Response[Any]:
    return Response(
        status.model_dump(mode="json"), status_code=202, headers={"Location": f"/v2/commands/{status.command_id}"}
    )


def _status(command_id: str, row: dict[str, Any] | None) -> CommandStatus:
    if row is None:
        return CommandStatus(command_id=command_id, status="pending")
    return CommandStatus.model_validate(row)
