"""Deployments (seed 003, DeepInfra `POST /deploy/llm`): one aggregate per deploy_id.

The deployment says what should run; where it runs is the cluster aggregate's decision (streams.cluster), asked
for by the deployments process manager when a deployment is created, scaled or deleted. Node agents report how
each instance fares (`deployment.report_instance`) into the deployment's own stream.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from streams.artifacts import Analysis, Artifact
from streams.envelope import Frozen, Payload
from streams.registry import command, event, upcaster

AGGREGATE = "deployment"
MAX_NUM_GPUS = 8
MAX_BATCH_SIZE = 256
DEFAULT_MAX_BATCH_SIZE = 96
MAX_INSTANCES = 100
# vLLM's `MaxLoRARanks` (vllm/config/lora.py): --max-lora-rank accepts only these.
VLLM_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORAS = 4
DEFAULT_MAX_LORA_RANK = 64
MAX_LORAS = 64


class DeployGpu(StrEnum):
    """The seed's `gpu` enum plus `cpu` (a node without GPUs) and `other` (a GPU the table does not know)."""

    L4_24GB = "L4-24GB"
    L40S_48GB = "L40S-48GB"
    A100_80GB = "A100-80GB"
    H100_80GB = "H100-80GB"
    H200_141GB = "H200-141GB"
    B200_180GB = "B200-180GB"
    B300_270GB = "B300-270GB"
    RTXPRO6000_96GB = "RTXPRO6000-96GB"
    OTHER = "other"
    CPU = "cpu"


def hf_token_context(deploy_id: str) -> str:
    """What a deployment's HF token is sealed for (the API seals, a node agent opens): no other deployment's."""
    return f"deployment:{deploy_id}:hf_token"


class Weights(Frozen):
    repo: str = Field(min_length=1, max_length=255)
    revision: str | None = Field(None, max_length=255)
    # A SecretBox-sealed token (infra.secrets), never the token itself.
    sealed_token: str | None = None


class ScaleSettings(Frozen):
    min_instances: int = Field(1, ge=0, le=MAX_INSTANCES)
    max_instances: int = Field(1, ge=0, le=MAX_INSTANCES)


class LoraSettings(Frozen):
    """The LoRA slots of each instance: `--max-loras` (adapters one batch mixes, and adapters held: vLLM's
    `--max-cpu-loras` defaults to it) and `--max-lora-rank` (one of VLLM_LORA_RANKS)."""

    max_loras: int = Field(DEFAULT_MAX_LORAS, ge=0, le=MAX_LORAS)
    max_lora_rank: int = DEFAULT_MAX_LORA_RANK


# The inference gateway's headers: on a request, the one deployment that must answer it (`api.gateway.routing.pin`);
# on an answer, the deployment and instance that did.
DEPLOYMENT_HEADER = "X-Loraplane-Deployment"
INSTANCE_HEADER = "X-Loraplane-Instance"


def engine_key_context(deploy_id: str, instance_id: str) -> str:
    """What an instance's engine API key is sealed for (its node seals, the gateway opens): no other instance's."""
    return f"instance:{deploy_id}/{instance_id}:engine_key"


def base_model_key(name: str) -> str:
    """A model name as compared with another: without case, revision (`repo@rev`) or surrounding slashes."""
    return name.strip().split("@", 1)[0].strip("/").lower()


def adapter_slots(lora: LoraSettings, live_instances: int) -> int:
    """How many adapters a deployment holds at once: `max_loras` on each running or starting instance (on the one it
    will start, before any has). The deployment aggregate refuses an on-demand adapter beyond them; the API waits
    for a LoRA to be served only where they leave room."""
    return lora.max_loras * max(1, live_instances)


class DeploymentSpec(Frozen):
    """What the caller asked for. Plain ints and strings: the agent re-checks ranges and answers with reasons."""

    model_name: str = Field(min_length=1, max_length=255)
    gpu: DeployGpu
    num_gpus: int = 1
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    weights: Weights | None = None
    base_model: str | None = Field(None, max_length=255)
    settings: ScaleSettings = ScaleSettings()
    extra_args: tuple[str, ...] = ()
    lora: LoraSettings = LoraSettings()

    @property
    def base_model_name(self) -> str:
        """The model its adapters must have been trained on: `base_model`, else the weights' repo, else the name."""
        return self.base_model or (self.weights.repo if self.weights else self.model_name)


class InstanceStatus(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    FAILED = "failed"


@command("deployment.create", aggregate_type=AGGREGATE)
class CreateDeploymentV1(Payload):
    spec: DeploymentSpec


@command("deployment.create", version=2, aggregate_type=AGGREGATE)
class CreateDeployment(Payload):
    spec: DeploymentSpec
    # Every team may call it and serve its own adapters on it; only its owner changes or deletes it. Admins only.
    shared: bool = False


@event("deployment.created", aggregate_type=AGGREGATE)
class DeploymentCreatedV1(Payload):
    spec: DeploymentSpec


@event("deployment.created", version=2, aggregate_type=AGGREGATE)
class DeploymentCreated(Payload):
    spec: DeploymentSpec
    shared: bool = False


@upcaster("deployment.create", from_version=1)
def create_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "shared": False}  # deployments made before sharing existed are their team's alone


@upcaster("deployment.created", from_version=1)
def created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "shared": False}


@command("deployment.scale", aggregate_type=AGGREGATE)
class ScaleDeployment(Payload):
    settings: ScaleSettings


@event("deployment.scaled", aggregate_type=AGGREGATE)
class DeploymentScaled(Payload):
    settings: ScaleSettings


@command("deployment.delete", aggregate_type=AGGREGATE)
class DeleteDeployment(Payload):
    pass


@event("deployment.deleted", aggregate_type=AGGREGATE)
class DeploymentDeleted(Payload):
    pass


@command("deployment.report_instance", aggregate_type=AGGREGATE)
class ReportInstance(Payload):
    """A node agent's report on one of the deployment's instances (the instance id the cluster placed)."""

    instance_id: str = Field(min_length=1, max_length=600)
    node_id: str = Field(min_length=1, max_length=255)
    status: InstanceStatus
    endpoint: str | None = Field(None, max_length=2048)
    fail_reason: str | None = Field(None, max_length=8000)
    # The weights' `architectures[0]` from config.json (LlamaForCausalLM), once the node has them.
    architecture: str | None = Field(None, max_length=255)
    # The engine's own API key (vLLM's --api-key), sealed for `engine_key_context`: only the gateway opens it.
    sealed_api_key: str | None = Field(None, max_length=4096)


@event("instance.launched", aggregate_type=AGGREGATE)
class InstanceLaunched(Payload):
    """The node agent started vLLM for the instance (status `starting`: loading weights)."""

    instance_id: str
    node_id: str


@event("instance.started", aggregate_type=AGGREGATE)
class InstanceStarted(Payload):
    """vLLM answered /health: the instance serves at `endpoint` (status `running`)."""

    instance_id: str
    node_id: str
    endpoint: str
    architecture: str | None = None
    sealed_api_key: str | None = None


@event("instance.failed", aggregate_type=AGGREGATE)
class InstanceFailed(Payload):
    """vLLM exited or never became healthy; `fail_reason` holds the last lines of its log (status `failed`)."""

    instance_id: str
    node_id: str
    fail_reason: str


# --- adapters served by a deployment -----------------------------------------------------------------------------


class DeployedAdapter(Frozen):
    """A stored adapter version a deployment serves: its files in S3 and what validation read from them."""

    name: str = Field(min_length=1, max_length=512)  # the `model` a completion request names it by
    adapter_id: str = Field(min_length=1, max_length=600)  # the registry's aggregate id
    version: int = Field(ge=1)
    artifact: Artifact
    analysis: Analysis


class AdapterLoadStatus(StrEnum):
    LOADED = "loaded"
    UNLOADED = "unloaded"
    FAILED = "failed"


class Eviction(Frozen):
    """An on-demand adapter to stop serving, and why (the gateway's choice: least recently used, nothing in flight)."""

    name: str = Field(min_length=1, max_length=512)
    reason: str = Field(min_length=1, max_length=1000)


@command("deployment.attach_adapter", aggregate_type=AGGREGATE)
class AttachAdapter(Payload):
    """Serve the adapter on the deployment (refused, with every reason, when its instances cannot load it).

    `on_demand`: the inference gateway asks for it because a request named it; such an adapter may be evicted to
    free a slot, while one attached explicitly (`POST /deploy/lora`) is pinned. `evict` lists on-demand adapters to
    stop serving first, in the same decision (refused if one of them is pinned)."""

    adapter: DeployedAdapter
    on_demand: bool = False
    evict: tuple[Eviction, ...] = Field((), max_length=64)


@event("deployment.adapter_attached", aggregate_type=AGGREGATE)
class AdapterAttached(Payload):
    adapter: DeployedAdapter
    on_demand: bool = False  # True: loaded for a request, evictable; False: pinned


@event("deployment.adapter_evicted", aggregate_type=AGGREGATE)
class AdapterEvicted(Payload):
    """An on-demand adapter no longer served, to free its slot for another (`reason` says which and why)."""

    name: str
    reason: str


@command("deployment.check_adapter", aggregate_type=AGGREGATE)
class CheckAdapter(Payload):
    """Pre-flight only: would the deployment's instances serve the adapter? Answered by `adapter_checked`."""

    adapter: DeployedAdapter


@event("deployment.adapter_checked", aggregate_type=AGGREGATE)
class AdapterChecked(Payload):
    """The pre-flight verdict, with every reason; it changes nothing of the deployment."""

    name: str
    adapter_id: str
    version: int
    compatible: bool
    reasons: tuple[str, ...] = ()


@command("deployment.detach_adapter", aggregate_type=AGGREGATE)
class DetachAdapter(Payload):
    name: str = Field(min_length=1, max_length=512)


@event("deployment.adapter_detached", aggregate_type=AGGREGATE)
class AdapterDetached(Payload):
    name: str


@command("deployment.report_adapter", aggregate_type=AGGREGATE)
class ReportAdapter(Payload):
    """A node agent's report on one adapter of one instance."""

    instance_id: str = Field(min_length=1, max_length=600)
    node_id: str = Field(min_length=1, max_length=255)
    name: str = Field(min_length=1, max_length=512)
    status: AdapterLoadStatus
    sha256: str | None = Field(None, max_length=64)
    reason: str | None = Field(None, max_length=8000)


@event("adapter.loaded", aggregate_type=AGGREGATE)
class AdapterLoaded(Payload):
    instance_id: str
    node_id: str
    name: str
    sha256: str


@event("adapter.unloaded", aggregate_type=AGGREGATE)
class AdapterUnloaded(Payload):
    instance_id: str
    node_id: str
    name: str
    reason: str


@event("adapter.load_failed", aggregate_type=AGGREGATE)
class AdapterLoadFailed(Payload):
    instance_id: str
    node_id: str
    name: str
    reason: str
