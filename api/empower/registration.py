"""Registering an adapter and, with `?wait=`, waiting for the version this request made to be stored or refused."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.datastructures import State

from api.auth import Principal
from api.commands import CommandBus
from api.errors import ApiError
from api.readmodel import adapter_queries
from streams.adapters import TERMINAL_STATUSES, AdapterSpec, AdapterStatus, RegisterAdapter, adapter_id


async def register(
    spec: AdapterSpec, request: Request[Principal, str, State], bus: CommandBus, wait: float, name_field: str
) -> dict[str, Any] | Response[Any]:
    """The version's row once `ready` or `rejected`; a 202 with the command's status while it is not.

    Raises the aggregate's refusal of the command itself (an invalid name) as an ApiError on
    `["body", name_field]`, the request field the name came from.
    """
    budget = bus.budget(wait)
    command_id = await bus.send(
        RegisterAdapter(spec=spec, new_version_if_exists=True),
        aggregate_id=adapter_id(spec.workspace, spec.name),
        actor=request.user.actor,
        wait=budget.left,
    )
    try:
        answer = await bus.outcome(command_id, ["body"])
    except ApiError as refused:
        if refused.loc == ["body", "name"]:
            refused.loc = ["body", name_field]
        raise
    if answer is not None:
        return answer
    engine = request.app.state.engine

    async def finished() -> dict[str, Any] | None:
        row = await adapter_queries.version_by_correlation(engine, command_id)
        return row if row is not None and AdapterStatus(row["status"]) in TERMINAL_STATUSES else None

    row = await bus.wait_until(finished, budget.left)
    if row is None:
        return await bus.pending(command_id)
    return row
