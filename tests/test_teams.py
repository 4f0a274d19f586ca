"""Teams: every key belongs to one, every actor says which it acts for, and what was logged before teams existed
belongs to `default` (saved old records in tests/fixtures/events/ decoded with today's code)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

import streams.catalog  # noqa: F401 - registers every message type
from agents.adapter_deployments import attachments
from agents.adapters import ADAPTERS
from agents.aggregate import Rejected
from agents.api_keys import API_KEYS, ApiKey
from agents.api_keys import decide as decide_key
from agents.api_keys import evolve as evolve_key
from agents.deployments import DEPLOYMENTS
from agents.ownership import Acting, acting, refusal
from agents.state import AgentState
from agents.workspaces import WORKSPACES
from api.readmodel import queries
from api.readmodel.database import create_engine, create_schema
from api.readmodel.projector import EventRecord, Projector
from api.readmodel.usage_queries import usage_records
from streams.adapters import (
    AdapterApi,
    AdapterRequested,
    AdapterSpec,
    AdapterStored,
    FilesetSource,
    HfSource,
    RegisterAdapter,
)
from streams.api_keys import ApiKeyCreated, CreateApiKey, Role
from streams.artifacts import Provenance
from streams.deployments import (
    AttachAdapter,
    CheckAdapter,
    CreateDeployment,
    DeleteDeployment,
    DeploymentCreated,
    DetachAdapter,
)
from streams.envelope import DEFAULT_TEAM, SYSTEM_ACTOR, Actor, ActorType, Envelope, Payload
from streams.outcomes import RejectionCode
from streams.registry import type_of
from streams.serialization import decode, encode, envelope_for
from streams.usage import UsageRecorded, UsageRow
from streams.workspaces import CreateWorkspace, DeleteWorkspace, WorkspaceCreated, WorkspaceDeleted
from tests.test_deployment_adapters_decisions import SPEC, adapter

FIXTURES = Path(__file__).parent / "fixtures" / "events"


def test_a_key_created_before_teams_belongs_to_default() -> None:
    old = decode((FIXTURES / "api_key.created@1.json").read_bytes())
    assert old.schema_version == 2
    assert isinstance(old.payload, ApiKeyCreated) and old.payload.team == DEFAULT_TEAM
    assert old.actor.team == DEFAULT_TEAM  # the old record's actor has no team either


def test_every_old_record_reads_as_acted_for_default() -> None:
    for record in sorted(FIXTURES.glob("*@1.json")):
        assert decode(record.read_bytes()).actor.team == DEFAULT_TEAM, record.name


def test_a_key_gets_the_team_it_was_issued_for_and_team_names_follow_the_workspace_rules() -> None:
    create = CreateApiKey(key_id="abcdef12", name="ci", role=Role.USER, key_hash="0" * 64, team="team-a")
    [created] = decide_key(None, envelope_for(create, aggregate_id="abcdef12", actor=SYSTEM_ACTOR))
    assert isinstance(created, ApiKeyCreated) and created.team == "team-a"
    state = evolve_key(None, envelope_for(created, aggregate_id="abcdef12", actor=SYSTEM_ACTOR))
    assert state is not None and state.team == "team-a"
    bad = CreateApiKey(key_id="abcdef13", name="ci", role=Role.USER, key_hash="0" * 64, team="team a/b")
    with pytest.raises(Rejected) as refused:
        decide_key(None, envelope_for(bad, aggregate_id="abcdef13", actor=SYSTEM_ACTOR))
    assert refused.value.field == "team"


# --- ownership: folded from the creation event's actor, checked once before decide ----------------------------------

TEAM_A = Actor(type=ActorType.API_KEY, id="key-a", name="a", team="team-a")
TEAM_B = Actor(type=ActorType.API_KEY, id="key-b", name="b", team="team-b")


def _state() -> AgentState:
    return AgentState({a.name: a for a in (WORKSPACES, ADAPTERS, API_KEYS)})


def _fold(state: AgentState, payload: Payload, aggregate_id: str, actor: Actor) -> None:
    current = state.get(type_of(payload).aggregate_type, aggregate_id)
    state.apply(envelope_for(payload, aggregate_id=aggregate_id, actor=actor, aggregate_version=current.version + 1))


def test_the_creating_team_owns_an_aggregate_until_it_ends_and_replay_gives_the_same() -> None:
    state = _state()
    _fold(state, WorkspaceCreated(name="ws"), "ws", TEAM_A)
    assert state.get("workspace", "ws").team == "team-a"
    _fold(state, WorkspaceDeleted(name="ws"), "ws", TEAM_A)
    assert state.get("workspace", "ws").team is None
    _fold(state, WorkspaceCreated(name="ws"), "ws", TEAM_B)
    assert state.get("workspace", "ws").team == "team-b"
    old = decode((FIXTURES / "workspace.created@1.json").read_bytes())  # a record from before teams
    state.apply(old)
    assert state.get("workspace", old.aggregate_id).team == DEFAULT_TEAM


def _command(payload: Payload, aggregate_id: str, actor: Actor) -> Envelope:
    return envelope_for(payload, aggregate_id=aggregate_id, actor=actor)


def test_a_command_of_another_team_is_refused_as_not_found_and_admins_and_the_platform_pass() -> None:
    owners = {("workspace", "ws-a"): "team-a"}

    def owner_of(aggregate_type: str, aggregate_id: str) -> str | None:
        return owners.get((aggregate_type, aggregate_id))

    delete = _command(DeleteWorkspace(name="ws-a"), "ws-a", TEAM_B)
    b = acting(delete, None)
    refused = refusal(delete, b, "team-a", owner_of)
    assert refused is not None and refused.code is RejectionCode.NOT_FOUND
    assert "team-a" not in refused.reason  # says nothing of who owns it
    assert refusal(delete, Acting("team-a", admin=False), "team-a", owner_of) is None
    admin_key = ApiKey(key_id="key-b", name="b", role=Role.ADMIN, team="team-b")
    assert refusal(delete, acting(delete, admin_key), "team-a", owner_of) is None
    assert (
        refusal(delete, acting(_command(DeleteWorkspace(name="ws-a"), "ws-a", SYSTEM_ACTOR), None), "x", owner_of)
        is None
    )
    # the key's own team counts, not what a hand-made command claims
    forged = _command(DeleteWorkspace(name="ws-a"), "ws-a", TEAM_B.model_copy(update={"team": "team-a"}))
    b_key = ApiKey(key_id="key-b", name="b", role=Role.USER, team="team-b")
    assert refusal(forged, acting(forged, b_key), "team-a", owner_of) is not None
    # a new adapter in another team's workspace is refused; in the shared `default` namespace it is not
    spec = AdapterSpec(workspace="ws-a", name="x", api=AdapterApi.NEMO, source=FilesetSource(fileset="ws-a/f"))
    register = _command(RegisterAdapter(spec=spec, new_version_if_exists=False), "ws-a/x", TEAM_B)
    assert refusal(register, acting(register, None), None, owner_of) is not None
    assert refusal(register, Acting("team-a", admin=False), None, owner_of) is None


def test_a_name_another_team_holds_is_taken_and_the_refusal_names_no_owner() -> None:
    create = _command(CreateWorkspace(name="ws-a"), "ws-a", TEAM_B)
    refused = refusal(create, acting(create, None), "team-a", lambda *_: None)
    assert refused is not None and refused.code is RejectionCode.CONFLICT and refused.field == "name"
    assert "team-a" not in refused.reason


# --- sharing ----------------------------------------------------------------------------------------------------------


def test_a_shared_deployment_serves_every_teams_adapters_but_only_its_owner_changes_it() -> None:
    owners = {("adapter", "default/b-lora"): "team-b", ("adapter", "default/a-lora"): "team-a"}

    def owner_of(aggregate_type: str, aggregate_id: str) -> str | None:
        return owners.get((aggregate_type, aggregate_id))

    b = Acting("team-b", admin=False)
    own = AttachAdapter(adapter=adapter("b-lora"))
    theirs = AttachAdapter(adapter=adapter("a-lora"))
    assert refusal(_command(own, "d1", TEAM_B), b, "team-a", owner_of, shared=True) is None
    assert refusal(_command(CheckAdapter(adapter=adapter("b-lora")), "d1", TEAM_B), b, "team-a", owner_of, True) is None
    assert refusal(_command(own, "d1", TEAM_B), b, "team-a", owner_of, shared=False) is not None  # not shared
    assert refusal(_command(theirs, "d1", TEAM_B), b, "team-a", owner_of, shared=True) is not None  # not its adapter
    served = {"a-lora": "default/a-lora", "b-lora": "default/b-lora"}
    for change in (DeleteDeployment(), DetachAdapter(name="a-lora")):
        refused = refusal(_command(change, "d1", TEAM_B), b, "team-a", owner_of, shared=True, served=served)
        assert refused is not None and refused.code is RejectionCode.NOT_FOUND
    # it stops serving its own adapter there (a LoRA deleted with force=true does that first)
    detach_own = _command(DetachAdapter(name="b-lora"), "d1", TEAM_B)
    assert refusal(detach_own, b, "team-a", owner_of, shared=True, served=served) is None
    assert refusal(detach_own, b, "team-a", owner_of, shared=False, served=served) is not None
    share = _command(CreateDeployment(spec=SPEC, shared=True), "d2", TEAM_B)
    refused = refusal(share, b, None, owner_of)
    assert refused is not None and refused.field == "shared"
    assert refusal(share, Acting("team-b", admin=True), None, owner_of) is None


def test_a_new_empower_lora_is_served_on_its_teams_deployments_and_shared_ones_only() -> None:
    state = AgentState({a.name: a for a in (DEPLOYMENTS, ADAPTERS)})
    for deploy_id, actor, shared in (("mine", TEAM_A, False), ("theirs", TEAM_B, False), ("everyones", TEAM_B, True)):
        _fold(state, DeploymentCreated(spec=SPEC, shared=shared), deploy_id, actor)
    spec = AdapterSpec(workspace="default", name="a-lora", api=AdapterApi.EMPOWER, source=HfSource(repo_id="org/a"))
    _fold(state, AdapterRequested(version=1, spec=spec), "default/a-lora", TEAM_A)
    served = adapter("a-lora")
    stored = AdapterStored(version=1, artifact=served.artifact, analysis=served.analysis, provenance=Provenance())
    _fold(state, stored, "default/a-lora", SYSTEM_ACTOR)
    event = envelope_for(stored, aggregate_id="default/a-lora", actor=SYSTEM_ACTOR, aggregate_version=2)
    assert sorted(deploy_id for deploy_id, _, _ in attachments(state, event)) == ["everyones", "mine"]


# --- the read model: owners, and usage per team, as the projector writes them -------------------------------------


def test_the_read_model_folds_owners_and_usage_per_team(tmp_path: Path) -> None:
    minute = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    row = UsageRow(minute=minute, model="m", requests=1, prompt_tokens=2, completion_tokens=3)

    async def run() -> None:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'rm.db'}")
        await create_schema(engine)
        projector = Projector(engine)
        events = [
            envelope_for(WorkspaceCreated(name="ws"), aggregate_id="ws", actor=TEAM_A, aggregate_version=1),
            envelope_for(
                UsageRecorded(api_key_id="key-a", gateway_id="g", rows=(row,)),
                aggregate_id="key-a",
                actor=TEAM_A,
                aggregate_version=1,
            ),
            envelope_for(
                UsageRecorded(api_key_id="key-b", gateway_id="g", rows=(row,)),
                aggregate_id="key-b",
                actor=TEAM_B,
                aggregate_version=1,
            ),
            decode((FIXTURES / "workspace.created@1.json").read_bytes()),  # from before teams
        ]
        try:
            await projector.apply([EventRecord("loraplane.events", 0, i, encode(e)) for i, e in enumerate(events)])
            assert await queries.owner(engine, "workspace", "ws") == ("team-a", False)
            old = events[-1].aggregate_id
            assert await queries.owner(engine, "workspace", old) == (DEFAULT_TEAM, False)
            start, end = int(minute.timestamp()), int(minute.timestamp()) + 60
            assert {r.api_key_id for r in await usage_records(engine, start, end, None, "team-b")} == {"key-b"}
            assert {r.api_key_id for r in await usage_records(engine, start, end, None, None)} == {"key-a", "key-b"}
            listed, _ = await queries.list_workspaces(engine, offset=0, limit=10, team="team-b")
            assert listed == []
        finally:
            projector.close()
            await engine.dispose()

    asyncio.run(run())
