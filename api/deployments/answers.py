"""Read-model rows as seed 003's Deploy object, and nodes as `GET /v2/nodes` answers."""

from __future__ import annotations

from typing import Any

from api.deployments.schemas import (
    ClusterNode,
    Deploy,
    DeployInstances,
    DeployLLMConfig,
    InstanceAdapter,
    InstanceDetail,
    LoraSettings,
    NodeDevice,
    ScaleSettings,
    ServedAdapter,
    Weights,
)

HF_TOKEN_MASK = "hf_****"  # the API cannot open the sealed token, so it shows nothing derived from it
TASK = "text-generation"


def status_of(row: dict[str, Any], instances: list[dict[str, Any]]) -> tuple[str, str]:
    """(status, fail_reason) from the deployment and its instances' states."""
    if row["deleted"]:
        return "deleted", ""
    states = [i["state"] for i in instances]
    if "running" in states:
        return "running", ""
    if not instances:
        return ("stopped", "") if row["min_instances"] == 0 else ("initializing", "")
    if pending := [i for i in instances if i["state"] == "pending"]:
        return "pending", pending[0]["reason"] or ""
    failed = [i for i in instances if i["state"] == "failed"]
    if len(failed) == len(instances):
        return "failed", failed[0]["reason"] or ""
    return "deploying", ""


def deploy_answer(row: dict[str, Any], instances: list[dict[str, Any]]) -> Deploy:
    spec = row["spec"]
    weights = spec.get("weights") or {}
    status, fail_reason = status_of(row, instances)
    running = sum(1 for i in instances if i["state"] == "running")
    return Deploy(
        deploy_id=row["deploy_id"],
        model_name=spec["model_name"],
        version=weights.get("revision") or "",
        task=TASK,
        status=status,
        fail_reason=fail_reason,
        created_at=row["created_at"].isoformat(),
        updated_at=max([row["updated_at"], *(i["updated_at"] for i in instances)]).isoformat(),
        instances=DeployInstances(running=running, pending=len(instances) - running),
        config=DeployLLMConfig(
            gpu=spec["gpu"],
            num_gpus=spec["num_gpus"],
            max_batch_size=spec["max_batch_size"],
            weights=Weights(
                repo=weights.get("repo") or spec["model_name"],
                revision=weights.get("revision"),
                token=HF_TOKEN_MASK if weights.get("sealed_token") else None,
            ),
        ),
        settings=ScaleSettings(min_instances=row["min_instances"], max_instances=row["max_instances"]),
        base_model=spec.get("base_model"),
        extra_args=list(spec.get("extra_args") or []),
        instance_details=[
            InstanceDetail(
                instance_id=i["instance_id"],
                status=i["state"],
                reason=i["reason"],
                node_id=i["node_id"],
                device_indexes=i["device_indexes"],
                endpoint=i["endpoint"],
                adapters=[
                    InstanceAdapter(name=a["name"], status=a["state"], reason=a["reason"])
                    for a in i.get("adapters", [])
                ],
            )
            for i in instances
        ],
        lora=LoraSettings(**(spec.get("lora") or {})),
        adapters=[
            ServedAdapter(
                name=a["name"],
                adapter=a["adapter_id"],
                version=a["version"],
                sha256=a["sha256"],
                on_demand=bool(a.get("on_demand")),
                instances=[
                    i["instance_id"]
                    for i in instances
                    if any(h["name"] == a["name"] and h["state"] == "loaded" for h in i.get("adapters", []))
                ],
            )
            for a in row.get("adapters", [])
        ],
    )


def node_answer(node: dict[str, Any], instances: list[dict[str, Any]]) -> ClusterNode:
    holder = {index: i["instance_id"] for i in instances for index in i["device_indexes"] or []}
    devices = [
        NodeDevice(
            index=d["index"],
            gpu_type=d["gpu_type"],
            memory_mb=d["memory_mb"],
            name=d.get("name") or "",
            instance_id=holder.get(d["index"]),
        )
        for d in node["devices"]
    ]
    used = sum(1 for d in devices if d.instance_id is not None)
    return ClusterNode(
        node_id=node["node_id"],
        lost=node["lost"],
        lost_reason=node["lost_reason"],
        registered_at=node["registered_at"].isoformat(),
        devices=devices,
        free=0 if node["lost"] else len(devices) - used,
        used=used,
    )
