"""HTTP/1.1 to inference engines (vLLM's OpenAI server) for the gateway: kept-alive connections per engine, parsed
with httptools (uvicorn's parser).

Not aiohttp or httpx: this is the gateway's hot path. Measured on this machine, a minimal proxy in front of a stub
engine, 64 concurrent clients: httpx 386 requests/s, aiohttp 5,200, this client 7,500 (the stub alone 16,000). The
engines speak one dialect (JSON requests; answers with Content-Length, or chunked server-sent events), which is all
this client speaks.

Failures are told apart by when they happen, because that decides whether the gateway may try another instance:
`EngineUnreachable` before the engine answered anything (refused, reset, closed: nothing was generated, so sending
the request again is safe), `EngineTimeout` when it went silent (it may still be generating), `EngineBroken` when an
answer broke off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

from infra.errors import LoraplaneError, TransientError

# vLLM's server (uvicorn) closes a connection idle for 5 s; the pool drops them sooner, so a reused connection is
# rarely one the engine is closing at that moment (and a request that meets one gets EngineUnreachable: retried).
POOL_IDLE_S = 4.0
CONNECT_TIMEOUT_S = 5.0
# Unread streamed bytes held per connection before the engine is asked to wait (backpressure).
HIGH_WATER = 1 << 20


class EngineUnreachable(TransientError):
    """No answer began: the request may be sent again (to this instance or another)."""


class EngineTimeout(LoraplaneError):
    """The engine accepted the request and then said nothing for too long."""


class EngineBroken(LoraplaneError):
    """The engine's answer broke off, or was not HTTP."""


class _Connection(asyncio.Protocol):
    """One kept-alive connection: one request at a time; the answer's head resolves `head`, its body goes to
    `chunks` (None marks the end)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.buffered = 0
        self.paused = False
        self.closed = False
        self.complete = False
        self.keep_alive = True
        self.idle_since = 0.0
        self._content_type = b"application/json"

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(EngineBroken(f"the engine's answer is not HTTP: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head is not None and not self.head.done():
            self.head.set_exception(EngineUnreachable(f"the engine closed the connection: {exc!r}"))
        elif not self.complete:
            self.chunks.put_nowait(EngineBroken(f"the engine's answer broke off: {exc!r}"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self._content_type = value

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        if self.head is not None and not self.head.done():
            self.head.set_result((self.parser.get_status_code(), self._content_type))

    def on_body(self, body: bytes) -> None:
        self.chunks.put_nowait(bytes(body))
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def on_message_complete(self) -> None:
        self.complete = True
        self.chunks.put_nowait(None)

    # used by the client
    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.head = asyncio.get_running_loop().create_future()
        self.complete = False
        self._content_type = b"application/json"
        self.transport.write(request)
        return self.head

    def took(self, chunk: bytes) -> None:
        self.buffered -= len(chunk)
        if self.paused and self.buffered < HIGH_WATER // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

    def _fail(self, exc: BaseException) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        else:
            self.chunks.put_nowait(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class EngineResponse:
    """An engine's answer whose head has arrived; its body is read whole (`read`) or as it comes (`chunks`)."""

    def __init__(self, pool: _Pool, connection: _Connection, status: int, content_type: bytes) -> None:
        self._pool = pool
        self._connection = connection
        self._done = False
        self.status = status
        self.content_type = content_type.decode("latin-1")

    async def read(self) -> bytes:
        parts = [chunk async for chunk in self.chunks()]
        return b"".join(parts)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, chunk by chunk (nothing is held back)."""
        connection = self._connection
        while True:
            try:
                item = connection.chunks.get_nowait()  # often there already: no timer needed
            except asyncio.QueueEmpty:
                item = await self._next(connection)
            if item is None:
                self.release()
                return
            if isinstance(item, BaseException):
                self.close()
                raise item
            connection.took(item)
            yield item

    async def _next(self, connection: _Connection) -> bytes | BaseException | None:
        timeout = self._pool.read_timeout_s
        try:
            async with asyncio.timeout(timeout):
                return await connection.chunks.get()
        except TimeoutError:
            self.close()
            raise EngineTimeout(f"the engine said nothing for {timeout:g}s while it answered") from None

    def release(self) -> None:
        """The answer was read whole: its connection serves the next request."""
        if not self._done:
            self._done = True
            self._pool.give_back(self._connection)

    def close(self) -> None:
        """Drop the connection: an engine whose client is gone stops generating (vLLM aborts the request)."""
        if not self._done:
            self._done = True
            self._connection.close()


class _Pool:
    """Idle connections to one engine (host:port), the most recently used first."""

    def __init__(self, host: str, port: int, read_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.read_timeout_s = read_timeout_s
        self.idle: deque[_Connection] = deque()

    async def take(self) -> _Connection:
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if not connection.closed and now - connection.idle_since < POOL_IDLE_S:
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError) as exc:
            raise EngineUnreachable(f"cannot connect to the engine at {self.host}:{self.port}: {exc!r}") from exc
        return connection

    def give_back(self, connection: _Connection) -> None:
        if connection.closed or not connection.keep_alive or not connection.complete:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        connection.chunks = asyncio.Queue()
        connection.buffered = 0
        self.idle.append(connection)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


class EngineHttp:
    def __init__(self, *, read_timeout_s: float) -> None:
        self._read_timeout_s = read_timeout_s
        self._pools: dict[tuple[str, int], _Pool] = {}

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> EngineResponse:
        """Send a request and return once the engine's status and headers arrived."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise EngineUnreachable(f"the engine's address {url!r} is not http://host:port")
        key = (parts.hostname, parts.port or 80)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key[0], key[1], self._read_timeout_s)
        request = b"".join(
            (
                b"POST ",
                (parts.path or "/").encode(),
                b" HTTP/1.1\r\nHost: ",
                parts.netloc.encode(),
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\n",
                *(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()),
                b"\r\n",
                body,
            )
        )
        connection = await pool.take()
        head = connection.send(request)
        try:
            async with asyncio.timeout(self._read_timeout_s):
                status, content_type = await head
        except TimeoutError:
            connection.close()
            raise EngineTimeout(f"the engine at {url} did not answer in {self._read_timeout_s:g}s") from None
        except BaseException:
            with contextlib.suppress(Exception):
                connection.close()
            raise
        return EngineResponse(pool, connection, status, content_type)
