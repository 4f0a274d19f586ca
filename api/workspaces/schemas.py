"""Workspace request and response bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import Creator, Pagination
from streams.names import EntityName


class WorkspaceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: EntityName = Field(description="Unique name: letters, digits, underscores, hyphens and dots")
    description: str | None = Field(default=None, max_length=1000)


class Workspace(BaseModel):
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
    creator: Creator

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Workspace:
        return cls(
            name=row["name"],
            description=row["description"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            creator=Creator.from_row(row),
        )


class WorkspaceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Workspace]
    pagination: Pagination
