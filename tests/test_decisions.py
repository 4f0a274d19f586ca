"""Pure decisions, without Kafka: decide(state, command) -> events and evolve(state, event) -> state."""

from __future__ import annotations

import pytest

import streams.catalog  # noqa: F401
from agents import api_keys, workspaces
from agents.aggregate import Rejected
from agents.state import AgentState
from streams.api_keys import CreateApiKey, RevokeApiKey, Role
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.outcomes import CommandRejected, RejectionCode
from streams.serialization import envelope_for
from streams.workspaces import CreateWorkspace, DeleteWorkspace, WorkspaceCreated, WorkspaceDeleted


def cmd(payload: Payload, aggregate_id: str) -> Envelope:
    return envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR)


def evt(payload: Payload, aggregate_id: str, version: int, command_id: str = "c") -> Envelope:
    return envelope_for(
        payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=version, command_id=command_id
    )


def test_create_then_duplicate_then_delete() -> None:
    [created] = workspaces.decide(None, cmd(CreateWorkspace(name="a"), "a"))
    assert created == WorkspaceCreated(name="a")
    state = workspaces.evolve(None, evt(created, "a", 1))
    with pytest.raises(Rejected) as conflict:
        workspaces.decide(state, cmd(CreateWorkspace(name="a"), "a"))
    assert conflict.value.code is RejectionCode.CONFLICT and conflict.value.field == "name"
    [deleted] = workspaces.decide(state, cmd(DeleteWorkspace(name="a"), "a"))
    state = workspaces.evolve(state, evt(deleted, "a", 2))
    assert state is not None and not state.exists
    assert workspaces.decide(state, cmd(CreateWorkspace(name="a"), "a")) == [WorkspaceCreated(name="a")]


@pytest.mark.parametrize("name", ["", "a b", "a/b", "ä", "x" * 256, "semi;colon"])
def test_invalid_names_are_rejected_by_the_agent_too(name: str) -> None:
    with pytest.raises(Rejected) as rejected:
        workspaces.decide(None, cmd(CreateWorkspace(name=name), name or "empty"))
    assert rejected.value.code is RejectionCode.INVALID and rejected.value.field == "name"


@pytest.mark.parametrize("name", ["a", "A-b_c.d", "x" * 255, "123"])
def test_valid_names(name: str) -> None:
    assert workspaces.decide(None, cmd(CreateWorkspace(name=name), name))


def test_deleting_a_missing_workspace_is_not_found() -> None:
    with pytest.raises(Rejected) as rejected:
        workspaces.decide(None, cmd(DeleteWorkspace(name="x"), "x"))
    assert rejected.value.code is RejectionCode.NOT_FOUND


def test_api_keys() -> None:
    digest = "0" * 64
    [created] = api_keys.decide(
        None, cmd(CreateApiKey(key_id="abcdef12", name="n", role=Role.ADMIN, key_hash=digest), "abcdef12")
    )
    state = api_keys.evolve(None, evt(created, "abcdef12", 1))
    assert state is not None and state.role is Role.ADMIN
    with pytest.raises(Rejected):
        api_keys.decide(
            state, cmd(CreateApiKey(key_id="abcdef12", name="n", role=Role.USER, key_hash=digest), "abcdef12")
        )
    [revoked] = api_keys.decide(state, cmd(RevokeApiKey(key_id="abcdef12"), "abcdef12"))
    state = api_keys.evolve(state, evt(revoked, "abcdef12", 2))
    assert state is not None and state.revoked
    with pytest.raises(Rejected):
        api_keys.decide(state, cmd(RevokeApiKey(key_id="abcdef12"), "abcdef12"))


def test_state_applies_each_event_once_and_remembers_commands() -> None:
    state = AgentState({"workspace": workspaces.WORKSPACES})
    created = evt(WorkspaceCreated(name="a"), "a", 1, command_id="c1")
    state.apply(created)
    state.apply(created)  # a redelivery
    state.apply(
        envelope_for(
            CommandRejected(command_type="workspace.create", code=RejectionCode.CONFLICT, reason="dup"),
            aggregate_id="a",
            aggregate_type="workspace",
            actor=SYSTEM_ACTOR,
            aggregate_version=1,
            command_id="c2",
        )
    )
    assert state.get("workspace", "a").version == 1
    assert set(state.handled_commands) == {"c1", "c2"}
    state.apply(evt(WorkspaceDeleted(name="a"), "a", 2, command_id="c3"))
    entry = state.get("workspace", "a")
    assert entry.version == 2 and not entry.value.exists
