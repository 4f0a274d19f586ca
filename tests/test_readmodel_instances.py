"""An instance as the read model shows it joins two streams: the cluster's placements and the node agents' reports
(on the deployment's partition). A replay reads partitions side by side, so it may project a report before the
placement it follows; the instance must read the same whichever came first."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import streams.catalog  # noqa: F401 - registers every message type
from api.readmodel.database import create_engine, create_schema
from api.readmodel.deployment_queries import get_deployment, list_nodes
from api.readmodel.projector import EventRecord, Projector
from streams import cluster
from streams import deployments as dep
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.serialization import encode, envelope_for

DEPLOY = "deploy-1"
SPEC = cluster.InstanceSpec(
    deploy_id=DEPLOY, instance_id=f"{DEPLOY}-1", gpu_type=dep.DeployGpu.H100_80GB, num_gpus=1, requested_seq=1
)
START = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def at(second: int, payload: Payload, aggregate_id: str) -> Envelope:
    event = envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=second + 1)
    return event.model_copy(update={"occurred_at": START + timedelta(seconds=second)})


def created() -> Envelope:
    spec = dep.DeploymentSpec(model_name=DEPLOY, gpu=dep.DeployGpu.H100_80GB, base_model="org/base")
    return at(0, dep.DeploymentCreated(spec=spec), DEPLOY)


def registered(node: str) -> Envelope:
    device = cluster.DeviceInfo(index=0, gpu_type=dep.DeployGpu.H100_80GB, memory_mb=81559)
    return at(0, cluster.NodeRegistered(node_id=node, devices=(device,)), cluster.CLUSTER_ID)


def placed(second: int, node: str) -> Envelope:
    return at(second, cluster.InstancePlaced(instance=SPEC, node_id=node, device_indexes=(0,)), cluster.CLUSTER_ID)


def started(second: int, node: str) -> Envelope:
    payload = dep.InstanceStarted(instance_id=SPEC.instance_id, node_id=node, endpoint=f"http://{node}:8100")
    return at(second, payload, DEPLOY)


def launched(second: int, node: str) -> Envelope:
    return at(second, dep.InstanceLaunched(instance_id=SPEC.instance_id, node_id=node), DEPLOY)


def instance_after(database: Path, events: list[Envelope]) -> dict[str, Any]:
    """The deployment's one instance once `events` are projected in this order (one partition per stream) into a
    fresh `database`, as the deployment and the node listing both show it."""

    async def run() -> dict[str, Any]:
        engine = create_engine(f"sqlite+aiosqlite:///{database}")
        await create_schema(engine)
        projector = Projector(engine)
        offsets = {DEPLOY: itertools.count(), cluster.CLUSTER_ID: itertools.count()}
        try:
            for event in events:
                partition = 0 if event.aggregate_id == DEPLOY else 1
                record = EventRecord("loraplane.events", partition, next(offsets[event.aggregate_id]), encode(event))
                await projector.apply([record])
            found = await get_deployment(engine, DEPLOY)
            assert found is not None
            (instance,) = found[1]
            shown = {key: instance[key] for key in ("state", "node_id", "endpoint")}
            listed = {node["node_id"]: placed for node, placed in await list_nodes(engine)}
            assert listed.keys() == {"n1", "n2"}
            assert [{key: row[key] for key in shown} for row in listed[instance["node_id"]]] == [shown]
            return shown
        finally:
            projector.close()
            await engine.dispose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([placed(1, "n1"), launched(2, "n1"), started(3, "n1")], ("running", "n1", "http://n1:8100")),
        ([placed(1, "n1"), launched(2, "n1")], ("starting", "n1", None)),
        # moved to another node: the first node's report is not the second's
        ([placed(1, "n1"), started(3, "n1"), placed(5, "n2")], ("placed", "n2", None)),
        ([placed(1, "n1"), started(3, "n1"), placed(5, "n2"), started(7, "n2")], ("running", "n2", "http://n2:8100")),
        # placed on the same node again (a restart): the report from before it is stale
        ([placed(1, "n1"), started(3, "n1"), placed(5, "n1")], ("placed", "n1", None)),
    ],
)
def test_an_instance_reads_the_same_whichever_stream_is_projected_first(
    tmp_path: Path, history: list[Envelope], expected: tuple[str, str, str | None]
) -> None:
    cluster_events = [event for event in history if event.aggregate_id == cluster.CLUSTER_ID]
    reports = [event for event in history if event.aggregate_id == DEPLOY]
    nodes = [registered("n1"), registered("n2")]
    orders = {
        "live": [*nodes, created(), *history],  # the order they happened in
        "reports first": [created(), *reports, *nodes, *cluster_events],  # what a replay may do
        "placements first": [*nodes, created(), *cluster_events, *reports],
    }
    for name, order in orders.items():
        found = instance_after(tmp_path / f"{name}.db", order)
        assert (found["state"], found["node_id"], found["endpoint"]) == expected, name
