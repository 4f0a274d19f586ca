"""Request and response bodies of seed 000 (Empower `POST /api/v1/lora`) and seed 001 (DeepInfra
`POST /v1/lora/create`), field for field, plus the documented extensions of our GET answers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import JsonBool


class ModelSource(StrEnum):
    HF_HUB = "HF_HUB"


class LoraCreate(BaseModel):
    """Seed 000's body. `base_model_name` is our extension: when given, the adapter must have been
    trained on that model (its adapter_config.json says so) or it is refused."""

    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(
        min_length=1, max_length=255, description="Hugging Face repository id, e.g. IlyaGusev/saiga_mistral_7b_lora"
    )
    model_source: ModelSource = Field(description="Only HF_HUB")
    hf_revision: str | None = Field(None, max_length=255, description="Branch, tag or commit sha; default: main")
    hf_token: str | None = Field(
        None, max_length=1024, description="Access token for a private repository; stored encrypted, never shown"
    )
    name: str | None = Field(None, max_length=255, description="Unique name of the LoRA; default: model_name")
    base_model_name: str | None = Field(
        None, max_length=255, description="Extension: refuse the adapter unless it was trained on this model"
    )


class Lora(BaseModel):
    """Seed 000's answer (name, unit_price, active_deployment) plus what a caller needs to follow the
    registration: status, version, reason, the resolved commit and the masked token."""

    name: str
    unit_price: float
    active_deployment: dict[str, Any] | None = Field(None, description="Null until the LoRA is deployed")
    status: str = Field(description="requested | fetching | validating | ready | rejected")
    version: int = Field(description="Registering the name again makes a new version")
    reason: str | None = Field(None, description="Why the version was rejected")
    model_name: str = Field(description="The Hub repository (or the CivitAI URL of a DeepInfra registration)")
    model_source: str = Field(description="HF_HUB, or CIVITAI / UPLOAD / FILESET for other APIs' adapters")
    hf_revision: str | None = Field(None, description="The commit the revision resolved to (as asked until then)")
    hf_token: str | None = Field(None, description="'hf_****' when a token was given; the token is never shown")
    base_model_name: str | None = Field(None, description="From adapter_config.json once validated")
    created_at: int = Field(description="Unix seconds")


class LoraList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Lora]
    total: int


class CivitaiSourceModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["civitai"]
    civit_url: str = Field(min_length=1, max_length=4096)


class DeepInfraLoraCreate(BaseModel):
    """Seed 001's body."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(min_length=1, max_length=255)
    lora_name: str = Field(min_length=1, max_length=255)
    source: CivitaiSourceModel
    private: JsonBool
    description: str | None = Field("", max_length=1000)


class DeployInstances(BaseModel):
    running: int = 0
    pending: int = 0


class Deploy(BaseModel):
    """Seed 001's answer, `type: "lora"`. `config` and `settings` stay null until the LoRA is deployed."""

    deploy_id: str = Field(description="{lora_name}@v{version}")
    model_name: str
    version: str = Field(description="sha256 of the weights once stored; empty before")
    task: str = Field(description="text-generation (PEFT LLM LoRA) or text-to-image (kohya/diffusers LoRA)")
    status: str = Field(description="initializing | deploying | deployed | failed")
    fail_reason: str
    created_at: str
    updated_at: str
    type: Literal["legacy", "llm", "lora", "tts"] = "lora"
    instances: DeployInstances = Field(default_factory=DeployInstances)
    config: dict[str, Any] | None = None
    settings: dict[str, Any] | None = None
