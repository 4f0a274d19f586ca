"""Request and response bodies of seed 003 (DeepInfra Deploy LLM), field for field, plus documented extensions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.schemas import JsonBool, JsonInt, Version
from streams.deployments import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_LORA_RANK,
    DEFAULT_MAX_LORAS,
    MAX_BATCH_SIZE,
    MAX_INSTANCES,
    MAX_LORAS,
    MAX_NUM_GPUS,
    VLLM_LORA_RANKS,
    DeployGpu,
)


class HFWeights(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(min_length=1, max_length=255, description="Hugging Face repository of the weights")
    revision: str | None = Field(None, max_length=255, description="Branch, tag or commit; default: main")
    token: str | None = Field(None, max_length=1024, description="Stored encrypted; answers show 'hf_****'")


class ScaleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_instances: JsonInt = Field(1, ge=0, le=MAX_INSTANCES, description="Instances started and kept")
    max_instances: JsonInt = Field(1, ge=0, le=MAX_INSTANCES, description="Stored for a later autoscaler")

    @model_validator(mode="after")
    def _ordered(self) -> ScaleSettings:
        if self.min_instances > self.max_instances:
            raise ValueError(f"min_instances {self.min_instances} is above max_instances {self.max_instances}")
        return self


class LoraSettings(BaseModel):
    """Extension: the adapter slots of each instance (vLLM's --max-loras and --max-lora-rank)."""

    model_config = ConfigDict(extra="forbid")

    max_loras: JsonInt = Field(
        DEFAULT_MAX_LORAS, ge=0, le=MAX_LORAS, description="Adapters each instance holds at once"
    )
    max_lora_rank: JsonInt = Field(
        DEFAULT_MAX_LORA_RANK,
        description=f"Highest adapter rank; one of {VLLM_LORA_RANKS}",
        json_schema_extra={"enum": list(VLLM_LORA_RANKS)},
    )

    @model_validator(mode="after")
    def _vllm_rank(self) -> LoraSettings:
        if self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {', '.join(map(str, VLLM_LORA_RANKS))}")
        return self


class DeployLLMIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(min_length=1, max_length=255, description="Served model name (username/model-name)")
    gpu: DeployGpu = Field(description="The seed's GPU types, plus `cpu` for a node without GPUs")
    num_gpus: JsonInt = Field(1, ge=1, le=MAX_NUM_GPUS, description="GPUs of one instance")
    max_batch_size: JsonInt = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, description="Concurrent requests")
    hf: HFWeights | None = None
    base_model: str | None = Field(None, max_length=255)
    settings: ScaleSettings | None = None
    extra_args: list[str] | None = Field(None, max_length=64, description="Checked against vLLM's allowlist")
    lora: LoraSettings | None = Field(None, description="Extension: adapter slots (default 4 adapters, rank 64)")
    shared: JsonBool = Field(
        False, description="Extension, admin keys only: every team may call it and serve its own adapters on it"
    )


class DeployLoraIn(BaseModel):
    """Extension: serve a registered LoRA on a deployment."""

    model_config = ConfigDict(extra="forbid")

    deploy_id: str = Field(min_length=1, max_length=255)
    lora_name: str = Field(
        min_length=1, max_length=512, description="The LoRA's name (Empower, DeepInfra), or `workspace/name` (NeMo)"
    )
    version: Version | None = Field(None, description="A stored version; default: the newest stored one")


class LoraCheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deploy_id: str = Field(min_length=1, max_length=255)
    version: Version | None = None


class LoraCheck(BaseModel):
    """The pre-flight verdict: would the deployment's instances serve this adapter, and every reason they would not."""

    name: str
    version: int
    deploy_id: str
    verdict: Literal["compatible", "incompatible"]
    reasons: list[str]


class DeployUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    settings: ScaleSettings


class DeployInstances(BaseModel):
    running: int = 0
    pending: int = Field(0, description="Instances not running yet: waiting for a node, placed, or starting")


class Weights(BaseModel):
    repo: str
    revision: str | None = None
    token: str | None = Field(None, description="'hf_****' when a token was given; the token is never shown")


class DeployLLMConfig(BaseModel):
    gpu: DeployGpu
    num_gpus: int
    max_batch_size: int
    weights: Weights


class InstanceAdapter(BaseModel):
    name: str
    status: str = Field(description="loaded | failed")
    reason: str | None = None


class InstanceDetail(BaseModel):
    """Extension: where each instance is and how it fares."""

    instance_id: str
    status: str = Field(description="pending (no node can take it) | placed | starting | running | failed")
    reason: str | None = Field(None, description="Why it is pending, or why it failed")
    node_id: str | None = None
    device_indexes: list[int] | None = None
    endpoint: str | None = None
    adapters: list[InstanceAdapter] = Field(default_factory=list, description="What its node reported it holds")


class ServedAdapter(BaseModel):
    """Extension: an adapter the deployment serves, and the instances that hold it now."""

    name: str = Field(description="The `model` a completion request names")
    adapter: str = Field(description="The registry's adapter (`workspace/name`)")
    version: int
    sha256: str
    on_demand: bool = Field(
        False, description="Loaded by the inference gateway for a request (evictable); false: served explicitly, pinned"
    )
    instances: list[str] = Field(description="Instances where it is loaded")


class Deploy(BaseModel):
    deploy_id: str
    model_name: str
    version: str = Field(description="hf.revision as given (empty: the repository's default branch)")
    task: str
    status: str = Field(description="initializing | pending | deploying | running | failed | stopped | deleted")
    fail_reason: str
    created_at: str
    updated_at: str
    type: Literal["legacy", "llm", "lora", "tts"] = "llm"
    instances: DeployInstances
    config: DeployLLMConfig
    settings: ScaleSettings
    # Extensions
    base_model: str | None = None
    extra_args: list[str] = Field(default_factory=list)
    instance_details: list[InstanceDetail] = Field(default_factory=list)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    adapters: list[ServedAdapter] = Field(default_factory=list)


class NodeDevice(BaseModel):
    index: int
    gpu_type: str
    memory_mb: int
    name: str
    instance_id: str | None = Field(None, description="The instance holding it; null when free")


class ClusterNode(BaseModel):
    node_id: str
    lost: bool
    lost_reason: str | None = None
    registered_at: str
    devices: list[NodeDevice]
    free: int
    used: int


class NodeList(BaseModel):
    data: list[ClusterNode]
