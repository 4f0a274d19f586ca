"""Adapters (DESIGN.md, "Aggregates"): one aggregate per `{workspace}/{name}`, holding every version.

A version is immutable once `ready`. Registering a name again makes a new version (the Empower and
DeepInfra routes) or is a conflict (NeMo's create, where names are unique per workspace).
The artifacts agent does the I/O between `adapter.requested` and `adapter.ready | adapter.rejected`
and reports through commands, so every state change is still decided by the adapter aggregate.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from streams.artifacts import Analysis, Artifact, Progress, Provenance
from streams.envelope import Frozen, Payload
from streams.naming import FinetuningType
from streams.registry import command, event

AGGREGATE = "adapter"
DEFAULT_WORKSPACE = "default"


def adapter_id(workspace: str, name: str) -> str:
    return f"{workspace}/{name}"


def public_name(workspace: str, name: str) -> str:
    """The name callers use for an adapter (a completion's `model`): Empower and DeepInfra names live in the default
    workspace; NeMo's are `workspace/name`."""
    return name if workspace == DEFAULT_WORKSPACE else adapter_id(workspace, name)


def hf_token_context(aggregate_id: str) -> str:
    """What an HF token is sealed for (the API seals, the artifacts agent opens): it opens for no other adapter."""
    return f"adapter:{aggregate_id}:hf_token"


class AdapterStatus(StrEnum):
    REQUESTED = "requested"
    FETCHING = "fetching"
    VALIDATING = "validating"
    READY = "ready"
    REJECTED = "rejected"


TERMINAL_STATUSES = frozenset({AdapterStatus.READY, AdapterStatus.REJECTED})


class RejectedPart(StrEnum):
    """What part of a request a rejected version is about, so each API can name its own field."""

    SOURCE = "source"  # the repo or URL: not found, unreachable, refused
    REVISION = "revision"
    TOKEN = "token"
    BASE_MODEL = "base_model"
    CONTENT = "content"  # the files themselves failed validation


class AdapterApi(StrEnum):
    """Which seed's API registered it: decides the answer's shape, not the pipeline."""

    EMPOWER = "empower"
    DEEPINFRA = "deepinfra"
    NEMO = "nemo"


class HfSource(Frozen):
    kind: Literal["hf"] = "hf"
    repo_id: str = Field(min_length=1, max_length=255)
    revision: str | None = Field(None, max_length=255)
    # A SecretBox-sealed token (infra.secrets), never the token itself.
    sealed_token: str | None = None


class CivitaiSource(Frozen):
    kind: Literal["civitai"] = "civitai"
    url: str = Field(min_length=1, max_length=4096)


class UploadSource(Frozen):
    """Bytes the API already streamed into S3 under `staged_key`."""

    kind: Literal["upload"] = "upload"
    staged_key: str
    filename: str
    size: int = Field(ge=0)
    sha256: str


class FilesetSource(Frozen):
    """Files stored earlier in a NeMo fileset, `{workspace}/{fileset_name}`."""

    kind: Literal["fileset"] = "fileset"
    fileset: str


AdapterSource = Annotated[HfSource | CivitaiSource | UploadSource | FilesetSource, Field(discriminator="kind")]


class AdapterSpec(Frozen):
    """What a caller asked for; every version records the spec it was made from."""

    workspace: str = Field(max_length=255)
    name: str = Field(max_length=512)
    source: AdapterSource
    base_model: str | None = Field(None, max_length=255)
    finetuning_type: FinetuningType = FinetuningType.LORA
    description: str | None = Field(None, max_length=1000)
    enabled: bool = True
    private: bool = False
    lora_config: dict[str, Any] | None = None
    api: AdapterApi


@command("adapter.register", aggregate_type=AGGREGATE)
class RegisterAdapter(Payload):
    spec: AdapterSpec
    # False: an existing name is a conflict (NeMo). True: it gets a new version (Empower, DeepInfra).
    new_version_if_exists: bool


@event("adapter.requested", aggregate_type=AGGREGATE)
class AdapterRequested(Payload):
    version: int = Field(ge=1)
    spec: AdapterSpec


@command("adapter.report_progress", aggregate_type=AGGREGATE)
class ReportAdapterProgress(Payload):
    version: int = Field(ge=1)
    status: Literal[AdapterStatus.FETCHING, AdapterStatus.VALIDATING]
    progress: Progress = Progress()


@event("adapter.progressed", aggregate_type=AGGREGATE)
class AdapterProgressed(Payload):
    version: int = Field(ge=1)
    status: Literal[AdapterStatus.FETCHING, AdapterStatus.VALIDATING]
    progress: Progress = Progress()


@command("adapter.complete", aggregate_type=AGGREGATE)
class CompleteAdapter(Payload):
    version: int = Field(ge=1)
    artifact: Artifact
    analysis: Analysis
    provenance: Provenance


@event("adapter.stored", aggregate_type=AGGREGATE)
class AdapterStored(Payload):
    version: int = Field(ge=1)
    artifact: Artifact
    analysis: Analysis
    provenance: Provenance


@command("adapter.fail", aggregate_type=AGGREGATE)
class FailAdapter(Payload):
    version: int = Field(ge=1)
    reason: str = Field(max_length=4000)
    part: RejectedPart = RejectedPart.SOURCE
    provenance: Provenance = Provenance()


@event("adapter.rejected", aggregate_type=AGGREGATE)
class AdapterRejected(Payload):
    version: int = Field(ge=1)
    reason: str
    part: RejectedPart = RejectedPart.SOURCE
    provenance: Provenance = Provenance()


class AdapterChanges(Frozen):
    """NeMo's update: only the fields a caller sent are changed (None means "not sent")."""

    description: str | None = Field(None, max_length=1000)
    enabled: bool | None = None
    lora_config: dict[str, Any] | None = None


@command("adapter.update", aggregate_type=AGGREGATE)
class UpdateAdapter(Payload):
    workspace: str
    name: str
    changes: AdapterChanges


@event("adapter.updated", aggregate_type=AGGREGATE)
class AdapterUpdated(Payload):
    changes: AdapterChanges


@command("adapter.delete", aggregate_type=AGGREGATE)
class DeleteAdapter(Payload):
    workspace: str
    name: str


@event("adapter.deleted", aggregate_type=AGGREGATE)
class AdapterDeleted(Payload):
    workspace: str
    name: str
