"""Desired vs actual adapters on one instance: unload before load, the slot limit at every step, reload after restart,
the agent's record trusted over vLLM's list, and reading that list."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

import pytest

from agents.node.reconcile import Load, LoadedAdapter, Plan, Unload, listed_adapters, reconcile

PROC, OLD_PROC = "pid-4242@1763910000", "pid-4100@1763900000"
SHA = {name: (name[0] * 64) for name in ("alpha", "beta", "gamma", "delta", "epsilon")}


def rec(*names: str, process: str = PROC, sha: Mapping[str, str] = SHA) -> dict[str, LoadedAdapter]:
    return {name: LoadedAdapter(sha[name], process) for name in names}


def want(*names: str) -> dict[str, str]:
    return {name: SHA[name] for name in names}


def kinds(plan: Plan) -> list[tuple[str, str]]:
    return [(type(action).__name__, action.name) for action in plan.actions]


def run(plan: Plan, loaded: Iterable[str], slots: int) -> set[str]:
    """Apply the plan step by step as vLLM would, checking the slot limit after every step."""
    held = set(loaded)
    for action in plan.actions:
        if isinstance(action, Unload):
            assert action.name in held, f"unloads {action.name}, which is not loaded"
            held.discard(action.name)
        else:
            assert action.name not in held, f"loads {action.name} over a loaded one"
            held.add(action.name)
            assert len(held) <= slots, f"{len(held)} adapters held with {slots} slots"
    return held


def test_nothing_loaded_loads_every_desired_adapter_in_name_order() -> None:
    plan = reconcile(want("gamma", "alpha", "beta"), record={}, listed=[], process=PROC, slots=4)
    assert plan.actions == (
        Load("alpha", SHA["alpha"], "is assigned to this instance and not loaded"),
        Load("beta", SHA["beta"], "is assigned to this instance and not loaded"),
        Load("gamma", SHA["gamma"], "is assigned to this instance and not loaded"),
    )
    assert plan.deferred == {}


def test_after_a_vllm_restart_everything_is_loaded_again() -> None:
    # The agent still records what it loaded into the old process; vLLM's new process lists nothing.
    plan = reconcile(
        want("alpha", "beta"), record=rec("alpha", "beta", process=OLD_PROC), listed=[], process=PROC, slots=4
    )
    assert kinds(plan) == [("Load", "alpha"), ("Load", "beta")]


def test_in_sync_does_nothing() -> None:
    plan = reconcile(
        want("alpha", "beta"), record=rec("alpha", "beta"), listed=["alpha", "beta"], process=PROC, slots=2
    )
    assert plan == Plan((), {})


def test_the_record_is_trusted_when_vllms_list_misses_a_runtime_loaded_adapter() -> None:
    plan = reconcile(want("alpha", "beta"), record=rec("alpha", "beta"), listed=[], process=PROC, slots=2)
    assert plan.actions == ()


def test_an_adapter_no_longer_desired_is_unloaded() -> None:
    plan = reconcile(want("alpha"), record=rec("alpha", "beta"), listed=["alpha"], process=PROC, slots=2)
    assert plan.actions == (Unload("beta", "is not assigned to this instance"),)


def test_unknown_extras_in_vllms_list_are_unloaded() -> None:
    plan = reconcile(want("alpha"), record=rec("alpha"), listed=["alpha", "stranger"], process=PROC, slots=4)
    assert plan.actions == (
        Unload("stranger", "is not assigned to this instance; vLLM lists it but this agent did not load it"),
    )


def test_a_desired_adapter_this_agent_did_not_load_is_reloaded_from_its_own_copy() -> None:
    plan = reconcile(want("alpha"), record={}, listed=["alpha"], process=PROC, slots=1)
    assert kinds(plan) == [("Unload", "alpha"), ("Load", "alpha")]
    assert "content is unknown" in plan.actions[0].why
    # Also when the record is of an older process that vLLM somehow still lists.
    stale = reconcile(want("alpha"), record=rec("alpha", process=OLD_PROC), listed=["alpha"], process=PROC, slots=1)
    assert kinds(stale) == kinds(plan)


def test_an_outdated_sha256_is_unloaded_then_loaded() -> None:
    old = {**SHA, "alpha": "0" * 64}
    plan = reconcile(want("alpha", "beta"), record=rec("alpha", "beta", sha=old), listed=[], process=PROC, slots=2)
    assert plan.actions == (
        Unload("alpha", f"is loaded at sha256 {'0' * 64} but {SHA['alpha']} is wanted"),
        Load("alpha", SHA["alpha"], "is assigned to this instance and not loaded"),
    )


def test_unloads_come_before_loads_so_a_full_instance_swaps_within_its_slots() -> None:
    loaded = ["alpha", "beta"]
    plan = reconcile(want("beta", "gamma"), record=rec(*loaded), listed=loaded, process=PROC, slots=2)
    assert kinds(plan) == [("Unload", "alpha"), ("Load", "gamma")]
    assert run(plan, loaded, slots=2) == {"beta", "gamma"}


def test_more_desired_than_slots_defers_the_rest_with_a_reason() -> None:
    plan = reconcile(want("alpha", "beta", "gamma", "delta"), record=rec("delta"), listed=[], process=PROC, slots=2)
    assert kinds(plan) == [("Load", "alpha")]
    assert plan.deferred == {
        "beta": "all 2 adapter slots of the instance are held",
        "gamma": "all 2 adapter slots of the instance are held",
    }


def test_an_instance_already_over_its_slots_loads_nothing_more() -> None:
    plan = reconcile(want("alpha", "beta", "gamma"), record=rec("alpha", "beta"), listed=[], process=PROC, slots=1)
    assert plan.actions == ()
    assert list(plan.deferred) == ["gamma"]


def test_the_same_input_in_any_order_gives_the_same_plan() -> None:
    desired = want("delta", "alpha", "gamma", "epsilon")
    record = {**rec("beta", "gamma"), **rec("epsilon", process=OLD_PROC)}
    listed = ["gamma", "stranger", "alpha"]
    expected = reconcile(desired, record=record, listed=listed, process=PROC, slots=3)
    assert reconcile(desired, record=record, listed=listed, process=PROC, slots=3) == expected
    shuffler = random.Random(3)
    for _ in range(10):
        d, r, ls = list(desired.items()), list(record.items()), listed[:]
        shuffler.shuffle(d)
        shuffler.shuffle(r)
        shuffler.shuffle(ls)
        assert reconcile(dict(d), record=dict(r), listed=ls, process=PROC, slots=3) == expected


def test_random_states_converge_within_the_slots_at_every_step() -> None:
    rng = random.Random(20261123)
    universe = [*SHA, "x1", "x2", "x3"]
    shas = {name: f"{name}-v2" for name in universe}
    for _ in range(500):
        slots = rng.randint(1, 4)
        desired = {n: shas[n] for n in rng.sample(universe, rng.randint(0, slots))}
        recorded = rng.sample(universe, rng.randint(0, slots))
        record = {
            n: LoadedAdapter(rng.choice([shas[n], f"{n}-v1"]), rng.choice([PROC, PROC, OLD_PROC])) for n in recorded
        }
        current = {n for n, e in record.items() if e.process == PROC}
        # vLLM's list misses some runtime-loaded adapters and may hold strangers, within the slots.
        strangers = rng.sample(
            [n for n in universe if n not in current], rng.randint(0, slots - min(slots, len(current)))
        )
        listed = [n for n in current if rng.random() < 0.5] + strangers
        actually_loaded = current | set(strangers)
        plan = reconcile(desired, record=record, listed=listed, process=PROC, slots=slots)
        assert run(plan, actually_loaded, slots) == set(desired), (desired, record, listed, plan)
        assert plan.deferred == {}
        # Every unload precedes every load.
        kinds_in_order = [isinstance(a, Load) for a in plan.actions]
        assert kinds_in_order == sorted(kinds_in_order)


# vLLM's /v1/models with two runtime-loaded adapters (vllm/entrypoints/openai/serving_models.py: ModelCard).
MODELS = {
    "object": "list",
    "data": [
        {"id": "tiny-llama", "object": "model", "owned_by": "vllm", "root": "/cache/tiny", "parent": None},
        {"id": "sql-helper", "object": "model", "owned_by": "vllm", "root": "/cache/a/sql", "parent": "tiny-llama"},
        {"id": "poet", "object": "model", "owned_by": "vllm", "root": "/cache/a/poet", "parent": "tiny-llama"},
        {"id": "other-lora", "object": "model", "owned_by": "vllm", "root": "/cache/a/o", "parent": "other-base"},
    ],
}


def test_listed_adapters_are_the_entries_with_a_parent() -> None:
    assert listed_adapters(MODELS) == {"sql-helper", "poet", "other-lora"}
    assert listed_adapters(MODELS, base_model="tiny-llama") == {"sql-helper", "poet"}
    assert listed_adapters({"object": "list", "data": []}) == set()


@pytest.mark.parametrize(
    "answer",
    [None, [], {"object": "list"}, {"data": {"id": "x"}}, {"data": [{"object": "model"}]}, {"data": ["poet"]}],
)
def test_an_answer_that_is_not_a_model_list_is_refused(answer: object) -> None:
    with pytest.raises(ValueError, match="OpenAI model"):
        listed_adapters(answer)
