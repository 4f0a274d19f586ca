"""How evaluation events change the read model: one row per run (streams.evaluations)."""

from __future__ import annotations

from typing import Any

from api.readmodel.rows import Rows
from api.readmodel.tables import evaluations
from streams.envelope import Envelope
from streams.evaluations import (
    EvaluationCancelled,
    EvaluationCompleted,
    EvaluationFailed,
    EvaluationProgressed,
    EvaluationRequested,
    EvaluationStatus,
)


def _requested(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, EvaluationRequested)
    rows.put(
        evaluations,
        {
            "evaluation_id": event.aggregate_id,
            "status": EvaluationStatus.RUNNING.value,
            "spec": payload.spec.model_dump(mode="json"),
            "items_done": 0,
            "items_total": payload.spec.item_count,
            "version": event.aggregate_version,
            "correlation_id": event.correlation_id,
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            "creator_id": event.actor.id,
            "creator_name": event.actor.name,
        },
    )


def _changed(rows: Rows, event: Envelope, **values: Any) -> None:
    rows.update(
        evaluations,
        (event.aggregate_id,),
        {**values, "version": event.aggregate_version, "updated_at": event.occurred_at},
    )


def _progressed(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, EvaluationProgressed)
    _changed(rows, event, items_done=payload.items_done)


def _completed(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, EvaluationCompleted)
    _changed(
        rows,
        event,
        status=EvaluationStatus.COMPLETED.value,
        items_done=payload.items,
        results=[r.model_dump(mode="json") for r in payload.results],
        results_key=payload.results_key,
    )


def _failed(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, EvaluationFailed)
    _changed(rows, event, status=EvaluationStatus.FAILED.value, reason=payload.reason)


def _cancelled(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, EvaluationCancelled)
    _changed(rows, event, status=EvaluationStatus.CANCELLED.value, reason=payload.reason)


EVALUATION_PROJECTIONS = {
    "evaluation.requested": _requested,
    "evaluation.progressed": _progressed,
    "evaluation.completed": _completed,
    "evaluation.failed": _failed,
    "evaluation.cancelled": _cancelled,
}
