"""Counting what the gateway forwards, per API key, model and UTC minute, and sending it as `usage.record` commands.

At most every `flush_s` seconds the counts so far become one command per API key. A command is made once, with its
own id, and kept until the broker took it: a batch sent again after a failure is the same command, which the agents
apply once. Counts that arrive meanwhile go to the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from streams.envelope import Actor, Envelope
from streams.serialization import envelope_for
from streams.usage import MAX_ROWS, RecordUsage, UsageRow

log = logging.getLogger(__name__)

Send = Callable[[Envelope], Awaitable[None]]


@dataclass(frozen=True)
class UsageKey:
    api_key_id: str
    model: str
    minute: datetime


@dataclass
class UsageCount:
    base_model: str | None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def minute_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def usage_commands(
    counts: Mapping[UsageKey, UsageCount], actors: Mapping[str, Actor], gateway_id: str
) -> list[Envelope]:
    """One `usage.record` per API key (several when it has more rows than one command holds), rows in order."""
    rows: dict[str, list[UsageRow]] = {}
    for key in sorted(counts, key=lambda k: (k.api_key_id, k.minute, k.model)):
        count = counts[key]
        rows.setdefault(key.api_key_id, []).append(
            UsageRow(
                minute=key.minute,
                model=key.model,
                base_model=count.base_model,
                requests=count.requests,
                prompt_tokens=count.prompt_tokens,
                completion_tokens=count.completion_tokens,
            )
        )
    commands = []
    for api_key_id, key_rows in rows.items():
        for start in range(0, len(key_rows), MAX_ROWS):
            payload = RecordUsage(
                api_key_id=api_key_id, gateway_id=gateway_id, rows=tuple(key_rows[start : start + MAX_ROWS])
            )
            commands.append(envelope_for(payload, aggregate_id=api_key_id, actor=actors[api_key_id]))
    return commands


class UsageMeter:
    def __init__(self, send: Send, gateway_id: str, flush_s: float) -> None:
        self._send = send
        self._gateway_id = gateway_id
        self._flush_s = flush_s
        self._counts: dict[UsageKey, UsageCount] = {}
        self._actors: dict[str, Actor] = {}
        self._unsent: list[Envelope] = []
        self._task: asyncio.Task[None] | None = None

    def count(
        self,
        actor: Actor,
        model: str,
        base_model: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        at: datetime | None = None,
    ) -> None:
        key = UsageKey(actor.id, model, minute_of(at or datetime.now(UTC)))
        count = self._counts.get(key)
        if count is None:
            count = self._counts[key] = UsageCount(base_model)
        count.requests += 1
        count.prompt_tokens += prompt_tokens
        count.completion_tokens += completion_tokens
        self._actors[actor.id] = actor

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-usage")

    async def stop(self) -> None:
        """Send what is left (once more), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush(), 10.0)
        if self._unsent or self._counts:
            log.error("usage of %d batch(es) could not be sent before the gateway stopped", len(self._unsent) or 1)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("usage not sent yet (%s); again in %.0fs", exc, self._flush_s)

    async def flush(self) -> None:
        if self._counts:
            counts, self._counts = self._counts, {}
            self._unsent += usage_commands(counts, self._actors, self._gateway_id)
        while self._unsent:
            await self._send(self._unsent[0])
            self._unsent.pop(0)
