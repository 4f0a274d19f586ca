"""Seed 000 (Empower: LoRAs from the Hugging Face Hub) and seed 001 (DeepInfra: LoRAs from CivitAI).

Both register into the default workspace; registering a name again makes a new version.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, HeaderParameter, JSONBody, Parameter

from api.auth import Principal
from api.commands import CommandBus
from api.deployments.adapters import may_take_adapter, release_before_delete, serves_base_model
from api.empower.answers import base_model_of, deploy_answer, lora_answer
from api.empower.civitai_url import civitai_url_problem
from api.empower.registration import register
from api.empower.rejections import civitai_rejection_loc, hf_rejection_loc
from api.empower.schemas import DeepInfraLoraCreate, Deploy, Lora, LoraCreate, LoraList
from api.errors import NotFound, Unprocessable
from api.params import Force, Page, PageSize, TeamFilter, Wait
from api.readmodel import adapter_queries, deployment_queries
from api.teams import EMPOWER_ADAPTER, owns, scope
from infra.settings import Settings
from streams.adapters import (
    DEFAULT_WORKSPACE,
    AdapterApi,
    AdapterSpec,
    AdapterStatus,
    CivitaiSource,
    DeleteAdapter,
    HfSource,
    adapter_id,
    hf_token_context,
    public_name,
)

LoraName = Annotated[str, Parameter(description="The LoRA's name; it may hold one slash (org/repo)")]


def _lora_name(raw: str) -> str:
    return raw.lstrip("/")  # a `path` parameter starts with the slash that introduced it


@post("/api/v1/lora", tags=["empower"], status_code=200, summary="Register a LoRA from the Hugging Face Hub")
async def create_lora(
    data: JSONBody[LoraCreate],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    name = data.name or data.model_name
    sealed = None
    if data.hf_token:
        context = hf_token_context(adapter_id(DEFAULT_WORKSPACE, name))
        sealed = state.secrets.seal(data.hf_token, context=context).to_string()
    spec = AdapterSpec(
        workspace=DEFAULT_WORKSPACE,
        name=name,
        source=HfSource(repo_id=data.model_name, revision=data.hf_revision or None, sealed_token=sealed),
        base_model=data.base_model_name,
        api=AdapterApi.EMPOWER,
    )
    budget = bus.budget(wait)
    row = await register(spec, request, bus, budget.left, "name" if data.name else "model_name")
    if isinstance(row, Response):
        return row
    if row["status"] == AdapterStatus.REJECTED:
        raise Unprocessable(row["reason"] or "the adapter was refused", loc=hf_rejection_loc(row["rejected_part"]))
    served = await _served_when_deployed(bus, state, row, budget.left)
    return Response(lora_answer(row, state.settings, served).model_dump(mode="json"), status_code=200)


async def _served_when_deployed(
    bus: CommandBus, state: State, row: dict[str, Any], wait: float
) -> dict[str, Any] | None:
    """The deployment serving the stored version: a live deployment of its base model with a free adapter slot takes
    it (the worker's agents.adapter_deployments), so wait for that when there is one."""
    key = adapter_id(DEFAULT_WORKSPACE, row["name"])
    base = base_model_of(row)
    live = await deployment_queries.list_deployments(state.engine)
    if not base or not any(
        serves_base_model(deployment["spec"], base)
        and may_take_adapter(deployment, instances, public_name(DEFAULT_WORKSPACE, row["name"]))
        for deployment, instances in live
    ):
        return (await deployment_queries.served_versions(state.engine, [key])).get(key)

    async def served() -> dict[str, Any] | None:
        return (await deployment_queries.served_versions(state.engine, [key])).get(key)

    return await bus.wait_until(served, wait) or await served()


@get("/api/v1/lora", tags=["empower"], summary="List LoRAs")
async def list_loras(
    request: Request[Principal, str, State],
    state: State,
    page: Page = 1,
    page_size: PageSize = 100,
    team: TeamFilter = None,
) -> LoraList:
    rows, total = await adapter_queries.list_adapters(
        state.engine,
        DEFAULT_WORKSPACE,
        offset=(page - 1) * page_size,
        limit=page_size,
        team=scope(request.user, team),
    )
    served = await deployment_queries.served_versions(
        state.engine, [adapter_id(DEFAULT_WORKSPACE, r["name"]) for r in rows]
    )
    return LoraList(
        data=[lora_answer(r, state.settings, served.get(adapter_id(DEFAULT_WORKSPACE, r["name"]))) for r in rows],
        total=total,
    )


@get("/api/v1/lora/{name:path}", tags=["empower"], summary="Get a LoRA (its latest version)", opt=owns(EMPOWER_ADAPTER))
async def get_lora(name: FromPath[LoraName], state: State) -> Lora:
    row = await _existing(state, _lora_name(name))
    key = adapter_id(DEFAULT_WORKSPACE, row["name"])
    return lora_answer(row, state.settings, (await deployment_queries.served_versions(state.engine, [key])).get(key))


@delete(
    "/api/v1/lora/{name:path}",
    tags=["empower"],
    status_code=202,
    summary="Delete a LoRA (204 with ?wait=)",
    opt=owns(EMPOWER_ADAPTER),
)
async def delete_lora(
    name: FromPath[LoraName],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
    force: Force = False,
) -> Response[Any]:
    lora = _lora_name(name)
    await _existing(state, lora)
    budget = bus.budget(wait)
    await release_before_delete(bus, state, DEFAULT_WORKSPACE, lora, force, request.user.actor, budget.left)
    command_id = await bus.send(
        DeleteAdapter(workspace=DEFAULT_WORKSPACE, name=lora),
        aggregate_id=adapter_id(DEFAULT_WORKSPACE, lora),
        actor=request.user.actor,
        wait=budget.left,
    )
    if (answer := await bus.outcome(command_id, ["path", "name"])) is not None:
        return answer
    return Response(None, status_code=204)


async def _existing(state: State, name: str) -> dict[str, Any]:
    row = await adapter_queries.get_adapter(state.engine, DEFAULT_WORKSPACE, name)
    if row is None:
        raise NotFound(f"LoRA {name!r} does not exist", loc=["path", "name"])
    return row


@post("/v1/lora/create", tags=["deepinfra"], status_code=200, summary="Create a LoRA from CivitAI")
async def create_deepinfra_lora(
    data: JSONBody[DeepInfraLoraCreate],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
    xi_api_key: Annotated[str | None, HeaderParameter(name="xi-api-key", required=False)] = None,  # accepted, unused
) -> Response[Any]:
    settings: Settings = state.settings
    url = data.source.civit_url
    if problem := civitai_url_problem(url, settings.civitai_hosts):
        raise Unprocessable(f"civit_url refused: {problem}", loc=["body", "source", "civit_url"])
    spec = AdapterSpec(
        workspace=DEFAULT_WORKSPACE,
        name=data.lora_name,
        source=CivitaiSource(url=url),
        base_model=data.base_model,
        description=data.description or "",
        private=data.private,
        api=AdapterApi.DEEPINFRA,
    )
    row = await register(spec, request, bus, wait, "lora_name")
    if isinstance(row, Response):
        return row
    if row["status"] == AdapterStatus.REJECTED:
        reason = row["reason"] or "the adapter was refused"
        raise Unprocessable(reason, loc=civitai_rejection_loc(row["rejected_part"]))
    answer: Deploy = deploy_answer(row)
    return Response(answer.model_dump(mode="json"), status_code=200)


ROUTES: list[Any] = [create_lora, list_loras, get_lora, delete_lora, create_deepinfra_lora]
