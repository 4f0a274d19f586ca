"""Value types shared by every artifact-bearing aggregate: stored files, what validation found, provenance."""

from __future__ import annotations

from pydantic import Field

from streams.envelope import Frozen

SHA256_HEX = r"^[0-9a-f]{64}$"


def blob_key(sha256: str) -> str:
    """The content address of bytes the agents write themselves (downloads, datasets). An upload is stored where the
    API streamed it (`blobs/uploads/{uuid}`); either way one object holds equal bytes (infra.s3_objects)."""
    return f"blobs/sha256/{sha256[:2]}/{sha256}"


class StoredFile(Frozen):
    """One file of an artifact: its name inside the artifact and the key of the one object holding its bytes (their
    content address, or the upload that brought them first): readers read `key`, never a key made from `sha256`."""

    path: str = Field(min_length=1, max_length=1024)
    key: str = Field(min_length=1, max_length=1024)
    sha256: str = Field(pattern=SHA256_HEX)
    size: int = Field(ge=0)


class Artifact(Frozen):
    bucket: str
    files: tuple[StoredFile, ...]
    # The weights file's digest and size; the whole artifact's size is `total_size`.
    sha256: str = Field(pattern=SHA256_HEX)
    size: int = Field(ge=0)
    total_size: int = Field(ge=0)


class Analysis(Frozen):
    """What validation read from the content (agents.validation.ArtifactReport, minus the problems)."""

    container: str  # safetensors | torch
    format: str  # peft | kohya | diffusers | unknown ...
    rank: int | None = None
    ranks: tuple[int, ...] = ()
    target_modules: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    parameter_count: int = 0
    tensor_count: int = 0
    peft_type: str | None = None
    base_model: str | None = None
    lora_alpha: float | None = None
    modules_to_save: tuple[str, ...] = ()


class Provenance(Frozen):
    """Where the bytes came from. Never holds a token or a signed URL's query."""

    source_url: str | None = None
    hf_repo: str | None = None
    hf_revision: str | None = None  # as requested
    hf_commit: str | None = None  # what it resolved to
    civitai_model_id: int | None = None
    civitai_version_id: int | None = None
    filename: str | None = None
    license: str | None = None


class Progress(Frozen):
    bytes_done: int = Field(0, ge=0)
    bytes_total: int | None = Field(None, ge=0)
