"""Response pieces shared by several routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


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
