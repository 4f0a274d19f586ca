"""Seed 002's request and response bodies (NeMo Create Adapter), and the fileset listing."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from api.schemas import JsonBool, Pagination
from streams.artifacts import Analysis
from streams.names import EntityName
from streams.naming import (
    DESCRIPTION_MAX_LENGTH,
    MODEL_REFERENCE_MAX_LENGTH,
    FinetuningType,
    fileset_problem,
    model_reference_problem,
)


class RequestBody(BaseModel):
    """A JSON request body whose errors name the body.

    Litestar drops the `data` prefix from a pydantic model's error locations, then guesses the source
    from the key: a body field that shares a path parameter's name (`name`, `workspace`) would be
    reported as `["path", ...]`. Prefixing `data` again makes Litestar report `["body", ...]`.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="wrap")
    @classmethod
    def _errors_in_body(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except ValidationError as exc:
            errors: list[InitErrorDetails] = []
            for error in exc.errors():
                detail = InitErrorDetails(type=error["type"], loc=("data", *error["loc"]), input=error["input"])
                if "ctx" in error:
                    detail["ctx"] = error["ctx"]
                errors.append(detail)
            raise ValidationError.from_exception_data(exc.title, errors) from None


class AdapterCreate(RequestBody):
    name: EntityName = Field(description="Unique in the workspace: letters, digits, underscores, hyphens and dots")
    fileset: str = Field(description="Where the adapter's files are stored: {workspace}/{fileset_name}")
    finetuning_type: FinetuningType = Field(description="lora, p_tuning or all_weights (either case)")
    model: str = Field(max_length=MODEL_REFERENCE_MAX_LENGTH, description="Base model: name or workspace/name")
    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX_LENGTH)
    enabled: JsonBool = Field(default=True, description="Whether to make this adapter available for inference")
    lora_config: dict[str, Any] | None = Field(default=None, description="LoRA configuration specifics")

    @field_validator("model")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        if problem := model_reference_problem(value):
            raise ValueError(problem)
        return value

    @field_validator("fileset")
    @classmethod
    def _fileset(cls, value: str) -> str:
        if problem := fileset_problem(value):
            raise ValueError(problem)
        return value


class AdapterPatch(RequestBody):
    """Only the fields sent change; a field sent as null is left as it is."""

    description: str | None = Field(default=None, max_length=DESCRIPTION_MAX_LENGTH)
    enabled: JsonBool | None = None
    lora_config: dict[str, Any] | None = None


class NemoAdapter(BaseModel):
    """Seed 002's response, plus `status`, `reason` and `analysis` (what validation read from the files)."""

    name: str
    workspace: str
    fileset: str
    finetuning_type: FinetuningType
    description: str | None
    enabled: bool
    lora_config: dict[str, Any] | None
    model: str
    created_at: datetime
    updated_at: datetime
    status: Literal["requested", "fetching", "validating", "ready", "rejected"]
    reason: str | None = None
    analysis: Analysis | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NemoAdapter:
        spec = row["spec"]
        source = spec["source"]
        return cls(
            name=row["name"],
            workspace=row["workspace"],
            fileset=source.get("fileset", ""),
            finetuning_type=spec["finetuning_type"],
            description=row["description"],
            enabled=row["enabled"],
            lora_config=row["lora_config"],
            model=spec.get("base_model") or "",
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            status=row["status"],
            reason=row["reason"],
            analysis=Analysis.model_validate(row["analysis"]) if row["analysis"] else None,
        )


class NemoAdapterList(BaseModel):
    object: Literal["list"] = "list"
    data: list[NemoAdapter]
    pagination: Pagination


class FilesetFile(BaseModel):
    path: str
    size: int
    sha256: str
    status: Literal["staged", "stored"]
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> FilesetFile:
        return cls(
            path=row["path"],
            size=row["file_size"],
            sha256=row["sha256"],
            status=row["status"],
            updated_at=row["updated_at"],
        )


class Fileset(BaseModel):
    workspace: str
    name: str
    files: list[FilesetFile]
