"""The proxied OpenAI routes as a plain ASGI handler: the request's body in, the engine's answer out, nothing else.

These carry every model call, so they skip Litestar's request and response machinery (measured: most of the
gateway's time per request went there). A streamed answer is relayed while the client's disconnect is watched for:
when it goes, the relay is cancelled, which closes the engine's connection (vLLM then aborts the request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, Receive, Scope, Send

from api.gateway.errors import BadRequest, GatewayError, Internal, MethodNotAllowed, TooLarge
from api.gateway.service import Gateway
from streams.deployments import DEPLOYMENT_HEADER

log = logging.getLogger(__name__)

# The largest request body taken (as Litestar's default): prompts, not files.
MAX_BODY_BYTES = 10 * 1024 * 1024


async def serve(gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
    try:
        if (method := scope.get("method")) != "POST":
            raise MethodNotAllowed(f"{method} is not allowed here: send POST")
        principal = await gateway.authenticate(_header(scope, b"authorization"))
        body = await _body(receive)
        deployment = _header(scope, DEPLOYMENT_HEADER.lower().encode("latin-1"))
        if deployment is not None and not deployment.strip():
            raise BadRequest(f"`{DEPLOYMENT_HEADER}` names a deployment id", param=DEPLOYMENT_HEADER)
        answer = await gateway.forward(scope["path"], body, principal, deployment.strip() if deployment else None)
    except GatewayError as exc:
        answer = exc.answer()
    except Exception:
        log.exception("unhandled error on %s", scope["path"])
        answer = Internal("internal error; see the gateway's log").answer()
    headers = [(b"content-type", answer.content_type.encode("latin-1"))]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    start: HTTPResponseStartEvent = {"type": "http.response.start", "status": answer.status, "headers": headers}
    await send(start)
    if answer.stream is None:
        await send(_body_event(answer.body, more=False))
        return
    await _relay(answer.stream, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise asyncio.CancelledError  # the client went away before its body was read
        chunk = message["body"]
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise TooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _relay(stream: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
    async def forward() -> None:
        async for chunk in stream:
            await send(_body_event(chunk, more=True))
        await send(_body_event(b"", more=False))

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    relay = asyncio.ensure_future(forward())
    watch = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (relay, watch):
            task.cancel()
        for task in (relay, watch):
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # the client went away mid-send: nothing more to say to it
                log.debug("streaming to the client ended: %r", exc)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()  # its cleanup (the engine's connection, usage, metrics) runs even if never iterated


def _body_event(body: bytes, *, more: bool) -> HTTPResponseBodyEvent:
    return {"type": "http.response.body", "body": body, "more_body": more}
