"""Pieces shared by several routes' bodies."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field


def _an_integer(value: Any) -> Any:
    # Litestar validates bodies leniently (strict=False overrides a field's strict=True), which would take
    # `false` or "3" for an integer; the document promises JSON integers, so that is what is taken.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be an integer")
    return value


def _a_boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


JsonInt = Annotated[int, BeforeValidator(_an_integer)]
JsonBool = Annotated[bool, BeforeValidator(_a_boolean)]

# An adapter version in a body: as many digits as `name@vN` takes (api.gateway.routing), so no number a client
# sends overflows a database column.
MAX_VERSION = 999_999_999
Version = Annotated[JsonInt, Field(ge=1, le=MAX_VERSION)]


class ApiKeyRef(BaseModel):
    id: str
    name: str


class Creator(BaseModel):
    """Who made a resource, in the shape of seed 000's `creator`."""

    actor_type: str
    api_key: ApiKeyRef | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Creator:
        api_key = (
            ApiKeyRef(id=row["creator_id"], name=row["creator_name"]) if row["creator_type"] == "API_KEY" else None
        )
        return cls(actor_type=row["creator_type"], api_key=api_key)


class Pagination(BaseModel):
    page: int
    page_size: int
    current_page_size: int
    total_pages: int
    total_results: int

    @classmethod
    def of(cls, page: int, page_size: int, shown: int, total: int) -> Pagination:
        """The pagination of a page showing `shown` of `total` results."""
        return cls(
            page=page,
            page_size=page_size,
            current_page_size=shown,
            total_pages=math.ceil(total / page_size),
            total_results=total,
        )
