"""Keeps the gateway's routing state folded from `loraplane.events`: the whole log at start, then every new batch.

Requests wait on it in two ways: `changed()` for the next batch folded in (an adapter loaded, a command's outcome),
and `fresh()` for a fetch that began after the call, so "not found" is said only of a state at least as new as the
request (a key or a LoRA made a moment ago is known by then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from api.gateway.state import RoutingState
from infra.kafka import make_consumer, read_from_start, stop_quietly
from infra.settings import Settings
from streams.serialization import MessageDecodeError, decode
from streams.topics import EVENTS

log = logging.getLogger(__name__)


class RoutingFollower:
    def __init__(self, settings: Settings, state: RoutingState) -> None:
        self._settings = settings
        self.state = state
        self.ready = False  # the log was folded to its end once
        self.healthy = False
        self._rounds = 0  # fetch rounds done since the start
        self._round = asyncio.Event()  # set (and replaced) after every round
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="gateway-routing-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def changed(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return after the next fetch round (whether it brought anything), or after `timeout` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._round.wait(), timeout)

    async def fresh(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Return once a fetch that began after this call was folded in (or after `timeout` seconds)."""
        target = self._rounds + 2
        deadline = time.monotonic() + timeout
        while self._rounds < target and (left := deadline - time.monotonic()) > 0:
            await self.changed(left)

    async def wait_for(self, check: Callable[[], Any], timeout: float) -> Any:  # noqa: ASYNC109
        """Re-run `check` after each round until it returns something truthy; None when `timeout` runs out."""
        deadline = time.monotonic() + timeout
        while not (found := check()):
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await self.changed(left)
        return found

    async def _run(self) -> None:
        backoff = 0.5
        positions: dict[TopicPartition, int] | None = None
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                if positions is None:
                    positions = await self._fold_to_end()
                    self.ready = True
                consumer = make_consumer(self._settings, max_poll_records=2000)
                await consumer.start()
                consumer.assign(list(positions))
                for tp, offset in positions.items():
                    consumer.seek(tp, offset)
                backoff = 0.5
                # A round returns what the fetches brought, or nothing after a fetch's longest wait: so two rounds
                # hold a fetch that began after any moment (what `fresh` waits for).
                round_ms = min(1000, self._settings.kafka_fetch_max_wait_ms + 50)
                while True:
                    batches = await consumer.getmany(timeout_ms=round_ms)
                    for tp, records in batches.items():
                        self._fold(tp, records)
                        positions[tp] = records[-1].offset + 1
                    self.healthy = True
                    self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.healthy = False
                log.warning("the gateway cannot follow the event log (%s); again in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            finally:
                if consumer is not None:
                    await stop_quietly(consumer)

    async def _fold_to_end(self) -> dict[TopicPartition, int]:
        started = time.perf_counter()
        positions = await read_from_start(self._settings, EVENTS, self._fold)
        log.info("gateway: event log folded in (%d events) in %.1fs", self.state.applied, time.perf_counter() - started)
        self._tick()
        return positions

    def _fold(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        for record in records:
            try:
                self.state.apply(decode(record.value))
            except MessageDecodeError as exc:
                log.error("gateway: unreadable event at %s:%d: %s", tp, record.offset, exc)

    def _tick(self) -> None:
        self._rounds += 1
        done, self._round = self._round, asyncio.Event()
        done.set()
