"""Decisions for one entity-type directory of seed 004's file API: names, the bin, restores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from agents.aggregate import Aggregate, Rejected
from streams.artifacts import Analysis, StoredFile
from streams.envelope import Envelope, Payload
from streams.lora_files import (
    AGGREGATE,
    CompleteLoraFile,
    DeleteLoraFile,
    FailLoraFile,
    LoraFileBinned,
    LoraFileRejected,
    LoraFileReserved,
    LoraFileRestored,
    LoraFileStored,
    RestoreLoraFile,
    UploadLoraFile,
)
from streams.naming import EntityType, versioned_name
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class LoraFile:
    partial_path: str
    filename: str
    original_filename: str
    staged_key: str
    size: int
    sha256: str
    uploaded_at: datetime
    stored: bool = False  # False while the artifacts agent validates it
    file: StoredFile | None = None
    analysis: Analysis | None = None
    requested_by: str = ""  # the id of the `lora_file.reserved` event: the cause of its artifacts job


@dataclass(frozen=True)
class LoraDir:
    entity_type: EntityType
    # Files by partial path, reserved or stored: every name here is taken.
    files: dict[str, LoraFile] = field(default_factory=dict)
    # Binned files by bin path, oldest first.
    binned: dict[str, LoraFile] = field(default_factory=dict)


def _split(partial_path: str) -> tuple[str, str]:
    entity, _, filename = partial_path.partition("/")
    return entity, filename


def decide(current: LoraDir | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    files = current.files if current is not None else {}
    if isinstance(payload, UploadLoraFile):
        entity = payload.entity_type
        taken = [f.filename for f in files.values()]
        filename = versioned_name(payload.filename, taken)
        if filename != payload.filename and not payload.use_safe_filename:
            raise Rejected(
                RejectionCode.CONFLICT,
                f"{entity.value}/{payload.filename} already exists; send use_safe_filename=true to get a new name",
                field="file",
            )
        return [
            LoraFileReserved(
                entity_type=entity,
                partial_path=f"{entity.value}/{filename}",
                filename=filename,
                original_filename=payload.filename,
                staged_key=payload.staged_key,
                size=payload.size,
                sha256=payload.sha256,
            )
        ]
    if isinstance(payload, CompleteLoraFile | FailLoraFile):
        reserved = files.get(payload.partial_path)
        if reserved is None or reserved.stored:
            return []  # a repeated report: the file was stored or refused already
        if isinstance(payload, CompleteLoraFile):
            return [LoraFileStored(partial_path=payload.partial_path, file=payload.file, analysis=payload.analysis)]
        return [LoraFileRejected(partial_path=payload.partial_path, reason=payload.reason)]
    if isinstance(payload, DeleteLoraFile):
        found = files.get(payload.partial_path)
        if found is None:
            raise Rejected(RejectionCode.NOT_FOUND, f"{payload.partial_path} does not exist", field="partial_path")
        if not found.stored:
            raise Rejected(RejectionCode.CONFLICT, f"{payload.partial_path} is still being validated", "partial_path")
        assert current is not None
        folder, filename = _split(payload.partial_path)
        taken_in_bin = [_split(p)[1] for p in current.binned]
        return [
            LoraFileBinned(
                partial_path=payload.partial_path, bin_path=f"{folder}/{versioned_name(filename, taken_in_bin)}"
            )
        ]
    if isinstance(payload, RestoreLoraFile):
        candidates = [
            b for b, f in (current.binned if current else {}).items() if f.partial_path == payload.partial_path
        ]
        if not candidates:
            raise Rejected(RejectionCode.NOT_FOUND, f"{payload.partial_path} is not in the bin", field="partial_path")
        if payload.partial_path in files:
            raise Rejected(
                RejectionCode.CONFLICT,
                f"{payload.partial_path} exists again; delete it before restoring the binned copy",
                field="partial_path",
            )
        return [LoraFileRestored(partial_path=payload.partial_path, bin_path=candidates[-1])]
    raise Rejected(RejectionCode.INVALID, f"LoRA directories do not handle {command.type}")


def evolve(current: LoraDir | None, event: Envelope) -> LoraDir | None:
    payload = event.payload
    if isinstance(payload, LoraFileReserved):
        state = current or LoraDir(payload.entity_type)
        reserved = LoraFile(
            partial_path=payload.partial_path,
            filename=payload.filename,
            original_filename=payload.original_filename,
            staged_key=payload.staged_key,
            size=payload.size,
            sha256=payload.sha256,
            uploaded_at=event.occurred_at,
            requested_by=event.id,
        )
        return replace(state, files={**state.files, payload.partial_path: reserved})
    if current is None:
        return None
    if isinstance(payload, LoraFileStored):
        found = current.files.get(payload.partial_path)
        if found is None:
            return current
        stored = replace(found, stored=True, file=payload.file, analysis=payload.analysis)
        return replace(current, files={**current.files, payload.partial_path: stored})
    if isinstance(payload, LoraFileRejected):
        return replace(current, files={p: f for p, f in current.files.items() if p != payload.partial_path})
    if isinstance(payload, LoraFileBinned):
        found = current.files.get(payload.partial_path)
        if found is None:
            return current
        files = {p: f for p, f in current.files.items() if p != payload.partial_path}
        return replace(current, files=files, binned={**current.binned, payload.bin_path: found})
    if isinstance(payload, LoraFileRestored):
        found = current.binned.get(payload.bin_path)
        if found is None:
            return current
        binned = {b: f for b, f in current.binned.items() if b != payload.bin_path}
        return replace(current, files={**current.files, payload.partial_path: found}, binned=binned)
    return current


LORA_DIRS = Aggregate(AGGREGATE, decide, evolve)
