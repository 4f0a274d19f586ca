"""The cluster aggregate's pure decisions: placement events, the pending queue, lost nodes, liveness, replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import streams.catalog  # noqa: F401
from agents.aggregate import Rejected
from agents.cluster import Cluster, decide, evolve
from streams.cluster import (
    CLUSTER_ID,
    CheckNodes,
    DeviceInfo,
    InstancePlaced,
    InstanceQueued,
    InstanceReleased,
    NodeDropped,
    NodeHeartbeat,
    NodeRegistered,
    NodeRejoined,
    RegisterNode,
    ReleaseInstances,
    RequestInstances,
)
from streams.deployments import DeployGpu
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.serialization import decode, encode, envelope_for

H100 = DeployGpu.H100_80GB


class Log:
    """Drives the aggregate like the processor: decide, wrap each event, fold it; keeps every event."""

    def __init__(self) -> None:
        self.state: Cluster | None = None
        self.events: list[Envelope] = []

    def send(self, payload: Payload) -> list[Payload]:
        command = envelope_for(payload, aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR)
        out = list(decide(self.state, command))
        for event_payload in out:
            event = envelope_for(
                event_payload,
                aggregate_id=CLUSTER_ID,
                actor=SYSTEM_ACTOR,
                aggregate_version=len(self.events) + 1,
                command_id=command.command_id,
            )
            event = decode(encode(event))  # through the wire format, as a replay reads it
            self.events.append(event)
            self.state = evolve(self.state, event)
        return out

    def replayed(self) -> Cluster | None:
        state: Cluster | None = None
        for event in self.events:
            state = evolve(state, event)
        return state


def gpus(gpu: DeployGpu, count: int) -> tuple[DeviceInfo, ...]:
    return tuple(DeviceInfo(index=i, gpu_type=gpu, memory_mb=81920) for i in range(count))


def request(deploy_id: str, count: int = 1, num_gpus: int = 1, gpu: DeployGpu = H100) -> RequestInstances:
    return RequestInstances(deploy_id=deploy_id, count=count, gpu_type=gpu, num_gpus=num_gpus)


def placements(log: Log) -> dict[str, tuple[str, tuple[int, ...]]]:
    assert log.state is not None
    return {k: (a.node_id, a.device_indexes) for k, a in log.state.placement.allocations.items()}


def test_without_nodes_every_instance_is_pending_with_the_reason() -> None:
    log = Log()
    out = log.send(request("d1", count=2))
    assert [type(e) for e in out] == [InstanceQueued, InstanceQueued]
    assert all(isinstance(e, InstanceQueued) and e.reason == "no node has any H100-80GB GPU" for e in out)
    assert [e.instance.instance_id for e in out if isinstance(e, InstanceQueued)] == ["d1-1", "d1-2"]
    assert log.state is not None and log.state.next_seq == 3


def test_a_registered_node_takes_the_pending_instances_oldest_first() -> None:
    log = Log()
    log.send(request("old", num_gpus=2))
    log.send(request("young", num_gpus=2))
    out = log.send(RegisterNode(node_id="n1", devices=gpus(H100, 2)))
    assert isinstance(out[0], NodeRegistered)
    placed = [e for e in out if isinstance(e, InstancePlaced)]
    assert [(e.instance.instance_id, e.node_id, e.device_indexes) for e in placed] == [("old-1", "n1", (0, 1))]
    # the young one still waits, now with a reason that names the full node
    assert isinstance(out[-1], InstanceQueued) and out[-1].instance.instance_id == "young-2"
    assert out[-1].reason == "no node has 2 free H100-80GB GPUs (all 2 in use)"
    # releasing the old deployment frees its GPUs for the young one in the same decision
    out = log.send(ReleaseInstances(deploy_id="old"))
    assert [type(e) for e in out] == [InstanceReleased, InstancePlaced]
    assert placements(log) == {"young-2": ("n1", (0, 1))}


def test_instances_of_a_deployment_spread_and_requests_are_totals() -> None:
    log = Log()
    log.send(RegisterNode(node_id="a", devices=gpus(H100, 4)))
    log.send(RegisterNode(node_id="b", devices=gpus(H100, 4)))
    log.send(request("d", count=2))
    assert {node for node, _ in placements(log).values()} == {"a", "b"}
    assert log.send(request("d", count=2)) == []  # the same total again changes nothing
    out = log.send(request("d", count=1))  # scale down: the youngest goes
    assert [(type(e), getattr(e, "instance_id", None)) for e in out] == [(InstanceReleased, "d-2")]
    assert list(placements(log)) == ["d-1"]


def test_a_lost_node_s_instances_are_placed_again_or_queued() -> None:
    log = Log()
    log.send(RegisterNode(node_id="a", devices=gpus(H100, 2)))
    log.send(RegisterNode(node_id="b", devices=gpus(H100, 1)))
    log.send(request("big", num_gpus=2))
    log.send(request("small", num_gpus=1))
    assert placements(log) == {"big-1": ("a", (0, 1)), "small-2": ("b", (0,))}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seen = {"a": now - timedelta(seconds=100), "b": now - timedelta(seconds=5)}
    out = log.send(CheckNodes(checked_at=now, timeout_s=30, last_seen=seen))
    assert isinstance(out[0], NodeDropped) and out[0].node_id == "a" and out[0].last_seen_at == seen["a"]
    assert "no heartbeat for 100s" in out[0].reason
    assert isinstance(out[1], InstanceQueued) and out[1].instance.instance_id == "big-1"
    assert out[1].instance.requested_seq == 1  # keeps its age in the queue
    assert placements(log) == {"small-2": ("b", (0,))}
    # judging again decides nothing new; a heartbeat of a live node makes no event
    assert log.send(CheckNodes(checked_at=now, timeout_s=30, last_seen=seen)) == []
    assert log.send(NodeHeartbeat(node_id="b")) == []
    assert log.send(NodeHeartbeat(node_id="unknown")) == []
    # the lost node's next heartbeat brings it back, and the queue goes to it
    out = log.send(NodeHeartbeat(node_id="a"))
    assert [type(e) for e in out] == [NodeRejoined, InstancePlaced]
    assert placements(log) == {"small-2": ("b", (0,)), "big-1": ("a", (0, 1))}


def test_a_node_missing_from_last_seen_is_not_judged() -> None:
    log = Log()
    log.send(RegisterNode(node_id="a", devices=gpus(H100, 1)))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert log.send(CheckNodes(checked_at=now, timeout_s=1, last_seen={})) == []


def test_registering_again_with_the_same_devices_changes_nothing_and_other_devices_re_place() -> None:
    log = Log()
    log.send(RegisterNode(node_id="a", devices=gpus(H100, 2)))
    log.send(request("d", num_gpus=2))
    assert log.send(RegisterNode(node_id="a", devices=gpus(H100, 2))) == []
    out = log.send(RegisterNode(node_id="a", devices=gpus(H100, 1)))
    assert [type(e) for e in out] == [NodeDropped, NodeRegistered, InstanceQueued]
    assert isinstance(out[-1], InstanceQueued)
    assert out[-1].reason == "no node has 2 H100-80GB GPUs (the largest has 1)"


def test_duplicate_device_indexes_are_refused() -> None:
    devices = (DeviceInfo(index=0, gpu_type=H100, memory_mb=1), DeviceInfo(index=0, gpu_type=H100, memory_mb=1))
    command = envelope_for(RegisterNode(node_id="a", devices=devices), aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR)
    with pytest.raises(Rejected) as refused:
        decide(None, command)
    assert refused.value.field == "devices"


def test_replaying_the_log_reproduces_the_same_allocations() -> None:
    log = Log()
    for index in range(6):
        log.send(RegisterNode(node_id=f"n{index}", devices=gpus(H100, 1 + index % 4)))
    log.send(RegisterNode(node_id="l4", devices=gpus(DeployGpu.L4_24GB, 2)))
    for index in range(20):
        log.send(request(f"d{index}", count=1 + index % 3, num_gpus=1 + index % 3))
    log.send(request("l", count=3, gpu=DeployGpu.L4_24GB))
    now = datetime(2026, 1, 1, tzinfo=UTC)
    log.send(CheckNodes(checked_at=now, timeout_s=10, last_seen={"n3": now - timedelta(minutes=5)}))
    log.send(ReleaseInstances(deploy_id="d4"))
    log.send(request("d7", count=0))
    log.send(NodeHeartbeat(node_id="n3"))
    log.send(RegisterNode(node_id="n9", devices=gpus(H100, 8)))
    state, replayed = log.state, log.replayed()
    assert state is not None and replayed is not None
    assert replayed.placement.allocations == state.placement.allocations
    assert replayed.placement.pending == state.placement.pending
    assert replayed.reasons == state.reasons and replayed.next_seq == state.next_seq
    assert len(state.placement.allocations) > 10 and state.placement.pending  # the scenario exercised both
    # no device is held twice
    held = [(a.node_id, i) for a in state.placement.allocations.values() for i in a.device_indexes]
    assert len(held) == len(set(held))
