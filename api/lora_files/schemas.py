"""Seed 004's request and response bodies, field for field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import Pagination
from streams.lora_files import bin_path, full_path
from streams.naming import EntityType


def timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with a `Z`, as the seed's examples write it."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


PARTIAL_PATH_PATTERN = (
    rf"^({'|'.join(sorted(e.value for e in EntityType))})/"
    r"[A-Za-z0-9_\-][A-Za-z0-9_\- ]{0,120}(\.[A-Za-z0-9_\-]{1,20}){0,4}\.(safetensors|ckpt|pt|pth|bin)$"
)


class LoraPathRequest(BaseModel):
    """LoRADeleteRequest, also the body of a restore."""

    model_config = ConfigDict(extra="forbid")

    partial_path: str = Field(
        max_length=1024,
        # Documented, not enforced here: what an upload answers, a known entity type, then a file name with an
        # accepted extension. api.lora_files.routes._checked_path decides (and names the problem); what this
        # pattern allows, it takes.
        json_schema_extra={"pattern": PARTIAL_PATH_PATTERN},
        description="Relative path of the LoRA file (as returned by upload)",
        examples=["identities/Sh0ot1f1_01.safetensors"],
    )


class LoraUploadResponse(BaseModel):
    file_path: str = Field(description="Full path where the LoRA file was stored")
    partial_path: str = Field(description="Partial path relative to base models directory")
    filename: str = Field(description="File name the upload was stored under (`_vN` when the name was taken)")
    file_size: int = Field(description="Size of the uploaded file in bytes")
    upload_timestamp: str = Field(description="ISO timestamp of when the file was uploaded")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LoraUploadResponse:
        return cls(
            file_path=full_path(row["partial_path"]),
            partial_path=row["partial_path"],
            filename=row["filename"],
            file_size=row["file_size"],
            upload_timestamp=timestamp(row["uploaded_at"]),
        )


class AdminLoraUploadResponse(LoraUploadResponse):
    entity_type: str = Field(description="The entity type category")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AdminLoraUploadResponse:
        return cls(**LoraUploadResponse.from_row(row).model_dump(), entity_type=row["entity_type"])


class LoraFileItem(AdminLoraUploadResponse):
    sha256: str

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> LoraFileItem:
        return cls(**AdminLoraUploadResponse.from_row(row).model_dump(), sha256=row["sha256"])


class LoraFileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[LoraFileItem]
    pagination: Pagination


class LoraDeleteResponse(BaseModel):
    deleted: bool
    full_path: str
    bin_path: str | None
    timestamp: str

    @classmethod
    def from_bin_row(cls, row: dict[str, Any]) -> LoraDeleteResponse:
        return cls(
            deleted=True,
            full_path=full_path(row["partial_path"]),
            bin_path=bin_path(row["bin_path"]),
            timestamp=timestamp(row["binned_at"]),
        )
