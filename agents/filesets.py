"""Fileset decisions: a file may be added (or replaced) any time; a stored report lands once per staging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from immutables import Map

from agents.aggregate import Aggregate, Rejected
from agents.frozen_map import FrozenMap
from streams.artifacts import StoredFile
from streams.envelope import Envelope, Payload
from streams.filesets import AGGREGATE, AddFilesetFile, FilesetFileAdded, FilesetFileStored, StoreFilesetFile
from streams.names import name_problem
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class FilesetFile:
    path: str
    staged_key: str
    size: int
    sha256: str
    stored: StoredFile | None = None
    requested_by: str = ""  # the id of the `fileset.file_added` event: the cause of its artifacts job


@dataclass(frozen=True)
class Fileset:
    workspace: str
    name: str
    files: FrozenMap[str, FilesetFile] = field(default_factory=Map)  # persistent: O(log n) per event

    @property
    def complete(self) -> bool:
        return bool(self.files) and all(f.stored is not None for f in self.files.values())


def decide(current: Fileset | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, AddFilesetFile):
        if problem := name_problem(payload.fileset):
            raise Rejected(RejectionCode.INVALID, problem, field="fileset")
        return [FilesetFileAdded(**payload.model_dump())]
    if isinstance(payload, StoreFilesetFile):
        pending = current.files.get(payload.file.path) if current is not None else None
        if pending is None or pending.stored is not None or pending.sha256 != payload.file.sha256:
            return []  # repeated, or the path was replaced by a newer upload meanwhile
        return [FilesetFileStored(file=payload.file)]
    raise Rejected(RejectionCode.INVALID, f"filesets do not handle {command.type}")


def evolve(current: Fileset | None, event: Envelope) -> Fileset | None:
    payload = event.payload
    if isinstance(payload, FilesetFileAdded):
        state = current or Fileset(payload.workspace, payload.fileset)
        added = FilesetFile(payload.path, payload.staged_key, payload.size, payload.sha256, requested_by=event.id)
        return replace(state, files=state.files.set(payload.path, added))
    if isinstance(payload, FilesetFileStored) and current is not None:
        found = current.files.get(payload.file.path)
        if found is None:
            return current
        return replace(current, files=current.files.set(payload.file.path, replace(found, stored=payload.file)))
    return current


FILESETS = Aggregate(AGGREGATE, decide, evolve, Fileset)
