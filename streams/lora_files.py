"""The admin LoRA file API of seed 004: one aggregate per entity-type directory (`models/loras/{entity_type}`).

The directory is the aggregate because file names are unique within it: its agent hands out
`name_v2.safetensors` and friends, so two uploads of one name at the same time never get the same path.
A name is reserved first (`lora_file.reserved`), then the artifacts agent validates the staged bytes
and stores them content-addressed (`lora_file.stored`), or refuses them (`lora_file.rejected`, which
frees the name). Deleting moves a file to the bin; restoring brings the newest binned copy back.
"""

from __future__ import annotations

from pydantic import Field

from streams.artifacts import SHA256_HEX, Analysis, StoredFile
from streams.envelope import Payload
from streams.naming import EntityType
from streams.registry import command, event

AGGREGATE = "lora_dir"

# The paths the seed's answers show; objects are stored once by content (the key is on `lora_file.stored`).
FILE_ROOT = "/data/models/loras"
BIN_ROOT = "/data/bin/models/loras"


def full_path(partial_path: str) -> str:
    return f"{FILE_ROOT}/{partial_path}"


def bin_path(partial_path: str) -> str:
    return f"{BIN_ROOT}/{partial_path}"


@command("lora_file.upload", aggregate_type=AGGREGATE)
class UploadLoraFile(Payload):
    entity_type: EntityType
    filename: str = Field(min_length=1, max_length=255)  # already made safe by the API
    use_safe_filename: bool = True
    staged_key: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_HEX)


@event("lora_file.reserved", aggregate_type=AGGREGATE)
class LoraFileReserved(Payload):
    entity_type: EntityType
    partial_path: str  # {entity_type}/{filename}
    filename: str  # as handed out, maybe `_vN`
    original_filename: str
    staged_key: str
    size: int
    sha256: str


@command("lora_file.complete", aggregate_type=AGGREGATE)
class CompleteLoraFile(Payload):
    partial_path: str
    file: StoredFile
    analysis: Analysis


@event("lora_file.stored", aggregate_type=AGGREGATE)
class LoraFileStored(Payload):
    partial_path: str
    file: StoredFile
    analysis: Analysis


@command("lora_file.fail", aggregate_type=AGGREGATE)
class FailLoraFile(Payload):
    partial_path: str
    reason: str = Field(max_length=4000)


@event("lora_file.rejected", aggregate_type=AGGREGATE)
class LoraFileRejected(Payload):
    partial_path: str
    reason: str


@command("lora_file.delete", aggregate_type=AGGREGATE)
class DeleteLoraFile(Payload):
    partial_path: str = Field(min_length=1, max_length=1024)


@event("lora_file.binned", aggregate_type=AGGREGATE)
class LoraFileBinned(Payload):
    partial_path: str
    bin_path: str  # unique in the bin: a second delete of the same path gets `_v2`


@command("lora_file.restore", aggregate_type=AGGREGATE)
class RestoreLoraFile(Payload):
    partial_path: str = Field(min_length=1, max_length=1024)


@event("lora_file.restored", aggregate_type=AGGREGATE)
class LoraFileRestored(Payload):
    partial_path: str
    bin_path: str
