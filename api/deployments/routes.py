"""Seed 003 (DeepInfra Deploy LLM) routes, and `GET /v2/nodes` (admin): the cluster the deployments run on.

Writes publish a command and, with `?wait=`, answer the Deploy object once its outcome is projected (for a
create: once the cluster placed or queued its instances, or the wait ran out while it was still `initializing`).
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.auth import Principal, admin_only
from api.commands import CommandBus
from api.contract import answers
from api.deployments.answers import deploy_answer, node_answer, status_of
from api.deployments.schemas import Deploy, DeployLLMIn, DeployUpdateIn, NodeList
from api.errors import Forbidden, NotFound
from api.params import TeamFilter, Wait
from api.readmodel import deployment_queries
from api.teams import DEPLOYMENT, SHARED_DEPLOYMENT, as_seen_by, owns, scope
from streams import deployments as contract

DEPLOY_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
DEPLOY_ID_LENGTH = 12

Found = tuple[dict[str, Any], list[dict[str, Any]]]


def new_deploy_id() -> str:
    return "".join(secrets.choice(DEPLOY_ID_ALPHABET) for _ in range(DEPLOY_ID_LENGTH))


def _spec(data: DeployLLMIn, deploy_id: str, state: State) -> contract.DeploymentSpec:
    weights = None
    if data.hf is not None:
        sealed = None
        if data.hf.token:
            sealed = state.secrets.seal(data.hf.token, context=contract.hf_token_context(deploy_id)).to_string()
        weights = contract.Weights(repo=data.hf.repo, revision=data.hf.revision or None, sealed_token=sealed)
    settings = contract.ScaleSettings(**data.settings.model_dump()) if data.settings else contract.ScaleSettings()
    return contract.DeploymentSpec(
        model_name=data.model_name,
        gpu=data.gpu,
        num_gpus=data.num_gpus,
        max_batch_size=data.max_batch_size,
        weights=weights,
        base_model=data.base_model,
        settings=settings,
        extra_args=tuple(data.extra_args or ()),
        lora=contract.LoraSettings(**data.lora.model_dump()) if data.lora else contract.LoraSettings(),
    )


def _answer(found: Found, status_code: int = 200) -> Response[Any]:
    return Response(deploy_answer(*found).model_dump(mode="json"), status_code=status_code)


@post(
    "/deploy/llm",
    tags=["deployments"],
    status_code=200,
    summary="Deploy an LLM (seed 003)",
    opt=answers(s403="`shared` is true and the key is not an admin key"),
)
async def create_deployment(
    data: JSONBody[DeployLLMIn],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    budget = bus.budget(wait)
    deploy_id = new_deploy_id()
    if data.shared and not request.user.is_admin:
        raise Forbidden("only an admin key may share a deployment", loc=["body", "shared"])
    command = contract.CreateDeployment(spec=_spec(data, deploy_id, state), shared=data.shared)
    command_id = await bus.send(command, aggregate_id=deploy_id, actor=request.user.actor, wait=budget.left)
    if (answer := await bus.outcome(command_id, ["body"])) is not None:
        return answer

    async def scheduled() -> Found | None:
        found = await deployment_queries.get_deployment(state.engine, deploy_id)
        return found if found is not None and status_of(*found)[0] != "initializing" else None

    found = await bus.wait_until(scheduled, budget.left)
    found = found or await deployment_queries.get_deployment(state.engine, deploy_id)
    assert found is not None  # its outcome is projected, in the same transaction as its row
    return _answer(found)


@get("/deploy/list", tags=["deployments"], summary="List deployments (deleted ones are left out)")
async def list_deployments(
    request: Request[Principal, str, State], state: State, team: TeamFilter = None
) -> list[Deploy]:
    listed = await deployment_queries.list_deployments(state.engine, scope(request.user, team))
    return [deploy_answer(*await as_seen_by(state.engine, request.user, found)) for found in listed]


@get("/deploy/{deploy_id:str}", tags=["deployments"], summary="Get a deployment", opt=owns(SHARED_DEPLOYMENT))
async def get_deployment(deploy_id: FromPath[str], request: Request[Principal, str, State], state: State) -> Deploy:
    found = await _existing(state, deploy_id, deleted_too=True)
    return deploy_answer(*await as_seen_by(state.engine, request.user, found))


@put(
    "/deploy/{deploy_id:str}",
    tags=["deployments"],
    status_code=200,
    summary="Scale a deployment",
    opt=owns(DEPLOYMENT),
)
async def scale_deployment(
    deploy_id: FromPath[str],
    data: JSONBody[DeployUpdateIn],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    await _existing(state, deploy_id)
    settings = contract.ScaleSettings(**data.settings.model_dump())
    command_id = await bus.send(
        contract.ScaleDeployment(settings=settings), aggregate_id=deploy_id, actor=request.user.actor, wait=wait
    )
    if (answer := await bus.outcome(command_id, ["body"])) is not None:
        return answer
    return _answer(await _existing(state, deploy_id, deleted_too=True))


@delete(
    "/deploy/{deploy_id:str}",
    tags=["deployments"],
    status_code=202,
    summary="Delete a deployment (204 with ?wait=)",
    opt=owns(DEPLOYMENT),
)
async def delete_deployment(
    deploy_id: FromPath[str],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    await _existing(state, deploy_id)
    command_id = await bus.send(
        contract.DeleteDeployment(), aggregate_id=deploy_id, actor=request.user.actor, wait=wait
    )
    if (answer := await bus.outcome(command_id, ["path", "deploy_id"])) is not None:
        return answer
    return Response(None, status_code=204)


async def _existing(state: State, deploy_id: str, *, deleted_too: bool = False) -> Found:
    found = await deployment_queries.get_deployment(state.engine, deploy_id)
    if found is None or (found[0]["deleted"] and not deleted_too):
        raise NotFound(f"deployment {deploy_id!r} does not exist", loc=["path", "deploy_id"])
    return found


@get("/v2/nodes", tags=["admin"], guards=[admin_only], summary="Registered nodes and their devices")
async def list_nodes(state: State) -> NodeList:
    return NodeList(data=[node_answer(*found) for found in await deployment_queries.list_nodes(state.engine)])


ROUTES: list[Any] = [
    create_deployment,
    list_deployments,
    get_deployment,
    scale_deployment,
    delete_deployment,
    list_nodes,
]
