"""Placement benchmark: 10,000 instance requests with churn on 125 nodes x 8 GPUs, `place` against first fit.

Run `python bench/schedule.py`. Both policies see the same seeded workload: the same nodes, the same arrivals,
the same departures (an instance leaves at a fixed time whether it ran or was still queued) and one node lost
and back. The time counts scheduling only: deciding, applying the decisions and the releases, not the sampling of
fragmentation; the time per decision divides it by the decisions (events `Placed` or `Pending`). The replay check
folds the recorded events again from the initial state and compares the final states.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from agents.scheduling import (
    ClusterState,
    Decision,
    Device,
    InstanceRequest,
    Node,
    Placed,
    Policy,
    apply,
    first_fit,
    fragmentation,
    node_joined,
    node_lost,
    place,
    release,
    reschedule_pending,
)

NODES, GPUS_PER_NODE = 125, 8
# gpu type, memory (MiB), share of the nodes
GPU_TYPES = (("H100-80GB", 81559, 0.6), ("A100-80GB", 81920, 0.3), ("L40S-48GB", 46068, 0.1))
# num_gpus of a deployment -> weight: mostly single-GPU models, some tensor parallel ones up to a whole node
SIZE_MIX: Mapping[int, float] = {1: 0.45, 2: 0.25, 4: 0.2, 8: 0.1}
DEPLOYMENTS, REQUESTS = 300, 10_000
# Offered load per type: instances live long enough to ask for this share of the type's GPUs on average.
OFFERED_LOAD = 0.95
LOST_AT, BACK_AT = 4_000, 6_000
SAMPLE_EVERY = 100


@dataclass(frozen=True)
class Released:
    instance_id: str


@dataclass(frozen=True)
class NodeLost:
    node_id: str


@dataclass(frozen=True)
class NodeJoined:
    node: Node


Event = Decision | Released | NodeLost | NodeJoined


@dataclass(frozen=True)
class Workload:
    nodes: tuple[Node, ...]
    requests: tuple[InstanceRequest, ...]
    # arrival index -> instances leaving just before that arrival
    departures: Mapping[int, tuple[str, ...]]
    lost_node: str


@dataclass(frozen=True)
class Result:
    seconds: float
    decisions: int
    placed_at_once: int
    placed_later: int
    final: ClusterState
    fragmentation_mean: float
    events: tuple[Event, ...]


def workload(seed: int) -> Workload:
    rng = random.Random(seed)
    counts = [round(NODES * share) for _, _, share in GPU_TYPES[:-1]]
    kinds = [t for (t, _, _), n in zip(GPU_TYPES, [*counts, NODES - sum(counts)], strict=True) for _ in range(n)]
    rng.shuffle(kinds)
    memory = {t: mib for t, mib, _ in GPU_TYPES}
    nodes = tuple(
        Node(f"node-{i:03d}", tuple(Device(f"node-{i:03d}", g, kind, memory[kind]) for g in range(GPUS_PER_NODE)))
        for i, kind in enumerate(kinds)
    )
    types = [t for t, _, _ in GPU_TYPES]
    deployments = [
        (
            f"dep-{d:03d}",
            rng.choices(types, [share for _, _, share in GPU_TYPES])[0],
            rng.choices(list(SIZE_MIX), list(SIZE_MIX.values()))[0],
        )
        for d in range(DEPLOYMENTS)
    ]
    # Zipf popularity: a few deployments get most instances, as with popular base models.
    popularity = [1 / (rank + 1) for rank in range(DEPLOYMENTS)]
    demand: dict[str, float] = defaultdict(float)
    for (_, kind, size), weight in zip(deployments, popularity, strict=True):
        demand[kind] += size * weight / sum(popularity)
    capacity = {t: GPUS_PER_NODE * kinds.count(t) for t in types}
    lifetime = {t: OFFERED_LOAD * capacity[t] / demand[t] for t in types if demand[t]}
    requests, departures = [], defaultdict(list)
    made: dict[str, int] = defaultdict(int)
    for seq in range(REQUESTS):
        deployment_id, kind, size = rng.choices(deployments, popularity)[0]
        instance_id = f"{deployment_id}-{made[deployment_id]}"
        made[deployment_id] += 1
        requests.append(InstanceRequest(deployment_id, instance_id, kind, size, seq))
        leaves = seq + 1 + int(rng.expovariate(1 / lifetime[kind]))
        if leaves < REQUESTS:
            departures[leaves].append(instance_id)
    return Workload(nodes, tuple(requests), {k: tuple(v) for k, v in departures.items()}, "node-042")


def run(load: Workload, policy: Policy) -> Result:
    initial = ClusterState({n.node_id: n for n in load.nodes})
    state, events = initial, list[Event]()
    decisions = placed_at_once = placed_later = 0
    samples: list[float] = []
    seconds = 0.0

    def record(event: Event) -> None:
        nonlocal state
        events.append(event)
        state = fold(state, event)

    def reschedule() -> None:
        nonlocal decisions, placed_later
        for placed in reschedule_pending(state, policy):
            record(placed)
            decisions += 1
            placed_later += 1

    for seq, request in enumerate(load.requests):
        started = time.perf_counter()
        freed = False
        for instance_id in load.departures.get(seq, ()):
            freed = freed or instance_id in state.allocations
            record(Released(instance_id))
        if seq == LOST_AT:
            orphans = node_lost(state, load.lost_node)[1]
            record(NodeLost(load.lost_node))
            for orphan in orphans:
                record(policy(state, orphan))
                decisions += 1
        if seq == BACK_AT:
            record(NodeJoined(next(n for n in load.nodes if n.node_id == load.lost_node)))
            freed = True
        if freed:
            reschedule()
        decision = policy(state, request)
        record(decision)
        decisions += 1
        placed_at_once += isinstance(decision, Placed)
        seconds += time.perf_counter() - started
        if seq % SAMPLE_EVERY == SAMPLE_EVERY - 1:
            samples.append(fragmentation(state, SIZE_MIX))
    return Result(seconds, decisions, placed_at_once, placed_later, state, sum(samples) / len(samples), tuple(events))


def fold(state: ClusterState, event: Event) -> ClusterState:
    if isinstance(event, Released):
        return release(state, event.instance_id)
    if isinstance(event, NodeLost):
        return node_lost(state, event.node_id)[0]
    if isinstance(event, NodeJoined):
        return node_joined(state, event.node)
    return apply(state, event)


def shared_nodes(state: ClusterState) -> int:
    """Instances sharing a node with another instance of their deployment."""
    return sum(count - 1 for per_node in state.capacity.spread.values() for count in per_node.values())


def gpus_in_use(state: ClusterState) -> int:
    return sum(len(a.device_indexes) for a in state.allocations.values())


def table(rows: Sequence[tuple[str, float, float, str]]) -> str:
    lines = [f"{'':34}{'place':>12}{'first fit':>12}{'ratio':>8}"]
    for label, ours, theirs, fmt in rows:
        ratio = f"{ours / theirs:8.2f}" if theirs else f"{'-':>8}"
        lines.append(f"{label:34}{format(ours, fmt):>12}{format(theirs, fmt):>12}{ratio}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=20_251_123)
    seed = parser.parse_args(argv).seed
    load = workload(seed)
    ours, theirs = run(load, place), run(load, first_fit)
    metrics: list[tuple[str, str, Callable[[Result], float]]] = [
        ("scheduling time (ms)", ".1f", lambda r: r.seconds * 1e3),
        ("decisions (placed or pending)", ",d", lambda r: r.decisions),
        ("time per decision (µs)", ".1f", lambda r: r.seconds * 1e6 / r.decisions),
        ("placed on arrival", ",d", lambda r: r.placed_at_once),
        ("placed later from the queue", ",d", lambda r: r.placed_later),
        ("running at the end", ",d", lambda r: len(r.final.allocations)),
        ("pending at the end", ",d", lambda r: len(r.final.pending)),
        ("GPUs in use at the end", ",d", lambda r: gpus_in_use(r.final)),
        ("fragmentation at the end", ".3f", lambda r: fragmentation(r.final, SIZE_MIX)),
        (f"fragmentation, mean of {REQUESTS // SAMPLE_EVERY} samples", ".3f", lambda r: r.fragmentation_mean),
        ("instances beside a sibling", ",d", lambda r: shared_nodes(r.final)),
    ]
    started = time.perf_counter()
    replayed = ClusterState({n.node_id: n for n in load.nodes})
    for event in ours.events:
        replayed = fold(replayed, event)
    replay_ms = (time.perf_counter() - started) * 1e3

    print(f"{NODES} nodes x {GPUS_PER_NODE} GPUs, {REQUESTS:,} requests for {DEPLOYMENTS} deployments, seed {seed}")
    print(f"offered load {OFFERED_LOAD:.0%}; {load.lost_node} lost at request {LOST_AT:,} and back at {BACK_AT:,}")
    print(table([(label, metric(ours), metric(theirs), fmt) for label, fmt, metric in metrics]))
    print(f"replay of {len(ours.events):,} events: {replay_ms:.0f} ms, same state: {replayed == ours.final}")
    less_fragmented = ours.fragmentation_mean <= theirs.fragmentation_mean
    print(f"goals: under 1 s: {ours.seconds < 1}; mean fragmentation no more than first fit: {less_fragmented}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
