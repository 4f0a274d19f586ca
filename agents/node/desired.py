"""What one node should be running, read from the folded event log: its instances, and each one's adapters. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agents.cluster import Cluster
from agents.deployments import Deployment
from agents.node.adapter_slots import InstanceSlots, assign_adapters
from agents.state import AgentState
from streams import deployments
from streams.cluster import AGGREGATE as CLUSTER_AGGREGATE
from streams.cluster import CLUSTER_ID
from streams.deployments import DeployedAdapter, InstanceStatus


@dataclass(frozen=True)
class DesiredInstance:
    instance_id: str
    deployment: Deployment
    device_indexes: tuple[int, ...]


def cluster_of(state: AgentState) -> Cluster:
    cluster = state.get(CLUSTER_AGGREGATE, CLUSTER_ID).value
    return cluster if isinstance(cluster, Cluster) else Cluster()


def deployment_of(state: AgentState, deploy_id: str) -> Deployment | None:
    deployment = state.get(deployments.AGGREGATE, deploy_id).value
    return deployment if isinstance(deployment, Deployment) else None


def instances_on(state: AgentState, node_id: str) -> dict[str, DesiredInstance]:
    """The instances the cluster placed on `node_id`, of deployments that still exist."""
    out = {}
    for allocation in cluster_of(state).placement.allocations.values():
        if allocation.node_id != node_id:
            continue
        deployment = deployment_of(state, allocation.deployment_id)
        if deployment is None or deployment.deleted:
            continue
        out[allocation.instance_id] = DesiredInstance(allocation.instance_id, deployment, allocation.device_indexes)
    return out


def adapters_for(state: AgentState, deploy_id: str, instance_id: str) -> Mapping[str, DeployedAdapter]:
    """The adapters `instance_id` should hold: the deployment's adapters spread over its instances by their slots."""
    deployment = deployment_of(state, deploy_id)
    if deployment is None or deployment.deleted or not deployment.adapters:
        return {}
    cluster = cluster_of(state)
    slots = [
        InstanceSlots(
            instance_id=request.instance_id,
            status=deployment.instances.get(request.instance_id, InstanceStatus.STARTING),
            max_loras=deployment.spec.lora.max_loras,
            adapters=frozenset(deployment.loaded.get(request.instance_id, {})),
        )
        for request in cluster.instances_of(deploy_id)
        if request.instance_id in cluster.placement.allocations
    ]
    assignment = assign_adapters(slots, deployment.adapters)
    return {name: deployment.adapters[name] for name in sorted(assignment.adapters_on(instance_id))}
