"""Commands a process manager sends without holding up the processor that told it of an event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from streams.envelope import Envelope

log = logging.getLogger(__name__)

Send = Callable[[Envelope], Awaitable[None]]


class BackgroundSends:
    """Sends each command in a task of its own; a failure is logged (the deployments' process manager asks again at
    its next start; an adapter the Empower one failed to attach is attached with POST /deploy/lora)."""

    def __init__(self, send: Send, what: str) -> None:
        self._send = send
        self._what = what
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, command: Envelope) -> None:
        task = asyncio.get_running_loop().create_task(self._logged(command), name=f"{self._what} {command.command_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _logged(self, command: Envelope) -> None:
        try:
            await self._send(command)
        except Exception:
            log.exception("%s: could not send %s to %s", self._what, command.type, command.aggregate_id)

    async def stop(self) -> None:
        """Wait for the sends under way."""
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
