"""GPU placement: pure decisions over `ClusterState`, and the functions that apply them.

A decision (`Placed` or `Pending`) is what the scheduler records as an event; folding the same events with
`apply` from the same state gives the same allocations, because no decision depends on dict order, clocks or
randomness: ties are broken by node_id, then device index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from agents.scheduling.model import Allocation, ClusterState, InstanceRequest, Node


@dataclass(frozen=True)
class Placed:
    request: InstanceRequest
    allocation: Allocation


@dataclass(frozen=True)
class Pending:
    request: InstanceRequest
    # For the user, e.g. "no node has 4 free H100-80GB GPUs (largest free block: 2 on node-7)".
    reason: str


Decision = Placed | Pending
Policy = Callable[[ClusterState, InstanceRequest], Decision]

# Request sizes weighted evenly, for `fragmentation` when the caller knows no better mix.
EVEN_MIX: Mapping[int, float] = {1: 1.0, 2: 1.0, 4: 1.0, 8: 1.0}


def place(state: ClusterState, request: InstanceRequest) -> Decision:
    """Choose one node for the whole request: the one holding the fewest instances of the deployment (spread),
    then the one left with the fewest free devices of the type (best fit), then the lowest node_id."""
    if (existing := state.allocations.get(request.instance_id)) is not None:
        return Placed(request, existing)
    need = _checked(request)
    spread = state.capacity.spread.get(request.deployment_id, {})
    best: tuple[int, int, str] | None = None
    for node_id, free in state.capacity.free.get(request.gpu_type, {}).items():
        if free >= need:
            key = (spread.get(node_id, 0), free - need, node_id)
            if best is None or key < best:
                best = key
    if best is None:
        return Pending(request, pending_reason(state, request))
    return Placed(request, _allocation(state, request, best[2]))


def first_fit(state: ClusterState, request: InstanceRequest) -> Decision:
    """The baseline: the first node by node_id with enough free devices of the type."""
    if (existing := state.allocations.get(request.instance_id)) is not None:
        return Placed(request, existing)
    need = _checked(request)
    for node_id, free in state.capacity.free.get(request.gpu_type, {}).items():
        if free >= need:
            return Placed(request, _allocation(state, request, node_id))
    return Pending(request, pending_reason(state, request))


def pending_reason(state: ClusterState, request: InstanceRequest) -> str:
    gpu_type, need = request.gpu_type, request.num_gpus
    sizes = state.capacity.size.get(gpu_type, {})
    if not sizes:
        return f"no node has any {gpu_type} {_noun(gpu_type)}"
    if need > (largest := max(sizes.values())):
        return f"no node has {_devices(need, gpu_type)} (the largest has {largest})"
    free = state.capacity.free[gpu_type]
    # The most free devices, on the lowest node_id among equals.
    node_id, block = min(free.items(), key=lambda item: (-item[1], item[0]))
    if not block:
        return f"no node has {_devices(need, gpu_type, 'free ')} (all {sum(sizes.values())} in use)"
    return f"no node has {_devices(need, gpu_type, 'free ')} (largest free block: {block} on {node_id})"


def apply(state: ClusterState, decision: Decision) -> ClusterState:
    return apply_placed(state, decision) if isinstance(decision, Placed) else apply_pending(state, decision)


def apply_placed(state: ClusterState, placed: Placed) -> ClusterState:
    """Record an allocation and take its request off the queue; applying it twice changes nothing."""
    allocation = placed.allocation
    if allocation.instance_id in state.allocations:
        return state
    node, gpu_type = state.nodes[allocation.node_id], placed.request.gpu_type
    # A replayed log that disagrees with the state is a bug to surface, not to paper over.
    usable = {d.index for d in node.devices if d.gpu_type == gpu_type} - state.capacity.used.get(node.node_id, set())
    if node.lost or not usable.issuperset(allocation.device_indexes):
        indexes = list(allocation.device_indexes)
        raise ValueError(f"{allocation.instance_id}: devices {indexes} of {node.node_id} are not free {gpu_type}")
    pending = state.pending
    if any(r.instance_id == allocation.instance_id for r in pending):
        pending = tuple(r for r in pending if r.instance_id != allocation.instance_id)
    return ClusterState(
        state.nodes,
        {**state.allocations, allocation.instance_id: allocation},
        pending,
        state.capacity.allocate(allocation, gpu_type),
    )


def apply_pending(state: ClusterState, pending: Pending) -> ClusterState:
    """Queue a request that did not fit, once."""
    instance_id = pending.request.instance_id
    if instance_id in state.allocations or any(r.instance_id == instance_id for r in state.pending):
        return state
    return replace(state, pending=(*state.pending, pending.request))


def release(state: ClusterState, instance_id: str) -> ClusterState:
    """Free an instance's devices, or drop it from the queue; an unknown instance changes nothing."""
    allocation = state.allocations.get(instance_id)
    if allocation is None:
        pending = tuple(r for r in state.pending if r.instance_id != instance_id)
        return state if len(pending) == len(state.pending) else replace(state, pending=pending)
    allocations = dict(state.allocations)
    del allocations[instance_id]
    node = state.nodes[allocation.node_id]
    gpu_type = _device_type(node, allocation.device_indexes[0])
    return ClusterState(state.nodes, allocations, state.pending, state.capacity.release(allocation, gpu_type))


def reschedule_pending(state: ClusterState, policy: Policy = place) -> list[Placed]:
    """Place what now fits from the queue, oldest first; apply the result with `apply_placed`, in order.

    An older request that still does not fit does not block younger ones behind it: holding free GPUs idle for
    an 8-GPU request that may wait for hours would be worse for everyone. Oldest first still decides who gets
    capacity when several requests fit: the older one is placed first and the younger only if room remains.
    """
    placed: list[Placed] = []
    largest: dict[str, int] = {}
    for request in sorted(state.pending, key=lambda r: (r.requested_seq, r.instance_id)):
        gpu_type = request.gpu_type
        if gpu_type not in largest:
            largest[gpu_type] = max(state.capacity.free.get(gpu_type, {}).values(), default=0)
        # Exact shortcut: both policies place whenever some node has enough free devices of the type.
        if request.num_gpus > largest[gpu_type]:
            continue
        decision = policy(state, request)
        if isinstance(decision, Placed):
            state = apply_placed(state, decision)
            placed.append(decision)
            del largest[gpu_type]
    return placed


def node_lost(state: ClusterState, node_id: str) -> tuple[ClusterState, list[InstanceRequest]]:
    """Mark a node lost and drop its allocations; the returned requests, oldest first, need placing again.

    They keep their requested_seq, so any of them left pending is older than what was queued after it.
    """
    node = state.nodes[node_id]
    if node.lost:
        return state, []
    gone = sorted((a for a in state.allocations.values() if a.node_id == node_id), key=lambda a: a.requested_seq)
    requests = [
        InstanceRequest(
            a.deployment_id,
            a.instance_id,
            _device_type(node, a.device_indexes[0]),
            len(a.device_indexes),
            a.requested_seq,
        )
        for a in gone
    ]
    allocations = {k: a for k, a in state.allocations.items() if a.node_id != node_id}
    return ClusterState({**state.nodes, node_id: replace(node, lost=True)}, allocations, state.pending), requests


def node_joined(state: ClusterState, node: Node) -> ClusterState:
    """Add a node, or bring a lost one back; then `reschedule_pending` can use it."""
    if any(a.node_id == node.node_id for a in state.allocations.values()):
        raise ValueError(f"{node.node_id} still holds allocations")
    return ClusterState({**state.nodes, node.node_id: node}, state.allocations, state.pending)


def fragmentation(state: ClusterState, request_mix: Mapping[int, float] = EVEN_MIX) -> float:
    """The share of free devices that a request drawn from `request_mix` (size -> weight) could not use.

    A request never spans nodes, so for a request of k devices the free devices of its type on a node with fewer
    than k of them free are stranded. Averaged over the mix, that is the expected number of stranded devices; divided
    by all free devices it reads 0 when any request of the mix could use every free device and 1 when none could.
    This is the fragmentation measure of Weng et al., "Beware of Fragmentation: Scheduling GPU-Sharing Workloads
    with Fragmentation Gradient Descent" (USENIX ATC '23), for whole GPUs, normalised by the free devices. The
    classic allocator measure, 1 - largest free block / total free, does not suit a cluster: no request can use
    more than one node, so ten empty 8-GPU nodes would count as 90% fragmented.
    """
    weight = sum(request_mix.values())
    free_total, stranded = 0, 0.0
    for per_node in state.capacity.free.values():
        for free in per_node.values():
            free_total += free
            stranded += free * sum(w for size, w in request_mix.items() if free < size) / weight
    return stranded / free_total if free_total else 0.0


def _checked(request: InstanceRequest) -> int:
    if request.num_gpus < 1:
        raise ValueError(f"{request.instance_id}: num_gpus must be at least 1, not {request.num_gpus}")
    return request.num_gpus


def _allocation(state: ClusterState, request: InstanceRequest, node_id: str) -> Allocation:
    used = state.capacity.used.get(node_id, frozenset())
    free = sorted(
        d.index for d in state.nodes[node_id].devices if d.gpu_type == request.gpu_type and d.index not in used
    )
    return Allocation(
        request.deployment_id, request.instance_id, node_id, tuple(free[: request.num_gpus]), request.requested_seq
    )


def _device_type(node: Node, index: int) -> str:
    return next(d.gpu_type for d in node.devices if d.index == index)


def _devices(count: int, gpu_type: str, adjective: str = "") -> str:
    return f"{count} {adjective}{gpu_type} {_noun(gpu_type)}{'' if count == 1 else 's'}"


def _noun(gpu_type: str) -> str:
    return "device" if gpu_type == "cpu" else "GPU"
