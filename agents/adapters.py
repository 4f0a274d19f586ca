"""Adapter decisions: who gets a name, which version comes next, and which reports move a version on."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agents.aggregate import Aggregate, Rejected
from streams.adapters import (
    AGGREGATE,
    TERMINAL_STATUSES,
    AdapterApi,
    AdapterChanges,
    AdapterDeleted,
    AdapterProgressed,
    AdapterRejected,
    AdapterRequested,
    AdapterSpec,
    AdapterStatus,
    AdapterStored,
    AdapterUpdated,
    CompleteAdapter,
    DeleteAdapter,
    FailAdapter,
    RegisterAdapter,
    ReportAdapterProgress,
    UpdateAdapter,
)
from streams.artifacts import Analysis, Artifact, Progress, Provenance
from streams.envelope import Envelope, Payload
from streams.names import name_problem
from streams.outcomes import RejectionCode

# Empower names default to the Hugging Face repo id, so they may hold one slash ("org/repo").
_LOOSE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)?$")
LOOSE_NAME_MAX_LENGTH = 255


@dataclass(frozen=True)
class AdapterVersion:
    version: int
    spec: AdapterSpec
    status: AdapterStatus
    created_at: datetime
    updated_at: datetime
    progress: Progress = field(default_factory=Progress)
    reason: str | None = None
    artifact: Artifact | None = None
    analysis: Analysis | None = None
    provenance: Provenance | None = None
    requested_by: str = ""  # the id of the `adapter.requested` event: the cause of its artifacts job

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class Adapter:
    workspace: str
    name: str
    versions: tuple[AdapterVersion, ...] = ()
    deleted: bool = False
    # The latest version's NeMo fields as updated since (description, enabled, lora_config).
    changes: AdapterChanges = field(default_factory=AdapterChanges)

    @property
    def latest(self) -> AdapterVersion | None:
        return self.versions[-1] if self.versions else None

    def version(self, number: int) -> AdapterVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def live(self) -> bool:
        return bool(self.versions) and not self.deleted

    @property
    def holds_name(self) -> bool:
        """A refused create leaves nothing behind (NeMo answers it with 422), so only a live adapter whose
        latest version is not rejected keeps its name from a create that must not add a version."""
        latest = self.latest
        return self.live and latest is not None and latest.status is not AdapterStatus.REJECTED


def adapter_name_problem(name: str, api: AdapterApi) -> str | None:
    if api is AdapterApi.NEMO:
        return name_problem(name)
    if not name:
        return "name must not be empty"
    if len(name) > LOOSE_NAME_MAX_LENGTH:
        return f"name must be at most {LOOSE_NAME_MAX_LENGTH} characters"
    if not _LOOSE_NAME.match(name):
        return "name may hold letters, digits, '_', '-', '.' and at most one '/'"
    return None


def decide(current: Adapter | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, RegisterAdapter):
        return _register(current, payload)
    if isinstance(payload, ReportAdapterProgress | CompleteAdapter | FailAdapter):
        return _report(current, payload)
    if isinstance(payload, UpdateAdapter):
        _require_live(current, payload.workspace, payload.name)
        return [AdapterUpdated(changes=payload.changes)]
    if isinstance(payload, DeleteAdapter):
        _require_live(current, payload.workspace, payload.name)
        return [AdapterDeleted(workspace=payload.workspace, name=payload.name)]
    raise Rejected(RejectionCode.INVALID, f"adapters do not handle {command.type}")


def _register(current: Adapter | None, command: RegisterAdapter) -> Sequence[Payload]:
    spec = command.spec
    if problem := adapter_name_problem(spec.name, spec.api):
        raise Rejected(RejectionCode.INVALID, problem, field="name")
    if current is not None and current.holds_name and not command.new_version_if_exists:
        raise Rejected(
            RejectionCode.CONFLICT, f"adapter {spec.name!r} already exists in workspace {spec.workspace!r}", "name"
        )
    # Numbers keep counting across a delete, so an old version's objects and events are never reused.
    number = current.versions[-1].version + 1 if current is not None and current.versions else 1
    return [AdapterRequested(version=number, spec=spec)]


def _report(
    current: Adapter | None, report: ReportAdapterProgress | CompleteAdapter | FailAdapter
) -> Sequence[Payload]:
    version = current.version(report.version) if current is not None else None
    if version is None:
        raise Rejected(RejectionCode.NOT_FOUND, f"version {report.version} was never requested", field="version")
    if version.finished:
        return []  # a late or repeated report (an artifacts job that ran twice): nothing changes
    if isinstance(report, ReportAdapterProgress):
        return [AdapterProgressed(version=report.version, status=report.status, progress=report.progress)]
    if isinstance(report, CompleteAdapter):
        return [
            AdapterStored(
                version=report.version,
                artifact=report.artifact,
                analysis=report.analysis,
                provenance=report.provenance,
            )
        ]
    return [
        AdapterRejected(version=report.version, reason=report.reason, part=report.part, provenance=report.provenance)
    ]


def _require_live(current: Adapter | None, workspace: str, name: str) -> Adapter:
    if current is None or not current.live:
        raise Rejected(RejectionCode.NOT_FOUND, f"adapter {name!r} does not exist in workspace {workspace!r}", "name")
    return current


def evolve(current: Adapter | None, event: Envelope) -> Adapter | None:
    payload = event.payload
    at = event.occurred_at
    if isinstance(payload, AdapterRequested):
        spec = payload.spec
        fresh = AdapterVersion(
            payload.version, spec, AdapterStatus.REQUESTED, created_at=at, updated_at=at, requested_by=event.id
        )
        if current is None or current.deleted:
            return Adapter(spec.workspace, spec.name, versions=(*(current.versions if current else ()), fresh))
        return replace(current, versions=(*current.versions, fresh), changes=AdapterChanges())
    if current is None:
        return None
    if isinstance(payload, AdapterProgressed):
        return _with_version(current, payload.version, status=payload.status, progress=payload.progress, updated_at=at)
    if isinstance(payload, AdapterStored):
        return _with_version(
            current,
            payload.version,
            status=AdapterStatus.READY,
            artifact=payload.artifact,
            analysis=payload.analysis,
            provenance=payload.provenance,
            updated_at=at,
        )
    if isinstance(payload, AdapterRejected):
        return _with_version(
            current,
            payload.version,
            status=AdapterStatus.REJECTED,
            reason=payload.reason,
            provenance=payload.provenance,
            updated_at=at,
        )
    if isinstance(payload, AdapterUpdated):
        merged = current.changes.model_copy(update=payload.changes.model_dump(exclude_none=True))
        return replace(current, changes=merged)
    if isinstance(payload, AdapterDeleted):
        return replace(current, deleted=True)
    return current


def _with_version(current: Adapter, number: int, **changes: object) -> Adapter:
    versions = tuple(replace(v, **changes) if v.version == number else v for v in current.versions)  # type: ignore[arg-type]
    return replace(current, versions=versions)


ADAPTERS = Aggregate(AGGREGATE, decide, evolve, Adapter)
