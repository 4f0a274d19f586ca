"""The cluster aggregate: node registration and liveness, and every placement of a deployment instance.

`decide` never computes an outcome that `evolve` would compute differently: it drafts each event and folds it with
the same `apply` that `evolve` uses, and takes the next decision over the folded draft. So the events of one
decision, folded into the state it started from, give exactly the state the decision ended on (tested by replay).

Order of re-placement when capacity changes: instances displaced from a lost node first (they were serving), oldest
first; then the pending queue, oldest first (`placement.reschedule_pending`). Pending instances whose reason changed
get a fresh `instance.queued` so the user reads a current reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agents.aggregate import Aggregate, Rejected
from agents.scheduling import (
    Allocation,
    ClusterState,
    Device,
    InstanceRequest,
    Node,
    Pending,
    Placed,
    apply_pending,
    apply_placed,
    node_joined,
    node_lost,
    pending_reason,
    place,
    release,
    reschedule_pending,
)
from streams.cluster import (
    AGGREGATE,
    CheckNodes,
    DeviceInfo,
    InstancePlaced,
    InstanceQueued,
    InstanceReleased,
    InstanceSpec,
    NodeDropped,
    NodeHeartbeat,
    NodeRegistered,
    NodeRejoined,
    RegisterNode,
    ReleaseInstances,
    RequestInstances,
)
from streams.deployments import DeployGpu
from streams.envelope import Envelope, Payload
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class Cluster:
    placement: ClusterState = field(default_factory=lambda: ClusterState({}))
    # The next instance's age in the queue; instance ids are `{deploy_id}-{seq}`, so never reused.
    next_seq: int = 1
    # Why each pending instance waits, as last told to the user.
    reasons: dict[str, str] = field(default_factory=dict)
    # What each node reported, as reported (the scheduler's Device keeps only what placement compares).
    devices: dict[str, tuple[DeviceInfo, ...]] = field(default_factory=dict)

    def instances_of(self, deploy_id: str) -> list[InstanceRequest]:
        """The deployment's instances, placed or pending, oldest first."""
        placed = [_request_of(self, a) for a in self.placement.allocations.values() if a.deployment_id == deploy_id]
        pending = [r for r in self.placement.pending if r.deployment_id == deploy_id]
        return sorted([*placed, *pending], key=lambda r: r.requested_seq)


def instance_id(deploy_id: str, seq: int) -> str:
    return f"{deploy_id}-{seq}"


# --- evolve: one function folds an event payload, used by decide's drafts too -----------------------------------


def apply(cluster: Cluster, payload: Payload) -> Cluster:
    state = cluster.placement
    if isinstance(payload, NodeRegistered):
        node = Node(payload.node_id, tuple(_device(payload.node_id, d) for d in payload.devices))
        devices = {**cluster.devices, node.node_id: payload.devices}
        return replace(cluster, placement=node_joined(state, node), devices=devices)
    if isinstance(payload, NodeRejoined):
        node = replace(state.nodes[payload.node_id], lost=False)
        return replace(cluster, placement=node_joined(state, node))
    if isinstance(payload, NodeDropped):
        return replace(cluster, placement=node_lost(state, payload.node_id)[0])
    if isinstance(payload, InstancePlaced):
        request = _request(payload.instance)
        allocation = Allocation(
            request.deployment_id, request.instance_id, payload.node_id, payload.device_indexes, request.requested_seq
        )
        reasons = {k: v for k, v in cluster.reasons.items() if k != request.instance_id}
        placed = apply_placed(state, Placed(request, allocation))
        return Cluster(placed, _next(cluster, request), reasons, cluster.devices)
    if isinstance(payload, InstanceQueued):
        request = _request(payload.instance)
        reasons = {**cluster.reasons, request.instance_id: payload.reason}
        return Cluster(
            apply_pending(state, Pending(request, payload.reason)), _next(cluster, request), reasons, cluster.devices
        )
    if isinstance(payload, InstanceReleased):
        reasons = {k: v for k, v in cluster.reasons.items() if k != payload.instance_id}
        return replace(cluster, placement=release(state, payload.instance_id), reasons=reasons)
    return cluster


def evolve(current: Cluster | None, event: Envelope) -> Cluster:
    return apply(current or Cluster(), event.payload)


def _next(cluster: Cluster, request: InstanceRequest) -> int:
    return max(cluster.next_seq, request.requested_seq + 1)


def _device(node_id: str, info: DeviceInfo) -> Device:
    return Device(node_id, info.index, info.gpu_type.value, info.memory_mb)


def _request(spec: InstanceSpec) -> InstanceRequest:
    return InstanceRequest(spec.deploy_id, spec.instance_id, spec.gpu_type.value, spec.num_gpus, spec.requested_seq)


def _spec(request: InstanceRequest) -> InstanceSpec:
    return InstanceSpec(
        deploy_id=request.deployment_id,
        instance_id=request.instance_id,
        gpu_type=DeployGpu(request.gpu_type),
        num_gpus=request.num_gpus,
        requested_seq=request.requested_seq,
    )


def _request_of(cluster: Cluster, allocation: Allocation) -> InstanceRequest:
    node = cluster.placement.nodes[allocation.node_id]
    gpu_type = next(d.gpu_type for d in node.devices if d.index == allocation.device_indexes[0])
    return InstanceRequest(
        allocation.deployment_id,
        allocation.instance_id,
        gpu_type,
        len(allocation.device_indexes),
        allocation.requested_seq,
    )


# --- decide -----------------------------------------------------------------------------------------------------


class _Draft:
    """The events of one decision, each folded in as it is drafted."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.events: list[Payload] = []

    def emit(self, payload: Payload) -> None:
        self.cluster = apply(self.cluster, payload)
        self.events.append(payload)

    def place(self, request: InstanceRequest) -> None:
        decision = place(self.cluster.placement, request)
        if isinstance(decision, Placed):
            self.emit(_placed(decision))
        else:
            self.emit(InstanceQueued(instance=_spec(request), reason=decision.reason))

    def lose(self, node_id: str, reason: str, last_seen_at: datetime | None = None) -> list[InstanceRequest]:
        """Mark the node lost; returns its instances, oldest first, to be placed again."""
        _, displaced = node_lost(self.cluster.placement, node_id)
        self.emit(NodeDropped(node_id=node_id, reason=reason, last_seen_at=last_seen_at))
        return displaced

    def reschedule(self, displaced: Iterable[InstanceRequest] = ()) -> None:
        for request in displaced:
            self.place(request)
        for placed in reschedule_pending(self.cluster.placement):
            self.emit(_placed(placed))
        for request in sorted(self.cluster.placement.pending, key=lambda r: r.requested_seq):
            reason = pending_reason(self.cluster.placement, request)
            if reason != self.cluster.reasons.get(request.instance_id):
                self.emit(InstanceQueued(instance=_spec(request), reason=reason))


def _placed(decision: Placed) -> InstancePlaced:
    allocation = decision.allocation
    return InstancePlaced(
        instance=_spec(decision.request), node_id=allocation.node_id, device_indexes=allocation.device_indexes
    )


def decide(current: Cluster | None, command: Envelope) -> Sequence[Payload]:
    draft = _Draft(current or Cluster())
    payload = command.payload
    if isinstance(payload, RegisterNode):
        _register(draft, payload)
    elif isinstance(payload, NodeHeartbeat):
        node = draft.cluster.placement.nodes.get(payload.node_id)
        # An unknown node's heartbeat makes no event either: its agent registers it when it starts.
        if node is not None and node.lost:
            draft.emit(NodeRejoined(node_id=payload.node_id))
            draft.reschedule()
    elif isinstance(payload, CheckNodes):
        displaced: list[InstanceRequest] = []
        for node_id in sorted(draft.cluster.placement.nodes):
            seen = payload.last_seen.get(node_id)
            if seen is None or draft.cluster.placement.nodes[node_id].lost:
                continue
            silent = (payload.checked_at - seen).total_seconds()
            if silent > payload.timeout_s:
                reason = f"no heartbeat for {silent:.0f}s (timeout {payload.timeout_s:g}s)"
                displaced += draft.lose(node_id, reason, seen)
        if displaced:
            draft.reschedule(sorted(displaced, key=lambda r: r.requested_seq))
    elif isinstance(payload, RequestInstances):
        _request_instances(draft, payload)
    elif isinstance(payload, ReleaseInstances):
        _release(draft, draft.cluster.instances_of(payload.deploy_id))
    else:
        raise Rejected(RejectionCode.INVALID, f"the cluster does not handle {command.type}")
    return draft.events


def _register(draft: _Draft, payload: RegisterNode) -> None:
    indexes = [d.index for d in payload.devices]
    if len(set(indexes)) != len(indexes):
        raise Rejected(RejectionCode.INVALID, f"device indexes {indexes} are not distinct", field="devices")
    node = draft.cluster.placement.nodes.get(payload.node_id)
    displaced: list[InstanceRequest] = []
    if node is not None:
        if not node.lost and draft.cluster.devices.get(payload.node_id) == payload.devices:
            return  # the agent restarted with the same devices: nothing changed
        if not node.lost:
            displaced = draft.lose(payload.node_id, "the node registered again with other devices")
    draft.emit(NodeRegistered(node_id=payload.node_id, devices=payload.devices))
    draft.reschedule(displaced)


def _request_instances(draft: _Draft, payload: RequestInstances) -> None:
    existing = draft.cluster.instances_of(payload.deploy_id)
    if payload.count < len(existing):
        pending_ids = {r.instance_id for r in draft.cluster.placement.pending}
        # Surplus: pending ones before placed ones, youngest first.
        order = sorted(existing, key=lambda r: (r.instance_id not in pending_ids, -r.requested_seq))
        _release(draft, order[: len(existing) - payload.count])
        return
    for _ in range(payload.count - len(existing)):
        seq = draft.cluster.next_seq
        request = InstanceRequest(
            payload.deploy_id, instance_id(payload.deploy_id, seq), payload.gpu_type.value, payload.num_gpus, seq
        )
        draft.place(request)


def _release(draft: _Draft, requests: Iterable[InstanceRequest]) -> None:
    released = False
    for request in requests:
        allocation = draft.cluster.placement.allocations.get(request.instance_id)
        node_id = allocation.node_id if allocation is not None else None
        draft.emit(InstanceReleased(deploy_id=request.deployment_id, instance_id=request.instance_id, node_id=node_id))
        released = True
    if released:
        draft.reschedule()


CLUSTER = Aggregate(AGGREGATE, decide, evolve, Cluster)
