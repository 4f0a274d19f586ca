"""`/v2/workspaces`: create, list, get and delete, through the command pipeline."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from api.auth import Principal
from api.commands import CommandBus
from api.errors import NotFound
from api.params import Page, PageSize, TeamFilter, Wait
from api.readmodel import queries
from api.schemas import Pagination
from api.teams import WORKSPACE_NAME, owns, scope
from api.workspaces.schemas import Workspace, WorkspaceCreate, WorkspaceList
from streams.workspaces import CreateWorkspace, DeleteWorkspace


class WorkspaceController(Controller):
    path = "/v2/workspaces"
    tags = ["workspaces"]

    @post("/", status_code=201, summary="Create a workspace")
    async def create(
        self,
        data: JSONBody[WorkspaceCreate],
        request: Request[Principal, str, State],
        bus: NamedDependency[CommandBus],
        state: State,
        wait: Wait = 0,
    ) -> Response[Any]:
        command_id = await bus.send(
            CreateWorkspace(name=data.name, description=data.description),
            aggregate_id=data.name,
            actor=request.user.actor,
            wait=wait,
        )
        if (answer := await bus.outcome(command_id, ["body"])) is not None:
            return answer
        return Response(await _workspace(state, data.name), status_code=201)

    @get("/", summary="List workspaces")
    async def list_workspaces(
        self,
        request: Request[Principal, str, State],
        state: State,
        page: Page = 1,
        page_size: PageSize = 100,
        team: TeamFilter = None,
    ) -> WorkspaceList:
        rows, total = await queries.list_workspaces(
            state.engine, offset=(page - 1) * page_size, limit=page_size, team=scope(request.user, team)
        )
        return WorkspaceList(
            data=[Workspace.from_row(r) for r in rows],
            pagination=Pagination.of(page, page_size, len(rows), total),
        )

    @get("/{name:str}", summary="Get a workspace", opt=owns(WORKSPACE_NAME))
    async def get_workspace(self, name: FromPath[str], state: State) -> Workspace:
        return await _workspace(state, name)

    @delete(
        "/{name:str}",
        status_code=202,
        summary="Delete a workspace (204 once done, with ?wait=)",
        opt=owns(WORKSPACE_NAME),
    )
    async def delete_workspace(
        self,
        name: FromPath[str],
        request: Request[Principal, str, State],
        bus: NamedDependency[CommandBus],
        wait: Wait = 0,
    ) -> Response[Any]:
        command_id = await bus.send(DeleteWorkspace(name=name), aggregate_id=name, actor=request.user.actor, wait=wait)
        if (answer := await bus.outcome(command_id, ["path"])) is not None:
            return answer
        return Response(None, status_code=204)


async def _workspace(state: State, name: FromPath[str]) -> Workspace:
    row = await queries.get_workspace(state.engine, name)
    if row is None:
        raise NotFound(f"workspace {name!r} does not exist", loc=["path", "name"])
    return Workspace.from_row(row)
