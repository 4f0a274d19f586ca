"""Bearer API keys: `lp_<key_id>_<secret>`, stored only as a SHA-256 digest, with a role each."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from api.errors import Forbidden, Unauthorized
from api.readmodel import queries
from streams.api_keys import Role
from streams.envelope import DEFAULT_TEAM, Actor, ActorType

PREFIX = "lp"
PUBLIC_PATHS = {"/healthz", "/readyz", "/schema", "/metrics"}


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    secret: str  # the whole key; shown once, never stored
    key_hash: str


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    role: Role
    team: str = DEFAULT_TEAM

    @property
    def actor(self) -> Actor:
        return Actor(type=ActorType.API_KEY, id=self.key_id, name=self.name, team=self.team)

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


def hash_key(key: str) -> str:
    # A plain digest suffices: keys carry 256 random bits, so there is nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


def issue_key() -> IssuedKey:
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return IssuedKey(key_id=key_id, secret=key, key_hash=hash_key(key))


def key_id_of(key: str) -> str | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1]:
        return None
    return parts[1]


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthorized("missing bearer API key", loc=["header", "Authorization"])
        key = key.strip()
        key_id = key_id_of(key)
        engine = connection.app.state.engine
        row = await queries.get_api_key(engine, key_id) if key_id else None
        if row is None or row["revoked"] or not hmac.compare_digest(row["key_hash"], hash_key(key)):
            raise Unauthorized("invalid or revoked API key", loc=["header", "Authorization"])
        principal = Principal(key_id=row["key_id"], name=row["name"], role=Role(row["role"]), team=row["team"])
        return AuthenticationResult(user=principal, auth=key_id)


def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    principal = connection.user
    if not isinstance(principal, Principal) or principal.role is not Role.ADMIN:
        raise Forbidden("this route needs an admin API key", loc=["header", "Authorization"])
