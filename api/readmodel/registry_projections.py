"""Projections of the adapter registry's events: adapters and their versions, seed 004's files and
bin, NeMo filesets. Idempotent like the rest: each writes the row the event describes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update

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


def _split_adapter_id(aggregate_id: str) -> tuple[str, str]:
    workspace, _, name = aggregate_id.partition("/")
    return workspace, name


# Built once: the hot projections run per event on replay, and a statement built per event costs more than running it.
_ADAPTER_KEY = (adapters.c.workspace == bindparam("k_workspace"), adapters.c.name == bindparam("k_name"))
_VERSION_KEY = (
    adapter_versions.c.workspace == bindparam("k_workspace"),
    adapter_versions.c.name == bindparam("k_name"),
    adapter_versions.c.version == bindparam("k_version"),
)
_DELETE_ADAPTER = delete(adapters).where(*_ADAPTER_KEY)
_INSERT_ADAPTER = insert(adapters)
_UPDATE_ADAPTER = update(adapters).where(*_ADAPTER_KEY)
_DELETE_VERSION = delete(adapter_versions).where(*_VERSION_KEY)
_INSERT_VERSION = insert(adapter_versions)
_UPDATE_VERSION = update(adapter_versions).where(*_VERSION_KEY)
_DELETE_FILE = delete(lora_files).where(lora_files.c.partial_path == bindparam("k_partial_path"))
_INSERT_FILE = insert(lora_files)
_UPDATE_FILE = update(lora_files).where(lora_files.c.partial_path == bindparam("k_partial_path"))


def adapter_requested(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRequested)
    spec = payload.spec
    key = {"k_workspace": spec.workspace, "k_name": spec.name}
    conn.execute(_DELETE_ADAPTER, key)
    conn.execute(
        _INSERT_ADAPTER,
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
    conn.execute(_DELETE_VERSION, {**key, "k_version": payload.version})
    conn.execute(
        _INSERT_VERSION,
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


def _update_version(conn: Connection, event: Envelope, version: int, **values: Any) -> None:
    workspace, name = _split_adapter_id(event.aggregate_id)
    key = {"k_workspace": workspace, "k_name": name}
    conn.execute(_UPDATE_VERSION, {**key, "k_version": version, "updated_at": event.occurred_at, **values})
    conn.execute(_UPDATE_ADAPTER, {**key, "updated_at": event.occurred_at, "version": event.aggregate_version})


def adapter_progressed(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterProgressed)
    _update_version(
        conn,
        event,
        payload.version,
        status=payload.status.value,
        bytes_done=payload.progress.bytes_done,
        bytes_total=payload.progress.bytes_total,
    )


def adapter_stored(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterStored)
    _update_version(
        conn,
        event,
        payload.version,
        status=adapter_events.AdapterStatus.READY.value,
        artifact=_json(payload.artifact),
        analysis=_json(payload.analysis),
        provenance=_json(payload.provenance),
        bytes_done=payload.artifact.total_size,
        bytes_total=payload.artifact.total_size,
    )


def adapter_rejected(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRejected)
    _update_version(
        conn,
        event,
        payload.version,
        status=adapter_events.AdapterStatus.REJECTED.value,
        reason=payload.reason,
        rejected_part=payload.part.value,
        provenance=_json(payload.provenance),
    )


def adapter_updated(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterUpdated)
    workspace, name = _split_adapter_id(event.aggregate_id)
    conn.execute(
        update(adapters)
        .where(adapters.c.workspace == workspace, adapters.c.name == name)
        .values(
            updated_at=event.occurred_at,
            version=event.aggregate_version,
            **payload.changes.model_dump(exclude_none=True),
        )
    )


def adapter_deleted(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterDeleted)
    # Versions stay: their events and objects are history. Only the name is gone.
    conn.execute(delete(adapters).where(adapters.c.workspace == payload.workspace, adapters.c.name == payload.name))


def lora_file_reserved(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileReserved)
    conn.execute(_DELETE_FILE, {"k_partial_path": payload.partial_path})
    conn.execute(
        _INSERT_FILE,
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


def lora_file_stored(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileStored)
    values = {"status": "stored", "blob_key": payload.file.key, "analysis": _json(payload.analysis)}
    conn.execute(_UPDATE_FILE, {"k_partial_path": payload.partial_path, **values, "updated_at": event.occurred_at})


def lora_file_rejected(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRejected)
    conn.execute(
        update(lora_files)
        .where(lora_files.c.partial_path == payload.partial_path)
        .values(status="rejected", reason=payload.reason, updated_at=event.occurred_at)
    )


def lora_file_binned(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileBinned)
    row = (conn.execute(select(lora_files).where(lora_files.c.partial_path == payload.partial_path))).mappings().first()
    conn.execute(delete(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))
    if row is not None:
        conn.execute(
            insert(lora_bin).values(
                bin_path=payload.bin_path,
                partial_path=payload.partial_path,
                entity_type=row["entity_type"],
                filename=row["filename"],
                file_size=row["file_size"],
                sha256=row["sha256"],
                blob_key=row["blob_key"],
                analysis=row["analysis"],
                uploaded_at=row["uploaded_at"],
                binned_at=event.occurred_at,
                correlation_id=event.correlation_id,
                team=row["team"],
            )
        )
    conn.execute(delete(lora_files).where(lora_files.c.partial_path == payload.partial_path))


def lora_file_restored(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRestored)
    row = (conn.execute(select(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))).mappings().first()
    if row is None:
        return  # replayed after a later event removed it: nothing to move
    conn.execute(delete(lora_files).where(lora_files.c.partial_path == payload.partial_path))
    conn.execute(
        insert(lora_files).values(
            partial_path=payload.partial_path,
            entity_type=row["entity_type"],
            filename=row["filename"],
            original_filename=row["filename"],
            status="stored",
            file_size=row["file_size"],
            sha256=row["sha256"],
            blob_key=row["blob_key"],
            analysis=row["analysis"],
            correlation_id=event.correlation_id,
            uploaded_at=row["uploaded_at"],
            updated_at=event.occurred_at,
            **_creator(event, "uploader"),
            team=row["team"],  # the team that uploaded it, not the admin who restored it
        )
    )
    conn.execute(delete(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))


def fileset_file_added(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileAdded)
    key = and_(
        fileset_files.c.workspace == payload.workspace,
        fileset_files.c.fileset == payload.fileset,
        fileset_files.c.path == payload.path,
    )
    conn.execute(delete(fileset_files).where(key))
    conn.execute(
        insert(fileset_files).values(
            workspace=payload.workspace,
            fileset=payload.fileset,
            path=payload.path,
            status="staged",
            file_size=payload.size,
            sha256=payload.sha256,
            correlation_id=event.correlation_id,
            updated_at=event.occurred_at,
        )
    )


def fileset_file_stored(conn: Connection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileStored)
    workspace, _, fileset = event.aggregate_id.partition("/")
    conn.execute(
        update(fileset_files)
        .where(
            fileset_files.c.workspace == workspace,
            fileset_files.c.fileset == fileset,
            fileset_files.c.path == payload.file.path,
        )
        .values(status="stored", blob_key=payload.file.key, updated_at=event.occurred_at)
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
