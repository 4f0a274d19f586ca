"""The Litestar application: routes, auth, errors, and the read model kept current in the background."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware.base import DefineMiddleware
from opentelemetry.sdk.trace.export import SpanExporter

import streams.catalog  # noqa: F401 - registers every message type
from api.admin.api_keys import ApiKeyController
from api.auth import PUBLIC_PATHS, ApiKeyAuthentication
from api.commands import CommandBus
from api.contract import document_contract
from api.deployments.adapters import ROUTES as DEPLOYMENT_ADAPTER_ROUTES
from api.deployments.routes import ROUTES as DEPLOYMENT_ROUTES
from api.empower.routes import ROUTES as EMPOWER_ROUTES
from api.errors import EXCEPTION_HANDLERS
from api.evaluations.routes import ROUTES as EVALUATION_ROUTES
from api.events.routes import ROUTES as EVENT_ROUTES
from api.gateway.metrics import metrics
from api.gateway.openapi import document_proxied_routes
from api.gateway.routes import GATEWAY_PATHS
from api.gateway.routes import ROUTES as GATEWAY_ROUTES
from api.gateway.service import Gateway
from api.lora_files.routes import ROUTES as LORA_FILE_ROUTES
from api.nemo.routes import ROUTES as NEMO_ROUTES
from api.openapi import openapi_config
from api.options import options_middleware
from api.readmodel.database import create_engine, create_schema
from api.readmodel.follower import ReadModelFollower
from api.readmodel.projector import Projector
from api.server import serve
from api.staging_sweep import sweep_forever
from api.system import command_status, healthz, readyz
from api.teams import team_guard
from api.tracing import tracing_middleware
from api.usage.routes import ROUTES as USAGE_ROUTES
from api.workspaces.routes import WorkspaceController
from infra.kafka_admin import ensure_topics
from infra.s3 import make_client
from infra.secrets import open_secret_box
from infra.settings import Settings
from infra.telemetry import configure_tracing
from streams.topics import ALL_TOPICS


def create_app(settings: Settings, span_exporter: SpanExporter | None = None) -> Litestar:
    configure_tracing(settings, "api", span_exporter)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = create_engine(settings.read_model_url)
        await create_schema(engine)
        await ensure_topics(settings.require_kafka(), ALL_TOPICS)
        bus = CommandBus(settings, engine)
        await bus.start()
        projector = Projector(engine)
        follower = ReadModelFollower(settings, projector, bus.projected)
        follower.start()
        gateway = Gateway(settings)
        await gateway.start()
        s3 = make_client(settings)
        sweep = asyncio.create_task(sweep_forever(settings, s3), name="staging-sweep")
        app.state.update(
            engine=engine,
            bus=bus,
            follower=follower,
            gateway=gateway,
            s3=s3,
            secrets=open_secret_box(settings),
        )
        try:
            yield
        finally:
            sweep.cancel()
            await gateway.stop()
            await follower.stop()
            await bus.stop()
            projector.close()
            await engine.dispose()

    def provide_bus(state: State) -> CommandBus:
        return state.bus

    return Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            command_status,
            WorkspaceController,
            ApiKeyController,
            *EMPOWER_ROUTES,
            *LORA_FILE_ROUTES,
            *EVALUATION_ROUTES,
            *NEMO_ROUTES,
            *DEPLOYMENT_ROUTES,
            *DEPLOYMENT_ADAPTER_ROUTES,
            *GATEWAY_ROUTES,
            *USAGE_ROUTES,
            *EVENT_ROUTES,
        ],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        dependencies={"bus": Provide(provide_bus, sync_to_thread=False)},
        guards=[team_guard],
        middleware=[
            tracing_middleware,
            options_middleware,
            DefineMiddleware(ApiKeyAuthentication, exclude=[*(f"^{p}" for p in sorted(PUBLIC_PATHS)), GATEWAY_PATHS]),
        ],
        on_startup=[document_proxied_routes, document_contract],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=openapi_config("loraplane", "Control plane for LoRA adapters and LLM deployments"),
        debug=False,
    )


def run_api(settings: Settings) -> None:
    serve(create_app(settings), settings.api_host, settings.api_port, settings.log_level)
