"""Bodies and answers of the evaluation routes (seed 004 lists `POST /evaluation/` without a schema: ours)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.schemas import Pagination
from streams.evaluations import (
    JUDGE_SCALE,
    MAX_ITEMS,
    MAX_RUBRIC_CHARS,
    MAX_TEXT_CHARS,
    JudgeSpec,
    Metric,
    MetricResult,
)

Status = Literal["pending", "running", "completed", "failed", "cancelled"]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AdapterRef(_Closed):
    name: str = Field(
        min_length=1,
        max_length=512,
        description="Any name the registry knows the adapter by: Empower's or DeepInfra's name, or `workspace/name`",
    )
    version: int | None = Field(None, ge=1, le=1_000_000, description="A stored version (default: the newest)")


class ItemIn(_Closed):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    reference: str | None = Field(None, max_length=MAX_TEXT_CHARS)


class JudgeIn(_Closed):
    model: str = Field(
        min_length=1,
        max_length=512,
        description="The model that grades: a running deployment's model_name, or an adapter by any registry name "
        "(optionally `name@vN`)",
    )
    rubric: str = Field(
        min_length=1,
        max_length=MAX_RUBRIC_CHARS,
        description=f"How to grade, put before each item; the judge answers a grade from {JUDGE_SCALE[0]} to "
        f"{JUDGE_SCALE[-1]}",
    )
    reference: bool = Field(True, description="Show the judge each item's reference (items then need one)")
    deploy_id: str | None = Field(
        None,
        max_length=255,
        description="The deployment the judge runs on (default: the evaluation's, when it can serve the judge; else "
        "a running one that can)",
    )


class EvaluationIn(_Closed):
    adapter: AdapterRef
    baseline: AdapterRef | Literal["base"] = Field(
        "base", description='`"base"`: the adapter\'s base model; or another adapter (version) of the same base model'
    )
    deploy_id: str | None = Field(
        None, max_length=255, description="The deployment to run on (default: a running one of the base model)"
    )
    items: list[ItemIn] | None = Field(
        None, min_length=1, max_length=MAX_ITEMS, description="The dataset inline: prompt and reference (or dataset_id)"
    )
    dataset_id: str | None = Field(
        None,
        pattern=r"^[0-9a-f]{64}$",
        description="A JSONL dataset uploaded with POST /api/v1/evaluation/datasets (or items)",
    )
    metrics: list[Metric] = Field(
        default_factory=lambda: [Metric.PERPLEXITY], min_length=1, max_length=len(Metric), description="What to score"
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(32, ge=1, le=1024, description="Tokens generated per item (text metrics)")
    judge: JudgeIn | None = Field(None, description="The judge of the `judge` metric (scored whenever it is given)")


class EvaluationOut(BaseModel):
    id: str
    status: Status
    adapter: str  # as the gateway is asked for it: `name@vN`
    baseline: str
    deploy_id: str
    base_model: str
    metrics: list[Metric]
    judge: JudgeSpec | None = None
    items_total: int
    items_done: int
    results: list[MetricResult] | None = None
    results_url: str | None = None  # the per-item results as JSONL
    reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EvaluationOut:
        spec = row["spec"]
        evaluation_id = row["evaluation_id"]
        return cls(
            id=evaluation_id,
            status=row["status"],
            adapter=spec["adapter"]["model"],
            baseline=spec["baseline"]["model"],
            deploy_id=spec["deploy_id"],
            base_model=spec["base_model"],
            metrics=spec["metrics"],
            judge=spec.get("judge"),
            items_total=row["items_total"],
            items_done=row["items_done"],
            results=row["results"],
            results_url=f"/api/v1/evaluation/{evaluation_id}/results" if row["results_key"] else None,
            reason=row["reason"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )


class EvaluationList(BaseModel):
    data: list[EvaluationOut]
    pagination: Pagination


class DeploymentForEvaluation(BaseModel):
    deploy_id: str
    model_name: str
    base_model: str
    running_instances: int


class EvaluationHealth(BaseModel):
    status: Literal["ok", "unavailable"]  # ok: an evaluation agent was heard from lately
    agents: int  # evaluation agents heard from within the last 30 s
    last_heartbeat: datetime | None
    queue_depth: int  # runs not finished
    deployments: list[DeploymentForEvaluation]  # running deployments an evaluation can run on


class DatasetOut(BaseModel):
    dataset_id: str  # the sha256 of the file: name it as `dataset_id` in POST /api/v1/evaluation
    items: int
    with_reference: int  # items that have a `reference`
    size: int
