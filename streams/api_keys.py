"""API keys. Only a SHA-256 digest of the secret is ever on the wire; the secret itself never is."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from streams.envelope import Payload
from streams.registry import command, event

AGGREGATE = "api_key"


class Role(StrEnum):
    USER = "user"
    ADMIN = "admin"


SHA256_HEX = r"^[0-9a-f]{64}$"


@command("api_key.create", aggregate_type=AGGREGATE)
class CreateApiKey(Payload):
    key_id: str = Field(min_length=8, max_length=64, pattern=r"^[a-z0-9]+$")
    name: str = Field(min_length=1, max_length=255)
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)


@command("api_key.revoke", aggregate_type=AGGREGATE)
class RevokeApiKey(Payload):
    key_id: str


@event("api_key.created", aggregate_type=AGGREGATE)
class ApiKeyCreated(Payload):
    key_id: str
    name: str
    role: Role
    key_hash: str = Field(pattern=SHA256_HEX)


@event("api_key.revoked", aggregate_type=AGGREGATE)
class ApiKeyRevoked(Payload):
    key_id: str
