"""Projections of the adapter registry's events: adapters and their versions, seed 004's files and
bin, NeMo filesets. Idempotent like the rest: each writes the row the event describes."""

from __future__ import annotations

from typing import Any

from api.readmodel.rows import Rows
from api.readmodel.tables import adapter_versions, adapters, fileset_files, lora_bin, lora_files
from streams import adapters as adapter_events
from streams import filesets as fileset_events
from streams import lora_files as file_events
from streams.envelope import Envelope, Frozen


def _json(value: Frozen | None) -> Any:
    return value.model_dump(mode="json") if value is not None else None


def _creator(event: Envelope, prefix: str = "creator") -> dict[str, str]:
    values = {f"{prefix}_id": event.actor.id, f"{prefix}_name": event.actor.name}
    if prefix == "creator":
        values["creator_type"] = event.actor.type.value
    return values


def _adapter_key(event: Envelope) -> tuple[str, str]:
    workspace, _, name = event.aggregate_id.partition("/")
    return workspace, name


def adapter_requested(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRequested)
    spec = payload.spec
    rows.put(
        adapters,
        {
            "workspace": spec.workspace,
            "name": spec.name,
            "latest_version": payload.version,
            "api": spec.api.value,
            "description": spec.description,
            "enabled": spec.enabled,
            "lora_config": spec.lora_config,
            "version": event.aggregate_version,
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            **_creator(event),
        },
    )
    rows.put(
        adapter_versions,
        {
            "workspace": spec.workspace,
            "name": spec.name,
            "version": payload.version,
            "status": adapter_events.AdapterStatus.REQUESTED.value,
            "spec": _json(spec),
            "bytes_done": 0,
            "correlation_id": event.correlation_id,
            "created_at": event.occurred_at,
            "updated_at": event.occurred_at,
            **_creator(event),
        },
    )


def _update_version(rows: Rows, event: Envelope, version: int, **values: Any) -> None:
    key = _adapter_key(event)
    rows.update(adapter_versions, (*key, version), {"updated_at": event.occurred_at, **values})
    rows.update(adapters, key, {"updated_at": event.occurred_at, "version": event.aggregate_version})


def adapter_progressed(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterProgressed)
    _update_version(
        rows,
        event,
        payload.version,
        status=payload.status.value,
        bytes_done=payload.progress.bytes_done,
        bytes_total=payload.progress.bytes_total,
    )


def adapter_stored(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterStored)
    _update_version(
        rows,
        event,
        payload.version,
        status=adapter_events.AdapterStatus.READY.value,
        artifact=_json(payload.artifact),
        analysis=_json(payload.analysis),
        provenance=_json(payload.provenance),
        bytes_done=payload.artifact.total_size,
        bytes_total=payload.artifact.total_size,
    )


def adapter_rejected(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRejected)
    _update_version(
        rows,
        event,
        payload.version,
        status=adapter_events.AdapterStatus.REJECTED.value,
        reason=payload.reason,
        rejected_part=payload.part.value,
        provenance=_json(payload.provenance),
    )


def adapter_updated(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterUpdated)
    rows.update(
        adapters,
        _adapter_key(event),
        {
            "updated_at": event.occurred_at,
            "version": event.aggregate_version,
            **payload.changes.model_dump(exclude_none=True),
        },
    )


def adapter_deleted(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterDeleted)
    # Versions stay: their events and objects are history. Only the name is gone.
    rows.delete(adapters, (payload.workspace, payload.name))


def lora_file_reserved(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileReserved)
    rows.put(
        lora_files,
        {
            "partial_path": payload.partial_path,
            "entity_type": payload.entity_type.value,
            "filename": payload.filename,
            "original_filename": payload.original_filename,
            "status": "validating",
            "file_size": payload.size,
            "sha256": payload.sha256,
            "correlation_id": event.correlation_id,
            "uploaded_at": event.occurred_at,
            "updated_at": event.occurred_at,
            **_creator(event, "uploader"),
            "team": event.actor.team,
        },
    )


def lora_file_stored(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileStored)
    rows.update(
        lora_files,
        (payload.partial_path,),
        {
            "status": "stored",
            "blob_key": payload.file.key,
            "analysis": _json(payload.analysis),
            "updated_at": event.occurred_at,
        },
    )


def lora_file_rejected(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRejected)
    rows.update(
        lora_files,
        (payload.partial_path,),
        {"status": "rejected", "reason": payload.reason, "updated_at": event.occurred_at},
    )


def lora_file_binned(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileBinned)
    row = rows.get(lora_files, (payload.partial_path,))
    rows.delete(lora_bin, (payload.bin_path,))
    if row is not None:
        rows.put(
            lora_bin,
            {
                "bin_path": payload.bin_path,
                "partial_path": payload.partial_path,
                "entity_type": row["entity_type"],
                "filename": row["filename"],
                "file_size": row["file_size"],
                "sha256": row["sha256"],
                "blob_key": row["blob_key"],
                "analysis": row["analysis"],
                "uploaded_at": row["uploaded_at"],
                "binned_at": event.occurred_at,
                "correlation_id": event.correlation_id,
                "team": row["team"],
            },
        )
    rows.delete(lora_files, (payload.partial_path,))


def lora_file_restored(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRestored)
    row = rows.get(lora_bin, (payload.bin_path,))
    if row is None:
        return  # replayed after a later event removed it: nothing to move
    rows.put(
        lora_files,
        {
            "partial_path": payload.partial_path,
            "entity_type": row["entity_type"],
            "filename": row["filename"],
            "original_filename": row["filename"],
            "status": "stored",
            "file_size": row["file_size"],
            "sha256": row["sha256"],
            "blob_key": row["blob_key"],
            "analysis": row["analysis"],
            "correlation_id": event.correlation_id,
            "uploaded_at": row["uploaded_at"],
            "updated_at": event.occurred_at,
            **_creator(event, "uploader"),
            "team": row["team"],  # the team that uploaded it, not the admin who restored it
        },
    )
    rows.delete(lora_bin, (payload.bin_path,))


def fileset_file_added(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileAdded)
    rows.put(
        fileset_files,
        {
            "workspace": payload.workspace,
            "fileset": payload.fileset,
            "path": payload.path,
            "status": "staged",
            "file_size": payload.size,
            "sha256": payload.sha256,
            "correlation_id": event.correlation_id,
            "updated_at": event.occurred_at,
        },
    )


def fileset_file_stored(rows: Rows, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileStored)
    workspace, _, fileset = event.aggregate_id.partition("/")
    rows.update(
        fileset_files,
        (workspace, fileset, payload.file.path),
        {"status": "stored", "blob_key": payload.file.key, "updated_at": event.occurred_at},
    )


REGISTRY_PROJECTIONS = {
    "adapter.requested": adapter_requested,
    "adapter.progressed": adapter_progressed,
    "adapter.stored": adapter_stored,
    "adapter.rejected": adapter_rejected,
    "adapter.updated": adapter_updated,
    "adapter.deleted": adapter_deleted,
    "lora_file.reserved": lora_file_reserved,
    "lora_file.stored": lora_file_stored,
    "lora_file.rejected": lora_file_rejected,
    "lora_file.binned": lora_file_binned,
    "lora_file.restored": lora_file_restored,
    "fileset.file_added": fileset_file_added,
    "fileset.file_stored": fileset_file_stored,
}
