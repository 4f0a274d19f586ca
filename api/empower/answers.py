"""Read-model rows (an adapter version, joined or not with its adapter) as seed 000 and 001 answers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.empower.schemas import Deploy, Lora
from infra.settings import Settings
from streams.adapters import AdapterStatus

HF_TOKEN_MASK = "hf_****"  # the API cannot open the sealed token, so it shows nothing derived from it

# Our statuses as DeepInfra's deploy statuses.
DEEPINFRA_STATUS = {
    AdapterStatus.REQUESTED: "initializing",
    AdapterStatus.FETCHING: "deploying",
    AdapterStatus.VALIDATING: "deploying",
    AdapterStatus.READY: "deployed",
    AdapterStatus.REJECTED: "failed",
}
TASKS = {"peft_llm": "text-generation", "kohya_image": "text-to-image", "diffusers_image": "text-to-image"}


def _version_column(row: dict[str, Any], name: str) -> Any:
    """A version column of a joined row (prefixed `v_` where it clashes with the adapter's) or a plain one."""
    return row.get(f"v_{name}", row.get(name))


def base_model_of(row: dict[str, Any]) -> str | None:
    analysis = row.get("analysis") or {}
    return analysis.get("base_model") or (row.get("spec") or {}).get("base_model")


def active_deployment(
    row: dict[str, Any], served: dict[str, Any], model: tuple[str, str, str | None]
) -> dict[str, Any]:
    """Seed 000's `active_deployment`: the deployment serving the LoRA, as (model_name, model_source, hf_revision)
    of the version it serves."""
    spec = served["spec"]
    weights = spec.get("weights") or {}
    model_name, model_source, revision = model
    actor_type = _version_column(row, "creator_type")
    return {
        "base_model_name": spec.get("base_model") or weights.get("repo") or spec["model_name"],
        "created_at": int(served["attached_at"].timestamp()),
        "creator": {
            "actor_type": actor_type,
            "api_key": {"name": _version_column(row, "creator_name")},
        },
        "hf_revision": revision,
        "model_name": model_name,
        "model_source": model_source,
        # Extensions: where it runs.
        "deploy_id": served["deploy_id"],
        "version": served["version"],
    }


def lora_answer(row: dict[str, Any], settings: Settings, served: dict[str, Any] | None = None) -> Lora:
    """`served`: the deployment_adapters row (with the deployment's spec) of a deployment serving it, if any."""
    spec = row["spec"]
    source = spec["source"]
    provenance = row.get("provenance") or {}
    base_model = base_model_of(row)
    created: datetime = _version_column(row, "created_at")
    if source["kind"] == "hf":
        model_name, model_source = source["repo_id"], "HF_HUB"
        revision = provenance.get("hf_commit") or source.get("revision")
        token = HF_TOKEN_MASK if source.get("sealed_token") else None
    else:
        model_name = source.get("url") or source.get("fileset") or source.get("filename") or spec["name"]
        model_source, revision, token = str(source["kind"]).upper(), None, None
    return Lora(
        name=spec["name"],
        unit_price=settings.unit_price(base_model),
        active_deployment=active_deployment(row, served, (model_name, model_source, revision)) if served else None,
        status=row["status"],
        version=_version_column(row, "version"),
        reason=row.get("reason"),
        model_name=model_name,
        model_source=model_source,
        hf_revision=revision,
        hf_token=token,
        base_model_name=base_model,
        created_at=int(created.timestamp()),
    )


def deploy_answer(row: dict[str, Any]) -> Deploy:
    spec = row["spec"]
    artifact = row.get("artifact") or {}
    analysis = row.get("analysis") or {}
    version = _version_column(row, "version")
    return Deploy(
        deploy_id=f"{spec['name']}@v{version}",
        model_name=spec["name"],
        version=artifact.get("sha256", ""),
        task=TASKS.get(analysis.get("format", ""), ""),
        status=DEEPINFRA_STATUS[AdapterStatus(row["status"])],
        fail_reason=row.get("reason") or "",
        created_at=_version_column(row, "created_at").isoformat(),
        updated_at=_version_column(row, "updated_at").isoformat(),
    )
