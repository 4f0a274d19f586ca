"""Workspaces: the NeMo seed's scope for adapters (seed 002)."""

from __future__ import annotations

from pydantic import Field

from streams.envelope import Payload
from streams.registry import command, event

AGGREGATE = "workspace"

# The agent re-checks names (streams.names.name_problem), so commands carry plain strings here:
# a bad name is a rejection with a reason, not an unreadable message.


@command("workspace.create", aggregate_type=AGGREGATE)
class CreateWorkspace(Payload):
    name: str = Field(max_length=512)
    description: str | None = Field(default=None, max_length=1000)


@command("workspace.delete", aggregate_type=AGGREGATE)
class DeleteWorkspace(Payload):
    name: str = Field(max_length=512)


@event("workspace.created", aggregate_type=AGGREGATE)
class WorkspaceCreated(Payload):
    name: str
    description: str | None = None


@event("workspace.deleted", aggregate_type=AGGREGATE)
class WorkspaceDeleted(Payload):
    name: str
