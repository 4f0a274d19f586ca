"""API keys. Only a SHA-256 digest of the secret is ever on the wire; the secret itself never is.

Every key belongs to a team (version 2 of `api_key.create` / `api_key.created`); keys issued before teams existed
belong to `default` (the upcasters below).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from streams.envelope import DEFAULT_TEAM, Payload
from streams.registry import command, event, upcaster

AGGREGATE = "api_key"


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


SHA256_HEX = r"^[0-9a-f]{64}$"


@command("api_key.create", aggregate_type=AGGREGATE)
class CreateApiKeyV1(Payload):
    key_id: str = Field(min_length=8, max_length=64, pattern=r"^[a-z0-9]+$")
    name: str = Field(min_length=1, max_length=255)
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)


@command("api_key.create", version=2, aggregate_type=AGGREGATE)
class CreateApiKey(Payload):
    key_id: str = Field(min_length=8, max_length=64, pattern=r"^[a-z0-9]+$")
    name: str = Field(min_length=1, max_length=255)
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)
    # The agent checks it with the workspace name rules (streams.names.name_problem).
    team: str = Field(default=DEFAULT_TEAM, max_length=512)


@command("api_key.revoke", aggregate_type=AGGREGATE)
class RevokeApiKey(Payload):
    key_id: str


@event("api_key.created", aggregate_type=AGGREGATE)
class ApiKeyCreatedV1(Payload):
    key_id: str
    name: str
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)


@event("api_key.created", version=2, aggregate_type=AGGREGATE)
class ApiKeyCreated(Payload):
    key_id: str
    name: str
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)
    team: str


@upcaster("api_key.create", from_version=1)
def create_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "team": DEFAULT_TEAM}


@upcaster("api_key.created", from_version=1)
def created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "team": DEFAULT_TEAM}


@event("api_key.revoked", aggregate_type=AGGREGATE)
class ApiKeyRevoked(Payload):
    key_id: str
