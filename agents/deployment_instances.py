"""The process manager between the deployment and cluster aggregates (they cannot see each other).

On `deployment.created | scaled | deleted` it asks the cluster for the instances the deployment should have
(`instances.request` with the total, or `instances.release`): `follow_ups`, run by the processor from the log
(agents.follow_ups). At start it also compares every deployment's desired count with the cluster's folded state
and asks again where they differ. Requests are declarative (a total, not a delta): sending one twice changes
nothing.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from agents.background_sends import BackgroundSends, Send
from agents.cluster import Cluster
from agents.deployments import Deployment
from agents.state import AgentState
from streams import deployments
from streams.cluster import AGGREGATE as CLUSTER_AGGREGATE
from streams.cluster import CLUSTER_ID, ReleaseInstances, RequestInstances
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload, derived_id
from streams.serialization import envelope_for

log = logging.getLogger(__name__)


def instances_command(deployment: Deployment) -> Payload:
    if deployment.deleted:
        return ReleaseInstances(deploy_id=deployment.deploy_id)
    spec = deployment.spec
    return RequestInstances(
        deploy_id=deployment.deploy_id,
        count=deployment.desired_instances,
        gpu_type=spec.gpu,
        num_gpus=spec.num_gpus,
    )


def reconcile(state: AgentState) -> list[Payload]:
    """The requests for every deployment whose desired instance count differs from the cluster's."""
    cluster = state.get(CLUSTER_AGGREGATE, CLUSTER_ID).value or Cluster()
    assert isinstance(cluster, Cluster)
    out: list[Payload] = []
    for (aggregate_type, _), entry in sorted(state.entries.items()):
        deployment = entry.value
        if aggregate_type == deployments.AGGREGATE and isinstance(deployment, Deployment):
            if len(cluster.instances_of(deployment.deploy_id)) != deployment.desired_instances:
                out.append(instances_command(deployment))
    return out


def follow_ups(state: AgentState, event: Envelope) -> list[Envelope]:
    """The cluster request a deployment's event calls for, with an id derived from the event."""
    payload = event.payload
    command: Payload | None = None
    if isinstance(payload, deployments.DeploymentCreated):
        command = instances_command(Deployment(event.aggregate_id, payload.spec, payload.spec.settings))
    elif isinstance(payload, deployments.DeploymentDeleted):
        command = ReleaseInstances(deploy_id=event.aggregate_id)
    elif isinstance(payload, deployments.DeploymentScaled):
        current = state.get(deployments.AGGREGATE, event.aggregate_id).value
        if isinstance(current, Deployment):
            command = instances_command(replace(current, settings=payload.settings))
    if command is None:
        return []
    return [
        envelope_for(
            command,
            aggregate_id=CLUSTER_ID,
            actor=SYSTEM_ACTOR,
            command_id=derived_id(event.id, "instances"),
            correlation_id=event.correlation_id,
            causation_id=event.id,
            traceparent=event.traceparent,
        )
    ]


class DeploymentInstances:
    """An Observer of the command processor (agents.processor.Observer): at start, asks again for every
    deployment whose instance count the cluster does not match."""

    def __init__(self, send: Send) -> None:
        self._sends = BackgroundSends(send, "instances")

    def started(self, state: AgentState) -> None:
        for payload in reconcile(state):
            # No single event causes a start-up request: the cluster's version at start stands in for one.
            cause = f"{CLUSTER_AGGREGATE}/{CLUSTER_ID}@{state.get(CLUSTER_AGGREGATE, CLUSTER_ID).version}"
            command_id = derived_id(cause, f"reconcile:{payload.model_dump_json()}")
            self._sends.send(envelope_for(payload, aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR, command_id=command_id))

    def owned(self, partitions: frozenset[int]) -> None:
        """Requests are declarative and go to the cluster's one partition: any worker may send them."""

    def decided(self, event: Envelope, cause: Envelope) -> None:
        """Live events are followed up from the log (`follow_ups`); this only reconciles at start."""

    async def stop(self) -> None:
        await self._sends.stop()
