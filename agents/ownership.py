"""Teams at the agents: the one check the processor makes before an aggregate decides a command.

A command whose actor's team does not own the aggregate it names (or, for a new adapter or fileset, the workspace
it goes in; for an adapter served on a deployment, that adapter) is refused as `not_found`, with the words an
aggregate uses for something that does not exist: a client that writes to the commands topic itself learns no
more than one that calls the API. Admin keys act for every team; the platform's own processes (SYSTEM) too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agents.aggregate import Rejected
from agents.api_keys import ApiKey
from streams.adapters import DEFAULT_WORKSPACE
from streams.api_keys import Role
from streams.deployments import AttachAdapter, CheckAdapter, CreateDeployment, DetachAdapter
from streams.envelope import ActorType, Envelope
from streams.outcomes import RejectionCode
from streams.ownership import UNOWNED

# The aggregates whose ids are `{workspace}/{name}`: a new one goes in a workspace, which must be the team's.
_IN_WORKSPACE = frozenset({"adapter", "fileset"})
# Commands that name what they create: names stay unique across the platform, so another team's name is taken (409),
# and the refusal says no more than that (not whose it is).
_CREATING = frozenset({"workspace.create", "adapter.register", "fileset.add_file"})


@dataclass(frozen=True)
class Acting:
    """Who a command's actor is, as this worker's state knows the key (a command names a key id; its team and role
    are the ones the key was issued with, not what the command claims)."""

    team: str
    admin: bool


def acting(command: Envelope, key: ApiKey | None) -> Acting | None:
    """None for the platform's own processes, which act for every team."""
    actor = command.actor
    if actor.type is ActorType.SYSTEM:
        return None
    if key is not None and not key.revoked:
        return Acting(team=key.team, admin=key.role is Role.ADMIN)
    return Acting(team=actor.team, admin=False)


def refusal(
    command: Envelope,
    who: Acting | None,
    owner: str | None,
    owner_of: Callable[[str, str], str | None],
    shared: bool = False,
    served: Mapping[str, str] | None = None,
) -> Rejected | None:
    """Why `who` may not send `command` to an aggregate owned by `owner` (None: it may). `owner_of(type, id)` gives
    the owner of another aggregate the command refers to; `shared`: the aggregate is a shared deployment, which
    every team may serve its own adapters on (attach, check, and stop serving them) but only its owner change or
    delete; `served`: the adapter ids it serves, by served name."""
    if who is None or who.admin or command.aggregate_type in UNOWNED:
        return None
    hidden = Rejected(
        RejectionCode.NOT_FOUND, f"{command.aggregate_type} {command.aggregate_id!r} does not exist", field=None
    )
    payload = command.payload
    if isinstance(payload, CreateDeployment) and payload.shared:
        return Rejected(RejectionCode.INVALID, "only an admin key may share a deployment", field="shared")
    serves = isinstance(payload, AttachAdapter | CheckAdapter)
    if isinstance(payload, DetachAdapter) and shared:
        adapter_id = (served or {}).get(payload.name)
        serves = adapter_id is not None and owner_of("adapter", adapter_id) == who.team
    if owner is not None and owner != who.team and not (shared and serves):
        if command.type in _CREATING:
            name = command.aggregate_id.partition("/")[2] or command.aggregate_id
            return Rejected(RejectionCode.CONFLICT, f"the name {name!r} is taken", field="name")
        return hidden
    if owner is None and command.aggregate_type in _IN_WORKSPACE:
        workspace = command.aggregate_id.partition("/")[0]
        parent = owner_of("workspace", workspace) if workspace != DEFAULT_WORKSPACE else None
        if parent is not None and parent != who.team:
            return Rejected(RejectionCode.NOT_FOUND, f"workspace {workspace!r} does not exist", field="workspace")
    if isinstance(payload, AttachAdapter | CheckAdapter):
        adapter_owner = owner_of("adapter", payload.adapter.adapter_id)
        if adapter_owner is not None and adapter_owner != who.team:
            return Rejected(
                RejectionCode.NOT_FOUND, f"adapter {payload.adapter.name!r} does not exist", field="lora_name"
            )
    return None
