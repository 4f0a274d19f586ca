"""API key decisions: ids are unique; revoking needs an existing, active key."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from agents.aggregate import Aggregate, Rejected
from streams.api_keys import AGGREGATE, ApiKeyCreated, ApiKeyRevoked, CreateApiKey, RevokeApiKey, Role
from streams.envelope import DEFAULT_TEAM, Envelope, Payload
from streams.names import name_problem
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    role: Role
    revoked: bool = False
    team: str = DEFAULT_TEAM


def decide(current: ApiKey | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, CreateApiKey):
        if current is not None:
            raise Rejected(RejectionCode.CONFLICT, f"API key {payload.key_id} already exists", field="key_id")
        if problem := name_problem(payload.team):
            raise Rejected(RejectionCode.INVALID, problem.replace("name", "team", 1), field="team")
        return [
            ApiKeyCreated(
                key_id=payload.key_id,
                name=payload.name,
                role=payload.role,
                key_hash=payload.key_hash,
                team=payload.team,
            )
        ]
    if isinstance(payload, RevokeApiKey):
        if current is None or current.revoked:
            raise Rejected(RejectionCode.NOT_FOUND, f"API key {payload.key_id} does not exist", field="key_id")
        return [ApiKeyRevoked(key_id=payload.key_id)]
    raise Rejected(RejectionCode.INVALID, f"API keys do not handle {command.type}")


def evolve(current: ApiKey | None, event: Envelope) -> ApiKey | None:
    payload = event.payload
    if isinstance(payload, ApiKeyCreated):
        return ApiKey(key_id=payload.key_id, name=payload.name, role=payload.role, team=payload.team)
    if isinstance(payload, ApiKeyRevoked) and current is not None:
        return replace(current, revoked=True)
    return current


API_KEYS = Aggregate(AGGREGATE, decide, evolve, ApiKey, state_version=2)  # 2: keys have a team
