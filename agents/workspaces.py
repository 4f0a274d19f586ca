"""Workspace decisions: names are valid and unique; only an existing workspace can be deleted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from agents.aggregate import Aggregate, Rejected
from streams.envelope import Envelope, Payload
from streams.names import name_problem
from streams.outcomes import RejectionCode
from streams.workspaces import AGGREGATE, CreateWorkspace, DeleteWorkspace, WorkspaceCreated, WorkspaceDeleted


@dataclass(frozen=True)
class Workspace:
    name: str
    description: str | None
    created_at: datetime
    exists: bool = True


def decide(current: Workspace | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, CreateWorkspace):
        if problem := name_problem(payload.name):
            raise Rejected(RejectionCode.INVALID, problem, field="name")
        if current is not None and current.exists:
            raise Rejected(RejectionCode.CONFLICT, f"workspace {payload.name!r} already exists", field="name")
        return [WorkspaceCreated(name=payload.name, description=payload.description)]
    if isinstance(payload, DeleteWorkspace):
        if current is None or not current.exists:
            raise Rejected(RejectionCode.NOT_FOUND, f"workspace {payload.name!r} does not exist", field="name")
        return [WorkspaceDeleted(name=payload.name)]
    raise Rejected(RejectionCode.INVALID, f"workspaces do not handle {command.type}")


def evolve(current: Workspace | None, event: Envelope) -> Workspace | None:
    payload = event.payload
    if isinstance(payload, WorkspaceCreated):
        return Workspace(name=payload.name, description=payload.description, created_at=event.occurred_at)
    if isinstance(payload, WorkspaceDeleted) and current is not None:
        return replace(current, exists=False)
    return current


WORKSPACES = Aggregate(AGGREGATE, decide, evolve, Workspace)
