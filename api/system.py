"""Health, readiness and command status."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath
from sqlalchemy import text

from api.commands import CommandBus, CommandStatus
from api.contract import answers
from api.teams import COMMAND, owns
from infra.kafka_admin import kafka_ready
from infra.s3 import s3_ready


@get("/healthz", tags=["system"], summary="The process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _read_model_ready(state: State) -> bool:
    try:
        async with state.engine.connect() as conn:
            await asyncio.wait_for(conn.execute(text("SELECT 1")), 2.0)
        return bool(state.follower.healthy)
    except Exception:
        return False


@get(
    "/readyz",
    tags=["system"],
    summary="Broker, S3 and read model are reachable, and the gateway follows the log",
    opt=answers(s503="Not ready: the checks that failed are false"),
)
async def readyz(state: State) -> Response[dict[str, Any]]:
    settings = state.settings
    broker, s3, read_model = await asyncio.gather(
        kafka_ready(settings.require_kafka()), s3_ready(settings), _read_model_ready(state)
    )
    checks = {"broker": broker, "s3": s3, "read_model": read_model, "gateway": bool(state.gateway.ready)}
    ready = all(checks.values())
    return Response({"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503)


@get("/v2/commands/{command_id:str}", tags=["system"], summary="What became of a command", opt=owns(COMMAND))
async def command_status(command_id: FromPath[str], bus: NamedDependency[CommandBus]) -> CommandStatus:
    return await bus.status(command_id)
