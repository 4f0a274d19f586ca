"""The gateway's HTTP client to engines (infra.engine_http) against real servers on loopback: the stub engine, and
small servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from infra.engine_http import EngineBroken, EngineHttp, EngineTimeout, EngineUnreachable
from tests.support import free_port, wait_until

STUB = Path(__file__).with_name("stub_engine.py")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, str(STUB), "--served-model-name", "m", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), timeout=30, message="the stub engine")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def body(**fields: object) -> bytes:
    return json.dumps({"model": "m", "prompt": "a b", "max_tokens": 3, **fields}).encode()


def test_answers_whole_and_streamed_over_kept_alive_connections(stub: str) -> None:
    async def run() -> None:
        http = EngineHttp(read_timeout_s=10)
        try:
            answer = await http.post(f"{stub}/v1/completions", body(), JSON)
            assert answer.status == 200 and answer.content_type.startswith("application/json")
            assert json.loads(await answer.read())["choices"][0]["text"] == " m says a"
            again = await http.post(f"{stub}/v1/completions", body(), JSON)
            assert again.status == 200 and json.loads(await again.read())["usage"]["completion_tokens"] == 3
            missing = await http.post(f"{stub}/v1/completions", body(model="nope"), JSON)
            assert missing.status == 404 and b"does not exist" in await missing.read()
            [pool] = http._pools.values()
            assert len(pool.idle) == 1  # one connection served all three

            streamed = await http.post(f"{stub}/v1/completions", body(stream=True, max_tokens=4), JSON)
            assert streamed.content_type.startswith("text/event-stream")
            events = b"".join([chunk async for chunk in streamed.chunks()])
            assert events.count(b"data: ") == 5 and events.endswith(b"data: [DONE]\n\n")
        finally:
            await http.close()

    asyncio.run(run())


def test_a_stream_arrives_as_it_is_made_and_closing_it_stops_the_engine(stub: str) -> None:
    before = httpx.get(f"{stub}/_stub/stats").json()["cancelled"]

    async def run() -> float:
        http = EngineHttp(read_timeout_s=10)
        try:
            began = time.perf_counter()
            answer = await http.post(f"{stub}/v1/completions", body(prompt="slow", max_tokens=30, stream=True), JSON)
            async for _ in answer.chunks():
                break
            first = time.perf_counter() - began
            answer.close()
            return first
        finally:
            await http.close()

    assert asyncio.run(run()) < 1.0  # 30 tokens at 0.2 s would take 6 s
    wait_until(lambda: httpx.get(f"{stub}/_stub/stats").json()["cancelled"] > before, timeout=3)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[str]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/completions"
    finally:
        srv.close()


async def _request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)


def test_failures_are_told_apart_by_when_they_happen() -> None:
    async def silent_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.close()

    async def stall_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await asyncio.sleep(5)

    async def break_off(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"partial')
        await writer.drain()
        writer.close()

    async def run() -> None:
        http = EngineHttp(read_timeout_s=0.5)
        try:
            with pytest.raises(EngineUnreachable):  # nothing listens
                await http.post(f"http://127.0.0.1:{free_port()}/v1/completions", b"{}", JSON)
            async with server(silent_close) as url:
                with pytest.raises(EngineUnreachable):  # closed before any answer: safe to send again
                    await http.post(url, b"{}", JSON)
            async with server(stall_after_head) as url:
                answer = await http.post(url, b"{}", JSON)
                with pytest.raises(EngineTimeout):
                    await answer.read()
            async with server(break_off) as url:
                answer = await http.post(url, b"{}", JSON)
                with pytest.raises(EngineBroken):
                    await answer.read()
        finally:
            await http.close()

    asyncio.run(run())


def test_a_connection_the_engine_closed_while_idle_is_not_reused() -> None:
    served = []

    async def once_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        served.append(writer.get_extra_info("peername"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # as uvicorn does once its keep-alive timeout runs out

    async def run() -> None:
        http = EngineHttp(read_timeout_s=5)
        try:
            async with server(once_then_close) as url:
                for _ in range(3):
                    answer = await http.post(url, b"{}", JSON)
                    assert await answer.read() == b"{}"
                    await asyncio.sleep(0.2)
        finally:
            await http.close()

    asyncio.run(run())
    assert len(set(served)) == 3
