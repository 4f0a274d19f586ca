"""`/v2/admin/api-keys`: admins issue, list and revoke API keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Principal, admin_only, issue_key
from api.commands import CommandBus
from api.contract import answers
from api.params import TeamFilter, Wait
from api.readmodel import queries
from streams.api_keys import CreateApiKey, RevokeApiKey, Role
from streams.envelope import DEFAULT_TEAM
from streams.names import EntityName


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    role: Role = Role.USER
    team: EntityName = Field(default=DEFAULT_TEAM, description="The team the key acts for (workspace name rules)")


class ApiKeyIssued(BaseModel):
    id: str
    name: str
    role: Role
    team: str
    key: str = Field(description="The key itself; shown only in this answer")
    command_id: str


class ApiKeyInfo(BaseModel):
    id: str
    name: str
    role: Role
    team: str
    revoked: bool
    created_at: datetime
    creator_name: str


class ApiKeyController(Controller):
    path = "/v2/admin/api-keys"
    tags = ["admin"]
    guards = [admin_only]

    @post(
        "/",
        status_code=201,
        summary="Issue an API key (the key is shown once)",
        opt=answers(s202="The key, shown once; the command's outcome was not known when `?wait=` ran out"),
    )
    async def create(
        self,
        data: JSONBody[ApiKeyCreate],
        request: Request[Principal, str, State],
        bus: NamedDependency[CommandBus],
        wait: Wait = 0,
    ) -> Response[Any]:
        issued = issue_key()
        command_id = await bus.send(
            CreateApiKey(
                key_id=issued.key_id, name=data.name, role=data.role, key_hash=issued.key_hash, team=data.team
            ),
            aggregate_id=issued.key_id,
            actor=request.user.actor,
            wait=wait,
        )
        answer = await bus.outcome(command_id, ["body"])
        body = ApiKeyIssued(
            id=issued.key_id, name=data.name, role=data.role, team=data.team, key=issued.secret, command_id=command_id
        )
        return Response(body.model_dump(mode="json"), status_code=201 if answer is None else 202)

    @get("/", summary="List API keys")
    async def list_keys(self, state: State, team: TeamFilter = None) -> list[ApiKeyInfo]:
        return [
            ApiKeyInfo(
                id=r["key_id"],
                name=r["name"],
                role=Role(r["role"]),
                team=r["team"],
                revoked=r["revoked"],
                created_at=r["created_at"],
                creator_name=r["creator_name"],
            )
            for r in await queries.list_api_keys(state.engine, team)
        ]

    @delete("/{key_id:str}", status_code=202, summary="Revoke an API key (204 once done, with ?wait=)")
    async def revoke(
        self,
        key_id: FromPath[str],
        request: Request[Principal, str, State],
        bus: NamedDependency[CommandBus],
        wait: Wait = 0,
    ) -> Response[Any]:
        command_id = await bus.send(
            RevokeApiKey(key_id=key_id), aggregate_id=key_id, actor=request.user.actor, wait=wait
        )
        if (answer := await bus.outcome(command_id, ["path"])) is not None:
            return answer
        return Response(None, status_code=204)
