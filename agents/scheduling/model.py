"""The state GPU placement decides over: nodes and their devices, allocations, and the pending queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Device:
    node_id: str
    index: int
    # The seed's gpu enum (`H100-80GB`, ...), `other`, or `cpu` for a CPU node: placement only compares them.
    gpu_type: str
    memory_mb: int


@dataclass(frozen=True)
class Node:
    node_id: str
    devices: tuple[Device, ...]
    lost: bool = False


@dataclass(frozen=True)
class InstanceRequest:
    deployment_id: str
    instance_id: str
    gpu_type: str
    num_gpus: int
    # Age in the pending queue: the lowest is tried first.
    requested_seq: int


@dataclass(frozen=True)
class Allocation:
    deployment_id: str
    instance_id: str
    node_id: str
    device_indexes: tuple[int, ...]
    # Kept so that the instances of a lost node go back to the queue at their original age.
    requested_seq: int = 0


@dataclass(frozen=True)
class Capacity:
    """What every decision reads, derived from the nodes and allocations.

    Building it is one pass over all devices; the apply functions in `placement` update only the entries a change
    touches, so one decision costs a scan of the nodes that hold the requested type, not of the whole cluster.
    Never mutated: an update copies the maps it changes.
    """

    # gpu_type -> node_id -> devices of that type, for nodes not lost, keys in node_id order (first fit relies on it).
    size: Mapping[str, Mapping[str, int]]
    # Same keys and order as `size`: how many of those devices are free.
    free: Mapping[str, Mapping[str, int]]
    # node_id -> allocated device indexes.
    used: Mapping[str, frozenset[int]]
    # deployment_id -> node_id -> instances of the deployment on the node.
    spread: Mapping[str, Mapping[str, int]]

    @staticmethod
    def build(nodes: Mapping[str, Node], allocations: Mapping[str, Allocation]) -> Capacity:
        used: dict[str, set[int]] = {}
        spread: dict[str, dict[str, int]] = {}
        for allocation in allocations.values():
            used.setdefault(allocation.node_id, set()).update(allocation.device_indexes)
            per_node = spread.setdefault(allocation.deployment_id, {})
            per_node[allocation.node_id] = per_node.get(allocation.node_id, 0) + 1
        size: dict[str, dict[str, int]] = {}
        free: dict[str, dict[str, int]] = {}
        for node_id in sorted(nodes):
            node = nodes[node_id]
            if node.lost:
                continue
            taken = used.get(node_id, set())
            for device in node.devices:
                sizes, frees = size.setdefault(device.gpu_type, {}), free.setdefault(device.gpu_type, {})
                sizes[node_id] = sizes.get(node_id, 0) + 1
                frees[node_id] = frees.get(node_id, 0) + (device.index not in taken)
        return Capacity(size, free, {k: frozenset(v) for k, v in used.items()}, spread)

    def allocate(self, allocation: Allocation, gpu_type: str) -> Capacity:
        return self._change(allocation, gpu_type, +1)

    def release(self, allocation: Allocation, gpu_type: str) -> Capacity:
        return self._change(allocation, gpu_type, -1)

    def _change(self, allocation: Allocation, gpu_type: str, sign: int) -> Capacity:
        node_id, indexes = allocation.node_id, frozenset(allocation.device_indexes)
        free = dict(self.free[gpu_type])
        free[node_id] -= sign * len(indexes)
        used = dict(self.used)
        held = used.get(node_id, frozenset())
        used[node_id] = held | indexes if sign > 0 else held - indexes
        if not used[node_id]:
            del used[node_id]
        per_node = dict(self.spread.get(allocation.deployment_id, {}))
        per_node[node_id] = per_node.get(node_id, 0) + sign
        if not per_node[node_id]:
            del per_node[node_id]
        spread = {**self.spread, allocation.deployment_id: per_node}
        if not per_node:
            del spread[allocation.deployment_id]
        return Capacity(self.size, {**self.free, gpu_type: free}, used, spread)


# Stands for "not built yet" so that `ClusterState.capacity` is never None once constructed.
_UNBUILT = Capacity({}, {}, {}, {})


@dataclass(frozen=True)
class ClusterState:
    nodes: Mapping[str, Node]
    allocations: Mapping[str, Allocation] = field(default_factory=dict)
    # Requests that did not fit; `placement.reschedule_pending` tries them by requested_seq.
    pending: tuple[InstanceRequest, ...] = ()
    # Derived from nodes and allocations: built here unless an apply function passes it on, updated.
    capacity: Capacity = field(default=_UNBUILT, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.capacity is _UNBUILT:
            object.__setattr__(self, "capacity", Capacity.build(self.nodes, self.allocations))

    def free_devices(self, node_id: str) -> tuple[Device, ...]:
        """The node's unallocated devices by index; none for a lost node."""
        node = self.nodes[node_id]
        if node.lost:
            return ()
        used = self.capacity.used.get(node_id, frozenset())
        return tuple(sorted((d for d in node.devices if d.index not in used), key=lambda d: d.index))
