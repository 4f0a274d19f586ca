"""Teams in the API, in one place: who may see or change what another team owns.

Every resource a team creates is owned by that team (streams.ownership; the read model's `owners` table). A user key
acts within its team: another team's resource answers 404, as if it did not exist, to a read and to a write alike;
lists show only the caller's team. Admin keys see and change everything, and filter lists with `?team=`.

Routes say which owned resources their path names (`opt={OWNS: (...)}`, see `owns`), and the app-wide guard
`team_guard` checks them before the handler runs, so no command for another team's resource is ever published.
A resource named in a request body (the deployment and LoRA of `POST /deploy/lora`, a NeMo adapter's fileset) is
checked by the handler with `require`, the same function. The agents refuse such commands too
(agents.ownership), for clients that write to the commands topic directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Principal
from api.errors import NotFound
from api.readmodel import queries
from streams.adapters import DEFAULT_WORKSPACE

OWNS = "owns"  # the key of a route's `opt` that lists the owned resources its path names

# How each kind of resource is called in a 404, as the routes call it when it does not exist.
_NOUNS = {"workspace": "workspace", "adapter": "LoRA", "fileset": "fileset", "deployment": "deployment"}


@dataclass(frozen=True)
class Owned:
    """An owned resource a route's path names: its aggregate type, how its id is made from the path parameters
    (None: the path names none, e.g. a malformed one the handler refuses itself), the parameter a 404 names, and
    whether the route may reach another team's shared deployment (reading it; never changing it)."""

    aggregate_type: str
    id_of: Callable[[Mapping[str, Any]], str | None]
    param: str
    shared_ok: bool = False


def owns(*owned: Owned) -> dict[str, Any]:
    """A route's `opt` declaring what its path names: `@get(..., opt=owns(WORKSPACE))`."""
    return {OWNS: owned}


def _param(name: str) -> Callable[[Mapping[str, Any]], str | None]:
    return lambda params: str(params[name]).lstrip("/") if name in params else None


def _joined(*names: str) -> Callable[[Mapping[str, Any]], str | None]:
    return lambda params: "/".join(str(params[n]).lstrip("/") for n in names)


def _workspace(params: Mapping[str, Any]) -> str | None:
    # `default` is the platform's shared namespace of Empower's and DeepInfra's names: each adapter in it is owned.
    workspace = str(params["workspace"])
    return None if workspace == DEFAULT_WORKSPACE else workspace


WORKSPACE_NAME = Owned("workspace", _param("name"), "name")
WORKSPACE = Owned("workspace", _workspace, "workspace")
NEMO_ADAPTER = Owned("adapter", _joined("workspace", "name"), "name")
FILESET = Owned("fileset", _joined("workspace", "fileset"), "fileset")
DEPLOYMENT = Owned("deployment", _param("deploy_id"), "deploy_id")
SHARED_DEPLOYMENT = Owned("deployment", _param("deploy_id"), "deploy_id", shared_ok=True)
COMMAND = Owned(queries.COMMAND, _param("command_id"), "command_id")


def empower_adapter(name: str | None) -> str | None:
    return f"{DEFAULT_WORKSPACE}/{name}" if name else None


EMPOWER_ADAPTER = Owned("adapter", lambda params: empower_adapter(_param("name")(params)), "name")


def visible(principal: Principal, owner: str | None) -> bool:
    """The one rule: a resource nobody owns (or that does not exist: the route says so) and one of the caller's
    team are visible; another team's is not, unless the caller is an admin."""
    return owner is None or principal.is_admin or owner == principal.team


def scope(principal: Principal, team: str | None) -> str | None:
    """The team a list shows: a user's own, whatever it asks; an admin's `?team=`, or every team (None)."""
    return team if principal.is_admin else principal.team


async def require(
    engine: AsyncEngine,
    principal: Principal,
    aggregate_type: str,
    aggregate_id: str | None,
    loc: Sequence[str],
    *,
    shared_ok: bool = False,
) -> None:
    """404 unless `principal` may see the resource (`visible`); with `shared_ok`, another team's shared deployment
    is let through (to read it, or to serve the caller's own adapters on it)."""
    if aggregate_id is None or principal.is_admin:
        return
    found = await queries.owner(engine, aggregate_type, aggregate_id)
    owner, shared = found if found is not None else (None, False)
    if visible(principal, owner) or (shared and shared_ok):
        return
    noun = _NOUNS.get(aggregate_type, aggregate_type)
    name = aggregate_id.partition("/")[2] if aggregate_type in ("adapter", "fileset") else aggregate_id
    raise NotFound(f"{noun} {name!r} does not exist", loc=list(loc))


async def team_guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-wide: the owned resources a route's path names must be visible to the caller (404 otherwise)."""
    owned: Sequence[Owned] = handler.opt.get(OWNS, ())
    principal = connection.scope.get("user")
    if not owned or not isinstance(principal, Principal) or principal.is_admin:
        return
    engine: AsyncEngine = connection.app.state.engine
    for item in owned:
        aggregate_id = item.id_of(connection.path_params)
        loc = ["path", item.param]
        await require(engine, principal, item.aggregate_type, aggregate_id, loc, shared_ok=item.shared_ok)


Found = tuple[dict[str, Any], list[dict[str, Any]]]  # a deployment row (with `adapters`) and its instances


async def as_seen_by(engine: AsyncEngine, principal: Principal, found: Found) -> Found:
    """A deployment as `principal` may see it: only the caller's own team's adapters are shown (each team's adapters
    on a shared deployment stay that team's, its owner's included); admins see them all."""
    row, instances = found
    served = row.get("adapters", [])
    if principal.is_admin or not served:
        return found
    mine = await queries.owned_among(engine, "adapter", [a["adapter_id"] for a in served], principal.team)
    names = {a["name"] for a in served if a["adapter_id"] in mine}
    shown = [{**i, "adapters": [h for h in i.get("adapters", []) if h["name"] in names]} for i in instances]
    return {**row, "adapters": [a for a in served if a["name"] in names]}, shown


async def require_own_adapter_there(
    engine: AsyncEngine, principal: Principal, found: Found, name: str, loc: Sequence[str]
) -> None:
    """On another team's shared deployment a caller may stop serving only its own adapters (404 for the others)."""
    row, _ = found
    whose = await queries.owner(engine, "deployment", row["deploy_id"])
    if principal.is_admin or whose is None or whose[0] == principal.team:
        return
    served = {a["name"]: a["adapter_id"] for a in row.get("adapters", [])}
    adapter_id = served.get(name)
    mine = await queries.owned_among(engine, "adapter", [adapter_id], principal.team) if adapter_id else set()
    if not mine:
        raise NotFound(f"LoRA {name!r} is not served on deployment {row['deploy_id']!r}", loc=list(loc))
