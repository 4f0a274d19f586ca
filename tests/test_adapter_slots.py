"""Adapters over a deployment's instances: spread, stability, slot limits, pending reasons and determinism."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from agents.node.adapter_slots import AdapterAssignment, InstanceSlots, assign_adapters
from streams.deployments import InstanceStatus

RUNNING, STARTING, FAILED = InstanceStatus.RUNNING, InstanceStatus.STARTING, InstanceStatus.FAILED


def inst(
    instance_id: str,
    *adapters: str,
    slots: int = 4,
    cpu: int | None = None,
    status: InstanceStatus = RUNNING,
) -> InstanceSlots:
    return InstanceSlots(instance_id, status, slots, cpu, frozenset(adapters))


def names(count: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{n:02d}" for n in range(count)]


def loads(result: AdapterAssignment, *instance_ids: str) -> list[int]:
    return [len(result.adapters_on(i)) for i in instance_ids]


def check_slots(instances: list[InstanceSlots], result: AdapterAssignment) -> None:
    for instance in instances:
        assert len(result.adapters_on(instance.instance_id)) <= instance.slots


def test_new_adapters_spread_least_loaded_first() -> None:
    result = assign_adapters([inst("i-1"), inst("i-2"), inst("i-3")], names(6))
    assert loads(result, "i-1", "i-2", "i-3") == [2, 2, 2]
    # In name order, each onto the least loaded instance, ties broken by id.
    assert result.placed == {
        "a00": ("i-1",),
        "a01": ("i-2",),
        "a02": ("i-3",),
        "a03": ("i-1",),
        "a04": ("i-2",),
        "a05": ("i-3",),
    }
    assert result.pending == {}


def test_a_new_adapter_goes_to_the_least_loaded_instance() -> None:
    instances = [inst("i-1", "a", "b", "c"), inst("i-2", "d"), inst("i-3", "e", "f")]
    result = assign_adapters(instances, ["a", "b", "c", "d", "e", "f", "new"])
    assert result.placed["new"] == ("i-2",)


def test_least_loaded_prefers_more_free_slots_on_equal_load() -> None:
    result = assign_adapters([inst("i-1", slots=2), inst("i-2", slots=8)], ["x"])
    assert result.placed == {"x": ("i-2",)}


def test_existing_assignments_stay_even_when_unbalanced() -> None:
    instances = [inst("i-1", "a", "b", "c"), inst("i-2")]
    result = assign_adapters(instances, ["a", "b", "c"])
    assert result.adapters_on("i-1") == {"a", "b", "c"}
    assert result.adapters_on("i-2") == set()
    # A new adapter joins without moving any.
    again = assign_adapters(instances, ["a", "b", "c", "d"])
    assert again.adapters_on("i-1") == {"a", "b", "c"}
    assert again.adapters_on("i-2") == {"d"}


def test_the_result_fed_back_changes_nothing() -> None:
    first = assign_adapters([inst("i-1"), inst("i-2")], names(5))
    fed_back = [inst(i, *sorted(first.adapters_on(i))) for i in ("i-1", "i-2")]
    assert assign_adapters(fed_back, names(5)) == first


def test_adapters_of_a_gone_instance_move_to_the_least_loaded() -> None:
    before = [inst("i-1", "a", "b"), inst("i-2", "c", "d", "e"), inst("i-3", "f")]
    result = assign_adapters([before[1], before[2]], ["a", "b", "c", "d", "e", "f"])
    assert result.placed == {
        "a": ("i-3",),
        "b": ("i-3",),
        "c": ("i-2",),
        "d": ("i-2",),
        "e": ("i-2",),
        "f": ("i-3",),
    }


def test_adapters_no_longer_wanted_are_dropped() -> None:
    result = assign_adapters([inst("i-1", "a", "old"), inst("i-2", "b")], ["a", "b"])
    assert result.placed == {"a": ("i-1",), "b": ("i-2",)}


def test_slots_are_max_cpu_loras_else_max_loras() -> None:
    assert inst("i", slots=2, cpu=6).slots == 6
    assert inst("i", slots=2).slots == 2
    cpu = assign_adapters([inst("i-1", slots=1, cpu=3)], names(4))
    assert cpu.adapters_on("i-1") == {"a00", "a01", "a02"}
    assert cpu.pending == {"a03": "the one instance holds 3 of 3 adapter slots"}
    gpu = assign_adapters([inst("i-1", slots=2)], names(3))
    assert gpu.adapters_on("i-1") == {"a00", "a01"}


def test_an_over_full_instance_keeps_its_slots_worth_and_the_rest_move() -> None:
    # i-1 was started again with fewer slots; what it cannot keep goes elsewhere, copies held elsewhere go first.
    instances = [inst("i-1", "a", "b", "c", "d", slots=2), inst("i-2", "a", slots=4)]
    result = assign_adapters(instances, ["a", "b", "c", "d"])
    assert result.adapters_on("i-1") == {"b", "c"}
    assert result.adapters_on("i-2") == {"a", "d"}
    check_slots(instances, result)


def test_nothing_fits_gives_the_reason() -> None:
    instances = [inst("i-1", *names(4)), inst("i-2", *names(4, "b"))]
    result = assign_adapters(instances, [*names(4), *names(4, "b"), "c", "d"])
    assert result.pending == {
        "c": "all 2 instances hold 4 of 4 adapter slots",
        "d": "all 2 instances hold 4 of 4 adapter slots",
    }
    assert "c" not in result.placed
    check_slots(instances, result)


@pytest.mark.parametrize(
    ("instances", "reason"),
    [
        ([], "the deployment has no instances"),
        (
            [inst("i-1", status=FAILED), inst("i-2", status=FAILED)],
            "none of the deployment's 2 instances is running or starting (2 failed)",
        ),
        (
            [inst("i-1", slots=0), inst("i-2", slots=0)],
            "the deployment's 2 instances serve no adapters (started with 0 adapter slots)",
        ),
        (
            [inst("i-1", "a", slots=1), inst("i-2", "b", "c", slots=2)],
            "all 2 instances are full (3 of 3 adapter slots held)",
        ),
        (
            [inst("i-1", "a", slots=1), inst("i-2", status=FAILED)],
            "the one instance holds 1 of 1 adapter slots; 1 failed instance takes no new adapters",
        ),
    ],
)
def test_pending_reasons(instances: list[InstanceSlots], reason: str) -> None:
    held = sorted(a for i in instances for a in i.adapters)
    result = assign_adapters(instances, [*held, "new"])
    assert result.pending == {"new": reason}


def test_a_failed_instance_keeps_its_adapters_and_a_running_one_serves_them_meanwhile() -> None:
    instances = [inst("i-1", "a", "b", status=FAILED), inst("i-2", "c")]
    result = assign_adapters(instances, ["a", "b", "c"])
    # i-1 reloads them after its restart; i-2 serves them until then.
    assert result.placed == {"a": ("i-1", "i-2"), "b": ("i-1", "i-2"), "c": ("i-2",)}
    # Once i-1 runs again, the copies stay: no thrashing.
    recovered = [inst("i-1", "a", "b"), inst("i-2", "a", "b", "c")]
    assert assign_adapters(recovered, ["a", "b", "c"]).placed == result.placed


def test_a_surplus_copy_gives_its_slot_to_an_unserved_adapter() -> None:
    instances = [inst("i-1", "a", "b", slots=2), inst("i-2", "a", "c", slots=2)]
    result = assign_adapters(instances, ["a", "b", "c", "d"])
    assert result.pending == {}
    assert result.placed == {"a": ("i-2",), "b": ("i-1",), "c": ("i-2",), "d": ("i-1",)}


def test_an_adapter_on_a_starting_instance_only_gets_a_running_copy_when_a_slot_is_free() -> None:
    result = assign_adapters([inst("i-1", "a", status=STARTING), inst("i-2")], ["a"])
    assert result.placed == {"a": ("i-1", "i-2")}
    full = assign_adapters([inst("i-1", "a", status=STARTING), inst("i-2", "b", slots=1)], ["a", "b"])
    assert full.placed == {"a": ("i-1",), "b": ("i-2",)}
    assert full.pending == {}


def test_starting_instances_take_adapters_only_when_no_running_one_can() -> None:
    result = assign_adapters([inst("i-1", status=STARTING), inst("i-2", "b", slots=1)], ["a", "b"])
    assert result.placed == {"a": ("i-1",), "b": ("i-2",)}
    # A failed instance never takes a new adapter.
    failed = assign_adapters([inst("i-1", status=FAILED), inst("i-2", "b", slots=1)], ["a", "b"])
    assert failed.pending == {
        "a": "the one instance holds 1 of 1 adapter slots; 1 failed instance takes no new adapters"
    }


def test_the_same_instance_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="i-1"):
        assign_adapters([inst("i-1"), inst("i-1")], ["a"])


def test_same_input_same_output_whatever_the_order() -> None:
    instances = [
        inst("i-3", "a", "q", status=FAILED),
        inst("i-1", "b", "c", slots=3),
        inst("i-2", "d", slots=2, cpu=5),
        inst("i-4", status=STARTING),
    ]
    adapters = [*names(12), "a", "b", "c", "d", "q"]
    expected = assign_adapters(instances, adapters)
    assert assign_adapters(instances, adapters) == expected
    shuffler = random.Random(7)
    for _ in range(20):
        shuffled_instances, shuffled_adapters = instances[:], adapters[:]
        shuffler.shuffle(shuffled_instances)
        shuffler.shuffle(shuffled_adapters)
        assert assign_adapters(shuffled_instances, shuffled_adapters) == expected


def test_invariants_over_random_deployments() -> None:
    """Slots are never exceeded, every adapter is served by a running instance when one has room, and what a running
    instance held stays unless the adapter left the deployment or its copy was surplus."""
    rng = random.Random(20261123)
    statuses = [RUNNING, RUNNING, RUNNING, STARTING, FAILED]
    for _ in range(300):
        universe = names(rng.randint(0, 14))
        wanted = rng.sample(universe, rng.randint(0, len(universe)))
        instances = []
        for n in range(rng.randint(0, 5)):
            slots = rng.randint(0, 4)
            held = rng.sample(universe, rng.randint(0, min(len(universe), slots)))
            instances.append(inst(f"i-{n}", *held, slots=slots, status=rng.choice(statuses)))
        result = assign_adapters(instances, wanted)
        check_slots(instances, result)
        assert set(result.placed) | set(result.pending) == set(wanted)
        assert not set(result.placed) & set(result.pending)
        by_id = {i.instance_id: i for i in instances}
        running_room = any(i.status is RUNNING and len(result.adapters_on(i.instance_id)) < i.slots for i in instances)
        for holders in result.placed.values():
            served = any(by_id[h].status is RUNNING for h in holders)
            assert served or not running_room, (instances, wanted, result)
        for instance in instances:
            kept = instance.adapters & set(wanted)
            lost = kept - result.adapters_on(instance.instance_id)
            for adapter in lost:
                assert any(by_id[h].status is RUNNING for h in result.placed.get(adapter, ())), (
                    f"{adapter} left {instance.instance_id} without a running holder"
                )
        fed_back = [replace(i, adapters=result.adapters_on(i.instance_id)) for i in instances]
        assert assign_adapters(fed_back, wanted).placed == result.placed
