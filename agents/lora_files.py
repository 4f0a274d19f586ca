"""Decisions for one entity-type directory of seed 004's file API: names, the bin, restores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from immutables import Map

from agents.aggregate import Aggregate, Rejected
from agents.frozen_map import FrozenMap
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
class BinnedFile:
    file: LoraFile
    seq: int  # the order files went to the bin in


@dataclass(frozen=True)
class LoraDir:
    """Persistent maps (agents.frozen_map), so that one event costs O(log n), not a copy of every file."""

    entity_type: EntityType
    # Files by partial path, reserved or stored: every name here is taken.
    files: FrozenMap[str, LoraFile] = field(default_factory=Map)
    # Binned files by bin path; `seq` orders them.
    binned: FrozenMap[str, BinnedFile] = field(default_factory=Map)
    next_bin_seq: int = 1


def _split(partial_path: str) -> tuple[str, str]:
    entity, _, filename = partial_path.partition("/")
    return entity, filename


def decide(current: LoraDir | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    files: Map[str, LoraFile] = current.files if current is not None else Map()
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
        binned = current.binned if current is not None else Map()
        candidates = sorted(
            (b for b, f in binned.items() if f.file.partial_path == payload.partial_path), key=lambda b: binned[b].seq
        )
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
        return replace(state, files=state.files.set(payload.partial_path, reserved))
    if current is None:
        return None
    if isinstance(payload, LoraFileStored):
        found = current.files.get(payload.partial_path)
        if found is None:
            return current
        stored = replace(found, stored=True, file=payload.file, analysis=payload.analysis)
        return replace(current, files=current.files.set(payload.partial_path, stored))
    if isinstance(payload, LoraFileRejected):
        if payload.partial_path not in current.files:
            return current
        return replace(current, files=current.files.delete(payload.partial_path))
    if isinstance(payload, LoraFileBinned):
        found = current.files.get(payload.partial_path)
        if found is None:
            return current
        return replace(
            current,
            files=current.files.delete(payload.partial_path),
            binned=current.binned.set(payload.bin_path, BinnedFile(found, current.next_bin_seq)),
            next_bin_seq=current.next_bin_seq + 1,
        )
    if isinstance(payload, LoraFileRestored):
        binned = current.binned.get(payload.bin_path)
        if binned is None:
            return current
        return replace(
            current,
            files=current.files.set(payload.partial_path, binned.file),
            binned=current.binned.delete(payload.bin_path),
        )
    return current


LORA_DIRS = Aggregate(AGGREGATE, decide, evolve, LoraDir)
