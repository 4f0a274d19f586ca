"""Evaluation decisions: a run is requested once, then runs until it completes, fails or is cancelled.

Reports of the evaluation agent (progress, the outcome) that come after the run ended (a cancel won the race, or a
re-run after a crash repeats them) change nothing: no event, no rejection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from agents.aggregate import Aggregate, Rejected
from streams.envelope import Envelope, Payload
from streams.evaluations import (
    AGGREGATE,
    CancelEvaluation,
    CompleteEvaluation,
    EvaluationCancelled,
    EvaluationCompleted,
    EvaluationFailed,
    EvaluationProgressed,
    EvaluationRequested,
    EvaluationSpec,
    EvaluationStatus,
    FailEvaluation,
    Metric,
    ReportEvaluationProgress,
    RequestEvaluation,
    dataset_problems,
)
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class Evaluation:
    spec: EvaluationSpec
    status: EvaluationStatus
    requested_at: datetime
    requested_by: str  # the id of the `evaluation.requested` event: the cause of the agent's reports
    items_done: int = 0

    @property
    def running(self) -> bool:
        return self.status is EvaluationStatus.RUNNING


def decide(current: Evaluation | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, RequestEvaluation):
        if current is not None:
            raise Rejected(RejectionCode.CONFLICT, f"evaluation {command.aggregate_id} exists already", field="id")
        spec = payload.spec
        if (Metric.JUDGE in spec.metrics) != (spec.judge is not None):
            raise Rejected(
                RejectionCode.INVALID, "the judge metric is scored by a `judge`, and only then", field="judge"
            )
        if spec.items is None and spec.dataset_key is None:
            raise Rejected(RejectionCode.INVALID, "the dataset has no items", field="items")
        if spec.items is not None:
            sees_reference = spec.judge is None or spec.judge.reference
            if problems := dataset_problems(spec.items, spec.metrics, judge_sees_reference=sees_reference):
                raise Rejected(RejectionCode.INVALID, problems[0].msg, field="items")
            if len(spec.items) != spec.item_count:
                raise Rejected(RejectionCode.INVALID, "item_count is not the number of items", field="items")
        return [EvaluationRequested(spec=spec)]
    if isinstance(payload, CancelEvaluation):
        if current is None:
            raise Rejected(RejectionCode.NOT_FOUND, f"evaluation {command.aggregate_id} does not exist", field="id")
        if not current.running:
            raise Rejected(
                RejectionCode.CONFLICT, f"evaluation {command.aggregate_id} is {current.status.value} already"
            )
        return [EvaluationCancelled(reason=payload.reason)]
    if isinstance(payload, ReportEvaluationProgress | CompleteEvaluation | FailEvaluation):
        if current is None or not current.running:
            return []
        if isinstance(payload, ReportEvaluationProgress):
            if payload.items_done <= current.items_done:
                return []
            return [EvaluationProgressed(items_done=payload.items_done, items_total=payload.items_total)]
        if isinstance(payload, CompleteEvaluation):
            return [EvaluationCompleted(results=payload.results, results_key=payload.results_key, items=payload.items)]
        return [EvaluationFailed(reason=payload.reason)]
    raise Rejected(RejectionCode.INVALID, f"evaluations do not handle {command.type}")


def evolve(current: Evaluation | None, event: Envelope) -> Evaluation | None:
    payload = event.payload
    if isinstance(payload, EvaluationRequested):
        return Evaluation(payload.spec, EvaluationStatus.RUNNING, event.occurred_at, event.id)
    if current is None:
        return None
    if isinstance(payload, EvaluationProgressed):
        return replace(current, items_done=payload.items_done)
    if isinstance(payload, EvaluationCompleted):
        return replace(current, status=EvaluationStatus.COMPLETED, items_done=payload.items)
    if isinstance(payload, EvaluationFailed):
        return replace(current, status=EvaluationStatus.FAILED)
    if isinstance(payload, EvaluationCancelled):
        return replace(current, status=EvaluationStatus.CANCELLED)
    return current


EVALUATIONS = Aggregate(AGGREGATE, decide, evolve, Evaluation)
