"""NeMo filesets (`{workspace}/{fileset_name}`): named groups of uploaded files an adapter can point at.

Files are staged by the API, then stored content-addressed by the artifacts agent. They are not
validated on their own (a fileset holds `adapter_config.json` beside the weights): an adapter created
from the fileset is validated as a whole.
"""

from __future__ import annotations

from pydantic import Field

from streams.artifacts import SHA256_HEX, StoredFile
from streams.envelope import Payload
from streams.registry import command, event

AGGREGATE = "fileset"


def fileset_id(workspace: str, name: str) -> str:
    return f"{workspace}/{name}"


@command("fileset.add_file", aggregate_type=AGGREGATE)
class AddFilesetFile(Payload):
    workspace: str
    fileset: str
    path: str = Field(min_length=1, max_length=255)
    staged_key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_HEX)


@event("fileset.file_added", aggregate_type=AGGREGATE)
class FilesetFileAdded(Payload):
    workspace: str
    fileset: str
    path: str
    staged_key: str
    size: int
    sha256: str


@command("fileset.store_file", aggregate_type=AGGREGATE)
class StoreFilesetFile(Payload):
    file: StoredFile


@event("fileset.file_stored", aggregate_type=AGGREGATE)
class FilesetFileStored(Payload):
    file: StoredFile
