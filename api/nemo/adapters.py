"""Seed 002: NeMo adapters under a workspace, at `/v2/...` and at NeMo's own `/apis/models/v2/...`.

Create registers a version from a fileset's files; the artifacts agent validates them (weights and
adapter_config.json) and the version becomes `ready` or `rejected`. With `?wait=` the create answers
once that is decided: 201 when ready, 422 with the reason when rejected.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, Parameter

from api.auth import Principal
from api.commands import CommandBus
from api.contract import answers
from api.deployments.adapters import release_before_delete
from api.errors import NotFound, Unprocessable
from api.nemo.paths import paths
from api.nemo.schemas import AdapterCreate, AdapterPatch, NemoAdapter, NemoAdapterList
from api.params import Force, Page, PageSize, TeamFilter, Wait
from api.readmodel import nemo_queries, queries
from api.schemas import Pagination
from api.teams import NEMO_ADAPTER, WORKSPACE, owns, require, scope
from streams.adapters import (
    TERMINAL_STATUSES,
    AdapterApi,
    AdapterChanges,
    AdapterSpec,
    AdapterStatus,
    DeleteAdapter,
    FilesetSource,
    RegisterAdapter,
    UpdateAdapter,
    adapter_id,
)
from streams.naming import FinetuningType

TAGS = ["nemo adapters"]
NEMO = AdapterApi.NEMO.value


@post(
    paths("/adapters"),
    status_code=201,
    tags=TAGS,
    summary="Create an adapter from a fileset (seed 002)",
    opt={
        **owns(WORKSPACE),
        **answers(s202="The adapter as it stands while it is validated (`Location` to GET it)"),
    },
)
async def create_adapter(
    workspace: FromPath[str],
    data: JSONBody[AdapterCreate],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    budget = bus.budget(wait)
    await require_workspace(state, workspace)
    fileset_workspace, _, fileset_name = data.fileset.partition("/")
    await require(state.engine, request.user, "fileset", data.fileset, ["body", "fileset"])
    files = await nemo_queries.list_fileset_files(state.engine, fileset_workspace, fileset_name)
    if not any(f["status"] == "stored" for f in files):
        raise Unprocessable(
            f"fileset {data.fileset!r} holds no stored files; upload the adapter's files to it first",
            loc=["body", "fileset"],
        )
    spec = AdapterSpec(
        workspace=workspace,
        name=data.name,
        source=FilesetSource(fileset=data.fileset),
        base_model=data.model,
        finetuning_type=data.finetuning_type,
        description=data.description,
        enabled=data.enabled,
        lora_config=data.lora_config,
        api=AdapterApi.NEMO,
    )
    command_id = await bus.send(
        RegisterAdapter(spec=spec, new_version_if_exists=False),
        aggregate_id=adapter_id(workspace, data.name),
        actor=request.user.actor,
        wait=budget.left,
    )
    if (answer := await bus.outcome(command_id, ["body"])) is not None:
        return answer

    async def decided() -> dict[str, Any] | None:
        row = await nemo_queries.get_version_caused_by(state.engine, workspace, data.name, command_id)
        return row if row is not None and row["status"] in TERMINAL_STATUSES else None

    version = await bus.wait_until(decided, budget.left)
    if version is not None and version["status"] == AdapterStatus.REJECTED:
        raise Unprocessable(version["reason"] or "the fileset's files were refused", loc=["body", "fileset"])
    row = await nemo_queries.get_adapter(state.engine, workspace, data.name, NEMO)
    location = f"/v2/workspaces/{workspace}/adapters/{data.name}"
    if row is None:  # deleted meanwhile by another request
        raise NotFound(f"adapter {data.name!r} was deleted meanwhile", loc=["body", "name"])
    body = NemoAdapter.from_row(row).model_dump(mode="json")
    # Still being validated when the wait ran out: 202 with what is known, and where to look again.
    return Response(body, status_code=201 if version is not None else 202, headers={"Location": location})


@get(paths("/adapters"), tags=TAGS, summary="List the adapters of a workspace", opt=owns(WORKSPACE))
async def list_adapters(
    workspace: FromPath[str],
    request: Request[Principal, str, State],
    state: State,
    page: Page = 1,
    page_size: PageSize = 100,
    finetuning_type: Annotated[
        str | None,
        Parameter(
            description="lora, p_tuning or all_weights (either case)",
            pattern="^(lora|p_tuning|all_weights|LORA|P_TUNING|ALL_WEIGHTS)$",
        ),
    ] = None,
    model: Annotated[str | None, Parameter(description="Base model reference, exactly")] = None,
    enabled: FromQuery[bool | None] = None,
    team: TeamFilter = None,
) -> NemoAdapterList:
    await require_workspace(state, workspace)
    wanted_type = _finetuning_type(finetuning_type) if finetuning_type is not None else None
    adapters = [
        NemoAdapter.from_row(r)
        for r in await nemo_queries.list_adapters(state.engine, workspace, NEMO, scope(request.user, team))
    ]
    adapters = [
        a
        for a in adapters
        if (wanted_type is None or a.finetuning_type is wanted_type)
        and (model is None or a.model == model)
        and (enabled is None or a.enabled is enabled)
    ]
    start = (page - 1) * page_size
    shown = adapters[start : start + page_size]
    return NemoAdapterList(
        data=shown,
        pagination=Pagination.of(page, page_size, len(shown), len(adapters)),
    )


@get(paths("/adapters/{name:str}"), tags=TAGS, summary="Get an adapter", opt=owns(WORKSPACE, NEMO_ADAPTER))
async def get_adapter(workspace: FromPath[str], name: FromPath[str], state: State) -> NemoAdapter:
    await require_workspace(state, workspace)
    return await _adapter(state, workspace, name)


@patch(
    paths("/adapters/{name:str}"),
    status_code=200,
    tags=TAGS,
    summary="Update description, enabled, lora_config",
    opt=owns(WORKSPACE, NEMO_ADAPTER),
)
async def update_adapter(
    workspace: FromPath[str],
    name: FromPath[str],
    data: JSONBody[AdapterPatch],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
) -> Response[Any]:
    await _require_not_foreign(state, workspace, name)
    changes = AdapterChanges(**data.model_dump(exclude_none=True))
    command_id = await bus.send(
        UpdateAdapter(workspace=workspace, name=name, changes=changes),
        aggregate_id=adapter_id(workspace, name),
        actor=request.user.actor,
        wait=wait,
    )
    if (answer := await bus.outcome(command_id, ["path"])) is not None:
        return answer
    return Response((await _adapter(state, workspace, name)).model_dump(mode="json"), status_code=200)


@delete(
    paths("/adapters/{name:str}"),
    status_code=202,
    tags=TAGS,
    summary="Delete an adapter (204 with ?wait=)",
    opt=owns(WORKSPACE, NEMO_ADAPTER),
)
async def delete_adapter(
    workspace: FromPath[str],
    name: FromPath[str],
    request: Request[Principal, str, State],
    bus: NamedDependency[CommandBus],
    state: State,
    wait: Wait = 0,
    force: Force = False,
) -> Response[Any]:
    await _require_not_foreign(state, workspace, name)
    budget = bus.budget(wait)
    await release_before_delete(bus, state, workspace, name, force, request.user.actor, budget.left)
    command_id = await bus.send(
        DeleteAdapter(workspace=workspace, name=name),
        aggregate_id=adapter_id(workspace, name),
        actor=request.user.actor,
        wait=budget.left,
    )
    if (answer := await bus.outcome(command_id, ["path"])) is not None:
        return answer
    return Response(None, status_code=204)


ADAPTER_ROUTES: list[Any] = [create_adapter, list_adapters, get_adapter, update_adapter, delete_adapter]


async def require_workspace(state: State, workspace: str) -> None:
    if await queries.get_workspace(state.engine, workspace) is None:
        raise NotFound(f"workspace {workspace!r} does not exist", loc=["path", "workspace"])


async def _adapter(state: State, workspace: str, name: str) -> NemoAdapter:
    row = await nemo_queries.get_adapter(state.engine, workspace, name, NEMO)
    if row is None:
        raise NotFound(f"adapter {name!r} does not exist in workspace {workspace!r}", loc=["path", "name"])
    return NemoAdapter.from_row(row)


async def _require_not_foreign(state: State, workspace: str, name: str) -> None:
    """The agent decides whether the adapter exists; these routes only refuse one another API registered."""
    await require_workspace(state, workspace)
    row = await nemo_queries.get_adapter(state.engine, workspace, name, None)
    if row is not None and row["api"] != NEMO:
        raise NotFound(f"adapter {name!r} does not exist in workspace {workspace!r}", loc=["path", "name"])


def _finetuning_type(value: str) -> FinetuningType:
    try:
        return FinetuningType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in FinetuningType)
        raise Unprocessable(f"finetuning_type must be one of {allowed}", loc=["query", "finetuning_type"]) from None
