"""GPU placement of deployment instances: a pure function of the cluster state and the request.

The type and count must match on one node, instances of a deployment spread over nodes, then best fit; what does
not fit is `Pending` with a reason and is placed, oldest first, when capacity frees. Each decision is an event.
"""

from __future__ import annotations

from agents.scheduling.model import Allocation, Capacity, ClusterState, Device, InstanceRequest, Node
from agents.scheduling.placement import (
    EVEN_MIX,
    Decision,
    Pending,
    Placed,
    Policy,
    apply,
    apply_pending,
    apply_placed,
    first_fit,
    fragmentation,
    node_joined,
    node_lost,
    pending_reason,
    place,
    release,
    reschedule_pending,
)

__all__ = [
    "EVEN_MIX",
    "Allocation",
    "Capacity",
    "ClusterState",
    "Decision",
    "Device",
    "InstanceRequest",
    "Node",
    "Pending",
    "Placed",
    "Policy",
    "apply",
    "apply_pending",
    "apply_placed",
    "first_fit",
    "fragmentation",
    "node_joined",
    "node_lost",
    "pending_reason",
    "place",
    "release",
    "reschedule_pending",
]
