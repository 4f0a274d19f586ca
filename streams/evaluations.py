"""Evaluations: an adapter scored against a baseline (its base model or another adapter) on a dataset, as a job.

`evaluation.request` names two targets by the names the inference gateway resolves, the deployment they run on,
the metrics, the sampling settings, the dataset (inline items, or a JSONL object in S3) and, for the `judge` metric,
the model that grades the answers and the deployment it runs on. The evaluation agent
runs the items through the gateway and reports progress (by quarter), then the outcome; a cancel stops it.

The dataset rules live here, beside the wire format, because the API (422 before anything is published) and the
agent (which decides the command) apply the same ones: `dataset_problems`, `parse_jsonl`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field

from streams.envelope import Frozen, Payload
from streams.registry import command, event, upcaster

AGGREGATE = "evaluation"

MAX_ITEMS = 1000  # per run, inline or in a file
MAX_INLINE_CHARS = 256_000  # the inline items together (they travel in the event); larger datasets go as a file
MAX_TEXT_CHARS = 16_000  # one prompt or reference


class Metric(StrEnum):
    PERPLEXITY = "perplexity"  # of the reference given the prompt, from the engine's prompt log-probabilities
    EXACT_MATCH = "exact_match"  # generated text equals the reference (surrounding white space ignored)
    CONTAINS = "contains"  # generated text contains the reference
    ROUGE_L = "rouge_l"  # ROUGE-L F-measure of the generated text against the reference (`rouge-score`)
    JUDGE = "judge"  # another model's grade of the generated text, on JUDGE_SCALE (`JudgeSpec`)


# Metrics that compare with a reference; the judge does when it is shown one (`JudgeSpec.reference`).
NEEDS_REFERENCE = frozenset({Metric.PERPLEXITY, Metric.EXACT_MATCH, Metric.CONTAINS, Metric.ROUGE_L})
# Metrics computed from generated text (the others need no generation).
GENERATIVE = frozenset({Metric.EXACT_MATCH, Metric.CONTAINS, Metric.ROUGE_L, Metric.JUDGE})
# The grades a judge may answer: its output is constrained to one of them (vLLM's structured outputs).
JUDGE_SCALE = ("1", "2", "3", "4", "5")
MAX_RUBRIC_CHARS = 4000


class EvaluationStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DatasetItem(Frozen):
    prompt: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    reference: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class Target(Frozen):
    """One side of the comparison: what the gateway is asked for (`model`), and what it is in the registry."""

    model: str = Field(min_length=1, max_length=512)  # `name@vN` of an adapter, or a deployment's model_name
    adapter_id: str | None = Field(default=None, max_length=512)  # None: the base model
    version: int | None = Field(default=None, ge=1)


class Sampling(Frozen):
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=32, ge=1, le=1024)


class JudgeSpec(Frozen):
    """The judge metric: `model` (a deployment's model_name, or an adapter as `name@vN`) grades each generated answer
    by `rubric`, run on deployment `deploy_id` (pinned, as the evaluation's own requests are)."""

    model: str = Field(min_length=1, max_length=512)
    deploy_id: str = Field(min_length=1, max_length=255)
    rubric: str = Field(min_length=1, max_length=MAX_RUBRIC_CHARS)
    reference: bool = True  # the judge is shown each item's reference (items then need one)


class EvaluationSpec(Frozen):
    adapter: Target
    baseline: Target
    deploy_id: str = Field(min_length=1, max_length=255)
    engine_model: str = Field(min_length=1, max_length=255)  # the deployment's model_name: asked for token ids
    base_model: str = Field(min_length=1, max_length=255)
    metrics: tuple[Metric, ...] = Field(min_length=1, max_length=len(Metric))
    sampling: Sampling = Sampling()
    items: tuple[DatasetItem, ...] | None = Field(default=None, max_length=MAX_ITEMS)
    dataset_key: str | None = Field(default=None, max_length=1024)  # a JSONL object in the bucket
    item_count: int = Field(ge=1, le=MAX_ITEMS)
    judge: JudgeSpec | None = None  # with Metric.JUDGE, and only then


class MetricResult(Frozen):
    metric: Metric
    adapter: float | None
    baseline: float | None
    difference: float | None  # adapter - baseline
    items: int = Field(ge=0)  # the items it was computed over


@command("evaluation.request", aggregate_type=AGGREGATE)
class RequestEvaluationV1(Payload):
    spec: EvaluationSpec  # without `judge`


@command("evaluation.request", version=2, aggregate_type=AGGREGATE)
class RequestEvaluation(Payload):
    spec: EvaluationSpec  # `judge` added


@command("evaluation.cancel", aggregate_type=AGGREGATE)
class CancelEvaluation(Payload):
    reason: str | None = Field(default=None, max_length=1000)


@command("evaluation.report_progress", aggregate_type=AGGREGATE)
class ReportEvaluationProgress(Payload):
    items_done: int = Field(ge=0)
    items_total: int = Field(ge=1)


@command("evaluation.complete", aggregate_type=AGGREGATE)
class CompleteEvaluation(Payload):
    results: tuple[MetricResult, ...]
    results_key: str = Field(min_length=1, max_length=1024)
    items: int = Field(ge=0)


@command("evaluation.fail", aggregate_type=AGGREGATE)
class FailEvaluation(Payload):
    reason: str = Field(min_length=1, max_length=4000)


@event("evaluation.requested", aggregate_type=AGGREGATE)
class EvaluationRequestedV1(Payload):
    spec: EvaluationSpec  # without `judge`


@event("evaluation.requested", version=2, aggregate_type=AGGREGATE)
class EvaluationRequested(Payload):
    spec: EvaluationSpec  # `judge` added


def _spec_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "spec": {**data["spec"], "judge": None}}  # runs requested before the judge existed had none


upcaster("evaluation.request", from_version=1)(_spec_v1_to_v2)
upcaster("evaluation.requested", from_version=1)(_spec_v1_to_v2)


@event("evaluation.progressed", aggregate_type=AGGREGATE)
class EvaluationProgressed(Payload):
    items_done: int
    items_total: int


@event("evaluation.completed", aggregate_type=AGGREGATE)
class EvaluationCompleted(Payload):
    results: tuple[MetricResult, ...]
    results_key: str
    items: int


@event("evaluation.failed", aggregate_type=AGGREGATE)
class EvaluationFailed(Payload):
    reason: str


@event("evaluation.cancelled", aggregate_type=AGGREGATE)
class EvaluationCancelled(Payload):
    reason: str | None = None


def item_key(evaluation_id: str, index: int) -> str:
    """Where one item's result is kept (written before progress is reported, read again on resume)."""
    return f"evaluations/{evaluation_id}/items/{index:06d}.json"


def items_prefix(evaluation_id: str) -> str:
    return f"evaluations/{evaluation_id}/items/"


def results_key(evaluation_id: str) -> str:
    """Every item's result, one JSON line each, in item order: what the API offers for download."""
    return f"evaluations/{evaluation_id}/results.jsonl"


# --- dataset rules (pure) -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetProblem:
    """Why a dataset is refused, and where: `loc` as the API's errors name it (`["body", "items", 3, "reference"]`)."""

    loc: tuple[str | int, ...]
    msg: str


def parse_jsonl(data: bytes, *, limit: int = MAX_ITEMS) -> list[DatasetItem] | DatasetProblem:
    """A JSONL dataset: one object per non-blank line with a string `prompt` and an optional string `reference`.
    `loc` names the 1-based line of the first problem (`["body", "file", "line", 3]`)."""
    items: list[DatasetItem] = []
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return DatasetProblem(("body", "file"), f"the dataset is not UTF-8 text: {exc}")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        loc: tuple[str | int, ...] = ("body", "file", "line", number)
        if len(items) >= limit:
            return DatasetProblem(("body", "file"), f"the dataset has more than {limit} items")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            return DatasetProblem(loc, f"line {number} is not JSON: {exc.msg}")
        problem = _item_problem(value, f"line {number}")
        if problem is not None:
            return DatasetProblem((*loc, problem[0]) if problem[0] else loc, problem[1])
        items.append(DatasetItem(prompt=value["prompt"], reference=value.get("reference")))
    if not items:
        return DatasetProblem(("body", "file"), "the dataset has no items")
    return items


def _item_problem(value: object, where: str) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return "", f"{where} is not a JSON object"
    if "prompt" not in value:
        return "prompt", f"{where} has no `prompt`"
    if not isinstance(value["prompt"], str) or not value["prompt"]:
        return "prompt", f"{where}: `prompt` is a non-empty string"
    if len(value["prompt"]) > MAX_TEXT_CHARS:
        return "prompt", f"{where}: `prompt` is longer than {MAX_TEXT_CHARS} characters"
    reference = value.get("reference")
    if reference is not None and (not isinstance(reference, str) or len(reference) > MAX_TEXT_CHARS):
        return "reference", f"{where}: `reference` is a string of at most {MAX_TEXT_CHARS} characters"
    extra = sorted(set(value) - {"prompt", "reference"})
    if extra:
        return extra[0], f"{where}: unknown field {extra[0]!r} (an item has `prompt` and `reference`)"
    return None


def dataset_problems(
    items: tuple[DatasetItem, ...] | list[DatasetItem],
    metrics: tuple[Metric, ...],
    *,
    where: str = "items",
    judge_sees_reference: bool = True,
) -> list[DatasetProblem]:
    """What keeps these items from being scored with these metrics: every item needs a `reference` when a metric
    compares with one (the first item without one is named); the judge does when it is shown the reference."""
    problems: list[DatasetProblem] = []
    needing = [m.value for m in metrics if m in NEEDS_REFERENCE or (m is Metric.JUDGE and judge_sees_reference)]
    if needing:
        for index, item in enumerate(items):
            if item.reference is None or not item.reference:
                problems.append(
                    DatasetProblem(
                        ("body", where, index, "reference"),
                        f"item {index} has no `reference`, which {', '.join(needing)} compare with",
                    )
                )
                break
    if len(items) > MAX_ITEMS:
        problems.append(DatasetProblem(("body", where), f"at most {MAX_ITEMS} items per evaluation"))
    if where == "items" and sum(len(i.prompt) + len(i.reference or "") for i in items) > MAX_INLINE_CHARS:
        problems.append(
            DatasetProblem(
                ("body", where),
                f"inline items hold at most {MAX_INLINE_CHARS} characters: upload a larger dataset as a JSONL file "
                "(POST /api/v1/evaluation/datasets) and name its dataset_id",
            )
        )
    return problems
