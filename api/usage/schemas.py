"""`GET /v2/usage` answers: OpenAI's usage page (buckets of results), with each result's cost beside its tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class UsageResult(BaseModel):
    object: Literal["organization.usage.completions.result"] = "organization.usage.completions.result"
    input_tokens: int = Field(description="Prompt tokens")
    output_tokens: int = Field(description="Completion tokens")
    num_model_requests: int
    api_key_id: str | None = Field(None, description="Set when grouped by api_key")
    model: str | None = Field(None, description="Set when grouped by model: the model as requests named it")
    cost: float = Field(description="Tokens x the unit price of the model's base model (LORAPLANE_LORA_UNIT_PRICES)")


class UsageBucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int = Field(description="Unix seconds, inclusive")
    end_time: int = Field(description="Unix seconds, exclusive")
    results: list[UsageResult]


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool = False
    next_page: str | None = None
