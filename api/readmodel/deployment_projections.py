"""Projections of the deployment and cluster events: deployments, their instances, and the nodes."""

from __future__ import annotations

from typing import Any

from api.readmodel.rows import Rows
from api.readmodel.tables import (
    adapter_checks,
    cluster_nodes,
    deployment_adapters,
    deployment_instances,
    deployments,
    instance_adapters,
    instance_reports,
)
from streams import cluster
from streams import deployments as deployment_events
from streams.envelope import Envelope


def _deployment_created(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, deployment_events.DeploymentCreated)
    spec = payload.spec
    rows.put(
        deployments,
        {
            "deploy_id": event.aggregate_id,
            "model_name": spec.model_name,
            "spec": spec.model_dump(mode="json"),
            "min_instances": spec.settings.min_instances,
            "max_instances": spec.settings.max_instances,
            "deleted": False,
            "version": event.aggregate_version,
            "correlation_id": event.correlation_id,
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            "creator_type": event.actor.type.value,
            "creator_id": event.actor.id,
            "creator_name": event.actor.name,
        },
    )


def _update_deployment(rows: Rows, event: Envelope, **values: Any) -> None:
    rows.update(
        deployments,
        (event.aggregate_id,),
        {"version": event.aggregate_version, "updated_at": event.occurred_at, **values},
    )


def _deployment_scaled(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, deployment_events.DeploymentScaled)
    settings = payload.settings
    _update_deployment(rows, event, min_instances=settings.min_instances, max_instances=settings.max_instances)


def _deployment_deleted(rows: Rows, event: Envelope) -> None:
    _update_deployment(rows, event, deleted=True)
    rows.delete_where(instance_adapters, deploy_id=event.aggregate_id)


def _instance_reported(rows: Rows, event: Envelope) -> None:
    """A node agent's report. Which placement it belongs to is decided when read: the report of the node the
    instance is placed on, if it is newer than the placement (deployment_queries)."""
    payload = event.payload
    reports = deployment_events.InstanceLaunched | deployment_events.InstanceStarted | deployment_events.InstanceFailed
    assert isinstance(payload, reports)
    values: dict[str, Any] = {"endpoint": None, "reason": None}
    if isinstance(payload, deployment_events.InstanceLaunched):
        values["state"] = "starting"
    elif isinstance(payload, deployment_events.InstanceStarted):
        values.update(state="running", endpoint=payload.endpoint)
    else:
        values.update(state="failed", reason=payload.fail_reason)
    rows.put(
        instance_reports,
        {
            "instance_id": payload.instance_id,
            "node_id": payload.node_id,
            "deploy_id": event.aggregate_id,
            "updated_at": event.occurred_at,
            **values,
        },
    )
    if not isinstance(payload, deployment_events.InstanceStarted):
        # A (re)starting or failed vLLM holds no runtime-loaded adapter.
        rows.delete_where(instance_adapters, instance_id=payload.instance_id)
    _update_deployment(rows, event)


def _adapter_attached(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, deployment_events.AdapterAttached)
    adapter = payload.adapter
    rows.put(
        deployment_adapters,
        {
            "deploy_id": event.aggregate_id,
            "name": adapter.name,
            "adapter_id": adapter.adapter_id,
            "version": adapter.version,
            "sha256": adapter.artifact.sha256,
            "on_demand": payload.on_demand,
            "attached_at": event.occurred_at,
        },
    )
    _update_deployment(rows, event)


def _adapter_checked(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, deployment_events.AdapterChecked)
    rows.put(
        adapter_checks,
        {
            "command_id": event.command_id,
            "deploy_id": event.aggregate_id,
            "name": payload.name,
            "version": payload.version,
            "compatible": payload.compatible,
            "reasons": list(payload.reasons),
            "checked_at": event.occurred_at,
        },
    )


def _adapter_detached(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, deployment_events.AdapterDetached | deployment_events.AdapterEvicted)
    rows.delete(deployment_adapters, (event.aggregate_id, payload.name))
    _update_deployment(rows, event)


def _adapter_reported(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    reports = deployment_events.AdapterLoaded | deployment_events.AdapterUnloaded | deployment_events.AdapterLoadFailed
    assert isinstance(payload, reports)
    rows.delete(instance_adapters, (payload.instance_id, payload.name))
    # Only facts of the deployment's own stream decide what is kept: the cluster's events (an instance released)
    # sit on another partition, so their order against these differs between the live projection and a replay.
    deployment = rows.get(deployments, (event.aggregate_id,))
    if deployment is None or deployment["deleted"] is not False:
        _update_deployment(rows, event)
        return
    if isinstance(payload, deployment_events.AdapterLoaded):
        values: dict[str, Any] = {"state": "loaded", "sha256": payload.sha256, "reason": None}
    elif isinstance(payload, deployment_events.AdapterLoadFailed):
        values = {"state": "failed", "sha256": None, "reason": payload.reason}
    else:
        values = {}
    if values:
        rows.put(
            instance_adapters,
            {
                "instance_id": payload.instance_id,
                "name": payload.name,
                "deploy_id": event.aggregate_id,
                "updated_at": event.occurred_at,
                **values,
            },
        )
    _update_deployment(rows, event)


def _put_instance(rows: Rows, event: Envelope, spec: cluster.InstanceSpec, **values: Any) -> None:
    rows.put(
        deployment_instances,
        {
            "instance_id": spec.instance_id,
            "deploy_id": spec.deploy_id,
            "requested_seq": spec.requested_seq,
            "updated_at": event.occurred_at,
            **values,
        },
    )


def _instance_placed(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, cluster.InstancePlaced)
    _put_instance(
        rows, event, payload.instance, state="placed", node_id=payload.node_id, device_indexes=[*payload.device_indexes]
    )


def _instance_pending(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, cluster.InstanceQueued)
    _put_instance(rows, event, payload.instance, state="pending", reason=payload.reason)


def _instance_released(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, cluster.InstanceReleased)
    rows.delete(deployment_instances, (payload.instance_id,))


def _node_registered(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, cluster.NodeRegistered)
    rows.put(
        cluster_nodes,
        {
            "node_id": payload.node_id,
            "devices": [d.model_dump(mode="json") for d in payload.devices],
            "lost": False,
            "registered_at": event.occurred_at,
            "updated_at": event.occurred_at,
        },
    )


def _node_rejoined(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, cluster.NodeRejoined)
    rows.update(
        cluster_nodes, (payload.node_id,), {"lost": False, "lost_reason": None, "updated_at": event.occurred_at}
    )


def _node_lost(rows: Rows, event: Envelope) -> None:
    """The instances on it are moved by the events that follow in the same decision."""
    payload = event.payload
    assert isinstance(payload, cluster.NodeDropped)
    rows.update(
        cluster_nodes,
        (payload.node_id,),
        {"lost": True, "lost_reason": payload.reason, "updated_at": event.occurred_at},
    )


DEPLOYMENT_PROJECTIONS = {
    "deployment.created": _deployment_created,
    "deployment.scaled": _deployment_scaled,
    "deployment.deleted": _deployment_deleted,
    "instance.launched": _instance_reported,
    "instance.started": _instance_reported,
    "instance.failed": _instance_reported,
    "deployment.adapter_attached": _adapter_attached,
    "deployment.adapter_detached": _adapter_detached,
    "deployment.adapter_evicted": _adapter_detached,
    "deployment.adapter_checked": _adapter_checked,
    "adapter.loaded": _adapter_reported,
    "adapter.unloaded": _adapter_reported,
    "adapter.load_failed": _adapter_reported,
    "instance.placed": _instance_placed,
    "instance.queued": _instance_pending,
    "instance.released": _instance_released,
    "node.registered": _node_registered,
    "node.rejoined": _node_rejoined,
    "node.dropped": _node_lost,
}
