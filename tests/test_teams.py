"""Teams: every key belongs to one, every actor says which it acts for, and what was logged before teams existed
belongs to `default` (saved old records in tests/fixtures/events/ decoded with today's code)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.aggregate import Rejected
from agents.api_keys import decide as decide_key
from agents.api_keys import evolve as evolve_key
from streams.api_keys import ApiKeyCreated, CreateApiKey, Role
from streams.envelope import DEFAULT_TEAM, SYSTEM_ACTOR
from streams.serialization import decode, envelope_for

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
