"""Adapters on deployments: serve a registered LoRA on a deployment, stop serving it, and the pre-flight check.

The check is a command too (`deployment.check_adapter`): the deployment aggregate judges it with the same pre-flight
it runs before it serves an adapter, and records the verdict (`deployment.adapter_checked`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Request, Response, delete, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.auth import Principal
from api.commands import CommandBus
from api.deployments.answers import deploy_answer
from api.deployments.schemas import DeployLoraIn, LoraCheck, LoraCheckIn
from api.errors import Conflict, NotFound
from api.params import Wait
from api.readmodel import adapter_queries, deployment_queries
from api.teams import SHARED_DEPLOYMENT, as_seen_by, owns, require, require_own_adapter_there
from streams import deployments as contract
from streams.adapters import DEFAULT_WORKSPACE, adapter_id
from streams.artifacts import Analysis, Artifact
from streams.envelope import Actor

Row = dict[str, Any]
CHECK_WAIT_S = 10.0  # the check is a question: it waits for its answer unless told otherwise


async def _adapter_version(
    state: State, principal: Principal, lora_name: str, version: int | None, loc: list[str]
) -> tuple[str, Row]:
    """(workspace, stored version row) for a LoRA named as Empower or DeepInfra do, or as `workspace/name`; only
    the caller's team's (api.teams)."""
    candidates = [(DEFAULT_WORKSPACE, lora_name)]
    if "/" in lora_name:
        workspace, _, name = lora_name.partition("/")
        candidates.append((workspace, name))
    for workspace, name in candidates:
        if await adapter_queries.get_adapter(state.engine, workspace, name) is None:
            continue
        await require(state.engine, principal, "adapter", adapter_id(workspace, name), loc)
        row = await adapter_queries.ready_version(state.engine, workspace, name, version)
        if row is None:
            which = f"version {version}" if version else "a stored version"
            raise NotFound(f"LoRA {lora_name!r} has no {which} (it may still be fetching)", loc=loc)
        return workspace, row
    raise NotFound(f"LoRA {lora_name!r} does not exist", loc=loc)


def serves_base_model(spec: Row, base_model: str) -> bool:
    """Whether a deployment (its spec as the read model keeps it) serves `base_model`, as the agents compare them."""
    served = contract.DeploymentSpec.model_validate(spec).base_model_name
    return contract.base_model_key(served) == contract.base_model_key(base_model)


def may_take_adapter(deployment: Row, instances: Sequence[Row], served_name: str) -> bool:
    """Whether an adapter can be served on the deployment as `served_name` at once: it serves that name already (a new
    version replaces it), or it has a free adapter slot (`max_loras` on each running or starting instance, as
    agents.deployments counts them; an adapter served on demand takes only a free one)."""
    if any(a["name"] == served_name for a in deployment["adapters"]):
        return True
    spec = contract.DeploymentSpec.model_validate(deployment["spec"])
    live = sum(1 for i in instances if i["state"] in ("running", "starting"))
    return len(deployment["adapters"]) < contract.adapter_slots(spec.lora, live)


def deployed_adapter(served_name: str, workspace: str, row: Row) -> contract.DeployedAdapter:
    return contract.DeployedAdapter(
        name=served_name,
        adapter_id=adapter_id(workspace, row["name"]),
        version=row["version"],
        artifact=Artifact.model_validate(row["artifact"]),
        analysis=Analysis.model_validate(row["analysis"]),
    )


async def _live_deployment(state: State, deploy_id: str, loc: list[str]) -> tuple[Row, list[Row]]:
    found = await deployment_queries.get_deployment(state.engine, deploy_id)
    if found is None or found[0]["deleted"]:
        raise NotFound(f"deployment {deploy_id!r} does not exist", loc=loc)
    return found


def _holding(found: tuple[Row, list[Row]], name: str) -> list[Row]:
    return [a for i in found[1] for a in i.get("adapters", []) if a["name"] == name]


@post("/deploy/lora", tags=["deployments"], status_code=200, summary="Serve a registered LoRA on a deployment")
async def deploy_lora(
    data: JSONBody[DeployLoraIn],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    """With `?wait=`, answers once an instance loaded it (or failed to), else when the wait runs out."""
    budget = bus.budget(wait)
    await require(state.engine, request.user, "deployment", data.deploy_id, ["body", "deploy_id"], shared_ok=True)
    await _live_deployment(state, data.deploy_id, ["body", "deploy_id"])
    workspace, row = await _adapter_version(state, request.user, data.lora_name, data.version, ["body", "lora_name"])
    command = contract.AttachAdapter(adapter=deployed_adapter(data.lora_name, workspace, row))
    command_id = await bus.send(command, aggregate_id=data.deploy_id, actor=request.user.actor, wait=budget.left)
    if (answer := await bus.outcome(command_id, ["body"])) is not None:
        return answer

    async def settled() -> tuple[Row, list[Row]] | None:
        found = await deployment_queries.get_deployment(state.engine, data.deploy_id)
        return found if found is not None and _holding(found, data.lora_name) else None

    found = await bus.wait_until(settled, budget.left) or await _live_deployment(state, data.deploy_id, [])
    return Response(deploy_answer(*await as_seen_by(state.engine, request.user, found)).model_dump(mode="json"))


@delete(
    "/deploy/{deploy_id:str}/lora/{lora_name:path}",
    tags=["deployments"],
    status_code=202,
    summary="Stop serving a LoRA on a deployment (204 with ?wait=, once no instance holds it)",
    opt=owns(SHARED_DEPLOYMENT),
)
async def undeploy_lora(
    deploy_id: FromPath[str],
    lora_name: FromPath[str],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    name = lora_name.lstrip("/")
    budget = bus.budget(wait)
    found = await _live_deployment(state, deploy_id, ["path", "deploy_id"])
    await require_own_adapter_there(state.engine, request.user, found, name, ["path", "lora_name"])
    if (answer := await detach(bus, deploy_id, name, request.user.actor, budget.left, state)) is not None:
        return answer
    return Response(None, status_code=204)


async def detach(
    bus: CommandBus, deploy_id: str, name: str, actor: Actor, wait: float, state: State
) -> Response[Any] | None:
    """Stop serving `name` on the deployment; with `wait`, until no instance holds it. None when done."""
    budget = bus.budget(wait)
    command_id = await bus.send(
        contract.DetachAdapter(name=name), aggregate_id=deploy_id, actor=actor, wait=budget.left
    )
    if (answer := await bus.outcome(command_id, ["path", "lora_name"])) is not None:
        return answer

    async def unloaded() -> bool | None:
        found = await deployment_queries.get_deployment(state.engine, deploy_id)
        return True if found is None or not [a for a in _holding(found, name) if a["state"] == "loaded"] else None

    if not await bus.wait_until(unloaded, budget.left):
        return await bus.pending(command_id)
    return None


async def release_before_delete(
    bus: CommandBus, state: State, workspace: str, name: str, force: bool, actor: Actor, wait: float
) -> None:
    """Before an adapter is deleted: 409 naming the deployments that serve it, or with `force` stop serving it
    everywhere first (with `wait`, until no instance holds it or the wait runs out; the delete follows either way)."""
    serving = await deployment_queries.deployments_serving(state.engine, adapter_id(workspace, name))
    if not serving:
        return
    if not force:
        names = ", ".join(sorted({row["deploy_id"] for row in serving}))
        reason = f"{name!r} is served by deployment(s) {names}; undeploy it first or pass force=true"
        raise Conflict(reason, loc=["path", "name"])
    budget = bus.budget(wait)
    for row in serving:
        # A refusal raises; a 202 (the unload not seen yet) must not stand in for the delete's own answer.
        await detach(bus, row["deploy_id"], row["name"], actor, budget.left, state)


@post(
    "/api/v1/lora/{name:path}",
    tags=["empower"],
    status_code=200,
    summary="POST /api/v1/lora/{name}/check: can a deployment serve this LoRA, and every reason it cannot",
)
async def check_lora(
    name: FromPath[str],
    data: JSONBody[LoraCheckIn],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = CHECK_WAIT_S,
) -> Response[Any]:
    """Answers once the deployment aggregate has judged (it runs the same check before it serves a LoRA, over what
    the instances reported, their architecture too); a 202 with the command if `wait` runs out first."""
    # Empower's names may hold a slash (org/repo) and GET/DELETE take them as a `path` parameter, beside which
    # Litestar cannot route `{name}/check`: this route takes the whole path and wants it to end in /check.
    lora, _, action = name.lstrip("/").rpartition("/")
    if action != "check" or not lora:
        raise NotFound(f"no route POST /api/v1/lora{name}; did you mean /api/v1/lora/{{name}}/check?", loc=["path"])
    budget = bus.budget(wait)
    await require(state.engine, request.user, "deployment", data.deploy_id, ["body", "deploy_id"], shared_ok=True)
    await _live_deployment(state, data.deploy_id, ["body", "deploy_id"])
    workspace, row = await _adapter_version(state, request.user, lora, data.version, ["path", "name"])
    command = contract.CheckAdapter(adapter=deployed_adapter(lora, workspace, row))
    command_id = await bus.send(command, aggregate_id=data.deploy_id, actor=request.user.actor, wait=budget.left)
    if (answer := await bus.outcome(command_id, ["body"])) is not None:
        return answer
    verdict = await deployment_queries.adapter_check(state.engine, command_id)
    assert verdict is not None  # projected with the command's outcome, in one transaction
    return Response(
        LoraCheck(
            name=lora,
            version=verdict["version"],
            deploy_id=data.deploy_id,
            verdict="compatible" if verdict["compatible"] else "incompatible",
            reasons=list(verdict["reasons"]),
        ).model_dump(mode="json")
    )


ROUTES: list[Any] = [deploy_lora, undeploy_lora, check_lora]
