"""The cluster: nodes, their devices and every placement of a deployment instance, as ONE aggregate.

One aggregate (id `default`) so every placement decision is taken in order, over the state folded from the
decisions before it; replaying its events reproduces the same allocations.

Liveness without an event per heartbeat: `node.heartbeat` makes no event while the node is live (only a lost
node's heartbeat does: `node.rejoined`). Whoever hears the heartbeats keeps the last-seen times in memory and sends
`cluster.check_nodes` now and then with them; the decision (`node.dropped`, carrying the last-seen time it was based
on) is the event. A replay folds that event and never re-judges, so it needs no clock and no heartbeat.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from streams.deployments import MAX_INSTANCES, MAX_NUM_GPUS, DeployGpu
from streams.envelope import Frozen, Payload
from streams.registry import command, event

AGGREGATE = "cluster"
CLUSTER_ID = "default"
MAX_DEVICES = 64


class DeviceInfo(Frozen):
    index: int = Field(ge=0, le=1023)
    gpu_type: DeployGpu
    memory_mb: int = Field(ge=0)
    name: str = Field("", max_length=255)  # as the node reported it (nvidia-smi), for people


class InstanceSpec(Frozen):
    """One instance to place: what the scheduler needs, and its age in the pending queue."""

    deploy_id: str
    instance_id: str
    gpu_type: DeployGpu
    num_gpus: int
    requested_seq: int


@command("node.register", aggregate_type=AGGREGATE)
class RegisterNode(Payload):
    node_id: str = Field(min_length=1, max_length=255)
    devices: tuple[DeviceInfo, ...] = Field(min_length=1, max_length=MAX_DEVICES)


@command("node.heartbeat", aggregate_type=AGGREGATE)
class NodeHeartbeat(Payload):
    node_id: str = Field(min_length=1, max_length=255)


@command("cluster.check_nodes", aggregate_type=AGGREGATE)
class CheckNodes(Payload):
    """Judge liveness: a live node whose last heartbeat is older than `timeout_s` at `checked_at` is lost.

    Nodes missing from `last_seen` are not judged (the sender has not been listening long enough to know)."""

    checked_at: datetime
    timeout_s: float = Field(gt=0)
    last_seen: dict[str, datetime]


@command("instances.request", aggregate_type=AGGREGATE)
class RequestInstances(Payload):
    """The deployment should have `count` instances in all (placed or pending): more are placed, surplus released."""

    deploy_id: str = Field(min_length=1, max_length=255)
    count: int = Field(ge=0, le=MAX_INSTANCES)
    gpu_type: DeployGpu
    num_gpus: int = Field(ge=1, le=MAX_NUM_GPUS)


@command("instances.release", aggregate_type=AGGREGATE)
class ReleaseInstances(Payload):
    """Release every instance of the deployment (it was deleted)."""

    deploy_id: str = Field(min_length=1, max_length=255)


@event("node.registered", aggregate_type=AGGREGATE)
class NodeRegistered(Payload):
    node_id: str
    devices: tuple[DeviceInfo, ...]


@event("node.rejoined", aggregate_type=AGGREGATE)
class NodeRejoined(Payload):
    node_id: str


@event("node.dropped", aggregate_type=AGGREGATE)
class NodeDropped(Payload):
    """The node's instances are released with it; the events after it in the same decision re-place them."""

    node_id: str
    reason: str
    last_seen_at: datetime | None = None


@event("instance.placed", aggregate_type=AGGREGATE)
class InstancePlaced(Payload):
    instance: InstanceSpec
    node_id: str
    device_indexes: tuple[int, ...]


@event("instance.queued", aggregate_type=AGGREGATE)
class InstanceQueued(Payload):
    """No node can take the instance now; emitted again when the reason changes."""

    instance: InstanceSpec
    reason: str


@event("instance.released", aggregate_type=AGGREGATE)
class InstanceReleased(Payload):
    deploy_id: str
    instance_id: str
    node_id: str | None = None  # None: it was pending
