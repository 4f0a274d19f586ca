"""One server span per HTTP request, continuing the caller's trace (its `traceparent` header); commands published
and engine requests sent inside it carry its context."""

from __future__ import annotations

from typing import cast

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from opentelemetry.trace import SpanKind, Status, StatusCode

from infra.telemetry import context_of, tracer


def tracing_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        method = cast("HTTPScope", scope)["method"]
        name = f"{method} {scope['path']}"
        incoming = next((bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None)
        parent = context_of(incoming)
        with tracer("loraplane.api").start_as_current_span(name, context=parent, kind=SpanKind.SERVER) as span:
            if not span.is_recording():  # tracing is off: the caller's context is all there is to carry on
                await app(scope, receive, send)
                return
            span.set_attribute("http.request.method", method)
            span.set_attribute("url.path", scope["path"])

            async def traced_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await app(scope, receive, traced_send)

    return middleware
