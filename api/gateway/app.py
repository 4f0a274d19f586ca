"""`loraplane gateway`: the inference gateway's routes on their own, for running gateway replicas apart from the API.

The same code the API serves under `loraplane up`; it needs the broker (to follow the log and send load and usage
commands) and the secret key store (to open the engines' keys), not the read model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Response, get
from litestar.datastructures import State

import streams.catalog  # noqa: F401 - registers every message type
from api.contract import document_contract
from api.errors import EXCEPTION_HANDLERS
from api.gateway.metrics import metrics
from api.gateway.openapi import document_proxied_routes
from api.gateway.routes import ROUTES
from api.gateway.service import Gateway
from api.openapi import openapi_config
from api.server import serve
from api.system import healthz
from api.tracing import tracing_middleware
from infra.settings import Settings
from infra.telemetry import configure_tracing


@get("/readyz", tags=["system"], summary="The gateway follows the event log (503 while it does not)")
async def gateway_readyz(state: State) -> Response[dict[str, Any]]:
    ready = bool(state.gateway.ready)
    body = {"status": "ready" if ready else "not ready", "checks": {"gateway": ready}}
    return Response(body, status_code=200 if ready else 503)


def create_gateway_app(settings: Settings) -> Litestar:
    configure_tracing(settings, "gateway")
    gateway = Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    return Litestar(
        route_handlers=[healthz, gateway_readyz, metrics, *ROUTES],
        lifespan=[lifespan],
        state=State({"settings": settings, "gateway": gateway}),
        middleware=[tracing_middleware],
        on_startup=[document_proxied_routes, document_contract],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config("loraplane gateway", "OpenAI-compatible inference for every deployment and LoRA"),
        debug=False,
    )


def run_gateway(settings: Settings) -> None:
    serve(create_gateway_app(settings), settings.gateway_host, settings.gateway_port, settings.log_level)
