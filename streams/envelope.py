"""The one envelope every command and event travels in (DESIGN.md, "Flow")."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny


class Frozen(BaseModel):
    """Immutable base for everything on the wire; unknown fields are refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Payload(Frozen):
    """Base class of every command and event payload; subclasses register in `streams.registry`."""


class ActorType(StrEnum):
    USER = "USER"
    API_KEY = "API_KEY"
    SYSTEM = "SYSTEM"


# The team of everything recorded before teams existed, and of keys issued without one.
DEFAULT_TEAM = "default"


class Actor(Frozen):
    type: ActorType
    id: str
    name: str
    # The team the actor acts for (an API key's team). Records written before teams existed have none: they read
    # as `default`, so every old event still decodes and belongs to the default team.
    team: str = Field(default=DEFAULT_TEAM, min_length=1, max_length=255)


SYSTEM_ACTOR = Actor(type=ActorType.SYSTEM, id="system", name="loraplane")


class MessageKind(StrEnum):
    COMMAND = "command"
    EVENT = "event"


def new_id() -> str:
    return uuid.uuid4().hex


_DERIVED_IDS = uuid.UUID("3c2f5e0a-8d4b-4f6e-9a71-0b5c7d2e9f13")


def derived_id(cause_id: str, purpose: str) -> str:
    """The id of a message a process sends because of another message (`cause_id`, usually an event's id):
    the same cause and purpose always give the same id, so a process that runs again after a crash sends
    commands the processor drops as repeats, and two different causes never share an id."""
    return uuid.uuid5(_DERIVED_IDS, f"{cause_id}:{purpose}").hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Envelope(Frozen):
    id: str = Field(default_factory=new_id)
    type: str
    schema_version: int = Field(ge=1)
    aggregate_type: str
    aggregate_id: str = Field(min_length=1, max_length=512)
    # Events only: the aggregate's version after this event (unchanged, and 0 for none, on rejections).
    aggregate_version: int | None = Field(default=None, ge=0)
    command_id: str
    correlation_id: str
    causation_id: str | None = None
    actor: Actor
    occurred_at: datetime = Field(default_factory=utcnow)
    traceparent: str | None = None
    payload: SerializeAsAny[Payload]
