"""The multipart request bodies of the upload routes, for the OpenAPI document: the handlers read the
body as a stream themselves, so Litestar cannot infer it (seed 004's Body_upload_lora)."""

from __future__ import annotations

from dataclasses import dataclass

from litestar.openapi.spec import OpenAPIType, Operation, RequestBody, Schema

from api.contract import file_form
from streams.naming import ADMIN_ENTITY_TYPES, DEFAULT_ENTITY_TYPE, USER_ENTITY_TYPES, EntityType


def _upload_body(entity_types: frozenset[EntityType]) -> RequestBody:
    names = sorted(e.value for e in entity_types)
    return file_form(
        "The LoRA model file to upload (.safetensors .ckpt .pt .pth .bin, 500 MiB)",
        entity_type=Schema(
            type=OpenAPIType.STRING,
            enum=names,
            default=DEFAULT_ENTITY_TYPE.value,
            description=f"The entity type ({', '.join(names)})",
        ),
        use_safe_filename=Schema(
            type=OpenAPIType.BOOLEAN,
            default=True,
            description="Whether to enable automatic versioning for duplicate filenames",
        ),
    )


@dataclass
class UserUploadOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _upload_body(USER_ENTITY_TYPES)


@dataclass
class AdminUploadOperation(Operation):
    def __post_init__(self) -> None:
        self.request_body = _upload_body(ADMIN_ENTITY_TYPES)
