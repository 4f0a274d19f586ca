"""GPU placement as a pure function: matching, best fit, spread, the pending queue, lost nodes and replay."""

from __future__ import annotations

import random
from collections.abc import Iterable

import pytest

from agents.scheduling import (
    Allocation,
    Capacity,
    ClusterState,
    Decision,
    Device,
    InstanceRequest,
    Node,
    Pending,
    Placed,
    apply,
    apply_placed,
    first_fit,
    fragmentation,
    node_joined,
    node_lost,
    place,
    release,
    reschedule_pending,
)

H100, A100 = "H100-80GB", "A100-80GB"


def node(node_id: str, *types: str, lost: bool = False) -> Node:
    return Node(node_id, tuple(Device(node_id, i, t, 81920) for i, t in enumerate(types)), lost)


def cluster(*nodes: Node) -> ClusterState:
    return ClusterState({n.node_id: n for n in nodes})


def ask(
    instance_id: str, num_gpus: int = 1, gpu_type: str = H100, deployment: str = "d", seq: int = 0
) -> InstanceRequest:
    return InstanceRequest(deployment, instance_id, gpu_type, num_gpus, seq)


def placed(state: ClusterState, request: InstanceRequest) -> tuple[ClusterState, Placed]:
    decision = place(state, request)
    assert isinstance(decision, Placed), decision
    return apply(state, decision), decision


def reason(decision: Decision) -> str:
    assert isinstance(decision, Pending), decision
    return decision.reason


def fill(state: ClusterState, *requests: InstanceRequest) -> ClusterState:
    for request in requests:
        state = placed(state, request)[0]
    return state


def test_type_and_count_must_match() -> None:
    state = cluster(node("a", A100, A100, A100, A100), node("b", H100, H100), node("mixed", A100, H100, A100, H100))
    assert isinstance(place(state, ask("too-many", 4)), Pending)
    _, two = placed(state, ask("two", 2))
    assert two.allocation.node_id == "b" and two.allocation.device_indexes == (0, 1)
    # Only the H100 devices of the mixed node, not its A100 ones, although the node has four devices free.
    state, on_mixed = placed(fill(state, ask("first", 2)), ask("second", 2))
    assert (on_mixed.allocation.node_id, on_mixed.allocation.device_indexes) == ("mixed", (1, 3))
    _, a100 = placed(state, ask("a100", 3, A100))
    assert a100.allocation.node_id == "a"
    cpu = cluster(node("cpu-1", "cpu", "cpu"))
    assert placed(cpu, ask("c", 2, "cpu"))[1].allocation.device_indexes == (0, 1)


def test_a_request_never_spans_nodes() -> None:
    state = cluster(node("n1", H100, H100), node("n2", H100, H100))
    decision = place(state, ask("tp4", 4))
    assert decision == Pending(ask("tp4", 4), "no node has 4 H100-80GB GPUs (the largest has 2)")
    state = cluster(node("n1", *[H100] * 4), node("n2", *[H100] * 4))
    state = fill(state, ask("x", 2), ask("y", 2))
    assert [a.node_id for a in state.allocations.values()] == ["n1", "n2"]
    assert reason(place(state, ask("tp4", 4))) == "no node has 4 free H100-80GB GPUs (largest free block: 2 on n1)"


def test_best_fit_picks_the_tightest_node() -> None:
    state = cluster(node("big", *[H100] * 8), node("three", *[H100] * 3), node("two", *[H100] * 2))
    assert placed(state, ask("i2", 2))[1].allocation.node_id == "two"
    assert placed(state, ask("i3", 3))[1].allocation.node_id == "three"
    assert placed(state, ask("i5", 5))[1].allocation.node_id == "big"
    # Equal leftovers: the lowest node_id.
    even = cluster(node("n2", H100, H100), node("n1", H100, H100))
    assert placed(even, ask("i", 1))[1].allocation.node_id == "n1"


def test_first_fit_takes_the_first_node_by_id() -> None:
    state = cluster(node("n2", H100), node("n1", *[H100] * 8))
    decision = first_fit(state, ask("i", 1))
    assert isinstance(decision, Placed) and decision.allocation.node_id == "n1"
    assert placed(state, ask("i", 1))[1].allocation.node_id == "n2"


def test_instances_of_one_deployment_spread_over_nodes() -> None:
    state = cluster(*(node(f"n{i}", *[H100] * 8) for i in range(3)))
    state = fill(state, ask("web-0"), ask("web-1"), ask("web-2"))
    assert sorted(a.node_id for a in state.allocations.values()) == ["n0", "n1", "n2"]
    # Spread comes before best fit: another deployment still packs onto the tightest node.
    state, other = placed(state, ask("db-0", 7, deployment="db"))
    assert other.allocation.node_id == "n0"
    _, fourth = placed(state, ask("web-3"))
    assert fourth.allocation.node_id == "n1"


def test_spread_yields_when_only_one_node_fits() -> None:
    state = fill(cluster(node("n0", *[H100] * 8), node("n1", H100)), ask("w-0"), ask("w-1"))
    assert {a.node_id for a in state.allocations.values()} == {"n0", "n1"}
    assert placed(state, ask("w-2"))[1].allocation.node_id == "n0"


def test_lost_nodes_are_never_used_and_their_instances_come_back() -> None:
    state = cluster(node("n0", *[H100] * 4), node("n1", *[H100] * 4), node("gone", *[H100] * 8, lost=True))
    state = fill(state, ask("a", 4, seq=1), ask("b", 2, seq=2, deployment="e"), ask("c", 1, seq=3, deployment="f"))
    assert all(a.node_id != "gone" for a in state.allocations.values())
    assert {a.instance_id: a.node_id for a in state.allocations.values()} == {"a": "n0", "b": "n1", "c": "n1"}
    lost = "n1"
    state, orphans = node_lost(state, lost)
    assert orphans == [ask(i, n, deployment=d, seq=s) for i, n, d, s in [("b", 2, "e", 2), ("c", 1, "f", 3)]]
    assert set(state.allocations) == {"a"} and state.free_devices(lost) == ()
    assert node_lost(state, lost) == (state, [])
    decision = place(state, orphans[0])
    assert decision == Pending(orphans[0], "no node has 2 free H100-80GB GPUs (all 4 in use)")
    state = apply(state, decision)
    state = node_joined(state, node(lost, *[H100] * 4))
    [again] = reschedule_pending(state)
    assert again.allocation.node_id == lost


def test_pending_reasons() -> None:
    state = cluster(node("n-1", H100, H100), node("n-2", *[H100] * 4), node("cpu", "cpu"))
    assert place(state, ask("x", 1, A100)) == Pending(ask("x", 1, A100), "no node has any A100-80GB GPU")
    assert reason(place(state, ask("x", 8))) == "no node has 8 H100-80GB GPUs (the largest has 4)"
    state = fill(state, ask("a", 2), ask("b", 2, deployment="e"), ask("c", 1, "cpu"))
    assert reason(place(state, ask("x", 3))) == "no node has 3 free H100-80GB GPUs (largest free block: 2 on n-2)"
    assert reason(place(state, ask("y", 1, "cpu"))) == "no node has 1 free cpu device (all 1 in use)"


def test_the_queue_is_served_oldest_first_without_blocking() -> None:
    state = fill(cluster(node("n", *[H100] * 4)), ask("full", 4, deployment="x"))
    queue = [ask("whole-node", 8, seq=1), ask("old", 3, seq=2), ask("young", 2, seq=3), ask("tiny", 1, seq=4)]
    for request in reversed(queue):
        state = apply(state, place(state, request))
    assert {r.instance_id for r in state.pending} == {r.instance_id for r in queue}
    state = release(state, "full")
    decisions = reschedule_pending(state)
    # "old" goes before "young", which no longer fits; "whole-node" never fits and does not block the rest.
    assert [d.allocation.instance_id for d in decisions] == ["old", "tiny"]
    for decision in decisions:
        state = apply_placed(state, decision)
    assert [r.instance_id for r in state.pending] == ["young", "whole-node"]
    assert reschedule_pending(state) == []


def test_release_and_apply_are_idempotent() -> None:
    state, decision = placed(cluster(node("n", H100, H100)), ask("i"))
    assert apply(state, decision) is state
    assert place(state, ask("i")) == decision
    assert release(state, "unknown") is state
    freed = release(state, "i")
    assert freed.allocations == {} and release(freed, "i") is freed
    with pytest.raises(ValueError, match="not free"):
        apply_placed(state, Placed(ask("j"), Allocation("d", "j", "n", (0,))))


def test_fragmentation() -> None:
    empty = cluster(node("a", *[H100] * 8), node("b", *[H100] * 8))
    assert fragmentation(empty, {8: 1}) == 0.0
    halves = fill(empty, ask("x", 4), ask("y", 4))
    assert {a.node_id for a in halves.allocations.values()} == {"a", "b"}
    assert fragmentation(halves, {8: 1}) == 1.0
    assert fragmentation(halves, {1: 1, 8: 1}) == 0.5
    assert fragmentation(fill(empty, ask("one-node", 8)), {8: 1}) == 0.0
    assert fragmentation(fill(empty, ask("a", 8), ask("b", 8)), {1: 1}) == 0.0


Event = Decision | tuple[str, str]


def random_ops(seed: int, steps: int) -> Iterable[tuple[str, object]]:
    rng = random.Random(seed)
    for seq in range(steps):
        roll = rng.random()
        if roll < 0.6:
            gpu_type = rng.choice([H100, A100, "cpu"])
            yield "place", ask(f"i{seq}", rng.choice([1, 1, 2, 4, 8]), gpu_type, f"d{rng.randrange(6)}", seq)
        elif roll < 0.95:
            yield "release", f"i{rng.randrange(seq + 1)}"
        else:
            yield rng.choice(["lose", "join"]), f"n{rng.randrange(8)}"


def random_nodes(seed: int) -> list[Node]:
    rng = random.Random(seed)
    return [node(f"n{i}", *rng.choices([H100, A100, "cpu"], k=rng.choice([1, 2, 4, 8]))) for i in range(8)]


def fold(state: ClusterState, event: Event, nodes: dict[str, Node]) -> ClusterState:
    """Apply one logged event: a decision, or a release, a lost node or a node back."""
    if not isinstance(event, tuple):
        return apply(state, event)
    op, name = event
    if op == "release":
        return release(state, name)
    if op == "lose":
        return node_lost(state, name)[0]
    return node_joined(state, nodes[name]) if state.nodes[name].lost else state


def simulate(seed: int, nodes: list[Node], steps: int = 600) -> tuple[list[Event], ClusterState]:
    """A seeded random run; every decision and change is logged as it is applied, as the scheduler would."""
    by_id = {n.node_id: n for n in nodes}
    state, log = ClusterState(by_id), list[Event]()

    def record(event: Event) -> None:
        nonlocal state
        log.append(event)
        state = fold(state, event, by_id)

    for op, arg in random_ops(seed, steps):
        if isinstance(arg, InstanceRequest):
            record(place(state, arg))
            continue
        assert isinstance(arg, str)
        orphans = node_lost(state, arg)[1] if op == "lose" else []
        record((op, arg))
        for orphan in orphans:
            record(place(state, orphan))
        for again in reschedule_pending(state) if op != "lose" else []:
            record(again)
        check_invariants(state)
    return log, state


def check_invariants(state: ClusterState) -> None:
    taken: set[tuple[str, int]] = set()
    for allocation in state.allocations.values():
        node = state.nodes[allocation.node_id]
        assert not node.lost
        devices = {d.index: d for d in node.devices}
        assert len({devices[i].gpu_type for i in allocation.device_indexes}) == 1
        for index in allocation.device_indexes:
            assert (node.node_id, index) not in taken, "a device allocated twice"
            taken.add((node.node_id, index))
    for node_id, node in state.nodes.items():
        held = sum(1 for n, _ in taken if n == node_id)
        assert held + len(state.free_devices(node_id)) == (0 if node.lost else len(node.devices))
    assert not set(state.allocations) & {r.instance_id for r in state.pending}
    # The incremental index agrees with one built from scratch.
    assert state.capacity == Capacity.build(state.nodes, state.allocations)


@pytest.mark.parametrize("seed", range(6))
def test_no_device_is_allocated_twice_and_capacity_holds(seed: int) -> None:
    log, _ = simulate(seed, random_nodes(seed))
    assert any(isinstance(e, Placed) for e in log) and any(isinstance(e, Pending) for e in log)
    assert any(e[0] == "lose" for e in log if isinstance(e, tuple))


def test_replay_reproduces_the_same_allocations() -> None:
    nodes = random_nodes(42)
    log, final = simulate(42, nodes)
    again, final_again = simulate(42, nodes)
    assert log == again and final == final_again
    # Folding the log from the initial state, without deciding, gives the same state.
    by_id = {n.node_id: n for n in nodes}
    replayed = ClusterState(by_id)
    for event in log:
        replayed = fold(replayed, event, by_id)
    assert replayed == final and replayed.pending == final.pending
    # Node order in the mapping does not matter: ties are broken by node_id.
    assert simulate(42, list(reversed(nodes)))[0] == log
    assert len({e.allocation.node_id for e in log if isinstance(e, Placed)}) > 1
