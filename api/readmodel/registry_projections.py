"""Projections of the adapter registry's events: adapters and their versions, seed 004's files and
bin, NeMo filesets. Idempotent like the rest: each writes the row the event describes."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

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


async def adapter_requested(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRequested)
    spec = payload.spec
    key = and_(adapters.c.workspace == spec.workspace, adapters.c.name == spec.name)
    await conn.execute(delete(adapters).where(key))
    await conn.execute(
        insert(adapters).values(
            workspace=spec.workspace,
            name=spec.name,
            latest_version=payload.version,
            api=spec.api.value,
            description=spec.description,
            enabled=spec.enabled,
            lora_config=spec.lora_config,
            version=event.aggregate_version,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            **_creator(event),
        )
    )
    version_key = and_(
        adapter_versions.c.workspace == spec.workspace,
        adapter_versions.c.name == spec.name,
        adapter_versions.c.version == payload.version,
    )
    await conn.execute(delete(adapter_versions).where(version_key))
    await conn.execute(
        insert(adapter_versions).values(
            workspace=spec.workspace,
            name=spec.name,
            version=payload.version,
            status=adapter_events.AdapterStatus.REQUESTED.value,
            spec=_json(spec),
            bytes_done=0,
            correlation_id=event.correlation_id,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            **_creator(event),
        )
    )


async def _update_version(conn: AsyncConnection, event: Envelope, version: int, **values: Any) -> None:
    workspace, name = _split_adapter_id(event.aggregate_id)
    await conn.execute(
        update(adapter_versions)
        .where(
            adapter_versions.c.workspace == workspace,
            adapter_versions.c.name == name,
            adapter_versions.c.version == version,
        )
        .values(updated_at=event.occurred_at, **values)
    )
    await conn.execute(
        update(adapters)
        .where(adapters.c.workspace == workspace, adapters.c.name == name)
        .values(updated_at=event.occurred_at, version=event.aggregate_version)
    )


async def adapter_progressed(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterProgressed)
    await _update_version(
        conn,
        event,
        payload.version,
        status=payload.status.value,
        bytes_done=payload.progress.bytes_done,
        bytes_total=payload.progress.bytes_total,
    )


async def adapter_stored(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterStored)
    await _update_version(
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


async def adapter_rejected(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterRejected)
    await _update_version(
        conn,
        event,
        payload.version,
        status=adapter_events.AdapterStatus.REJECTED.value,
        reason=payload.reason,
        rejected_part=payload.part.value,
        provenance=_json(payload.provenance),
    )


async def adapter_updated(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterUpdated)
    workspace, name = _split_adapter_id(event.aggregate_id)
    await conn.execute(
        update(adapters)
        .where(adapters.c.workspace == workspace, adapters.c.name == name)
        .values(
            updated_at=event.occurred_at,
            version=event.aggregate_version,
            **payload.changes.model_dump(exclude_none=True),
        )
    )


async def adapter_deleted(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, adapter_events.AdapterDeleted)
    # Versions stay: their events and objects are history. Only the name is gone.
    await conn.execute(
        delete(adapters).where(adapters.c.workspace == payload.workspace, adapters.c.name == payload.name)
    )


async def lora_file_reserved(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileReserved)
    await conn.execute(delete(lora_files).where(lora_files.c.partial_path == payload.partial_path))
    await conn.execute(
        insert(lora_files).values(
            partial_path=payload.partial_path,
            entity_type=payload.entity_type.value,
            filename=payload.filename,
            original_filename=payload.original_filename,
            status="validating",
            file_size=payload.size,
            sha256=payload.sha256,
            correlation_id=event.correlation_id,
            uploaded_at=event.occurred_at,
            updated_at=event.occurred_at,
            **_creator(event, "uploader"),
        )
    )


async def lora_file_stored(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileStored)
    await conn.execute(
        update(lora_files)
        .where(lora_files.c.partial_path == payload.partial_path)
        .values(
            status="stored", blob_key=payload.file.key, analysis=_json(payload.analysis), updated_at=event.occurred_at
        )
    )


async def lora_file_rejected(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRejected)
    await conn.execute(
        update(lora_files)
        .where(lora_files.c.partial_path == payload.partial_path)
        .values(status="rejected", reason=payload.reason, updated_at=event.occurred_at)
    )


async def lora_file_binned(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileBinned)
    row = (
        (await conn.execute(select(lora_files).where(lora_files.c.partial_path == payload.partial_path)))
        .mappings()
        .first()
    )
    await conn.execute(delete(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))
    if row is not None:
        await conn.execute(
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
            )
        )
    await conn.execute(delete(lora_files).where(lora_files.c.partial_path == payload.partial_path))


async def lora_file_restored(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, file_events.LoraFileRestored)
    row = (await conn.execute(select(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))).mappings().first()
    if row is None:
        return  # replayed after a later event removed it: nothing to move
    await conn.execute(delete(lora_files).where(lora_files.c.partial_path == payload.partial_path))
    await conn.execute(
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
        )
    )
    await conn.execute(delete(lora_bin).where(lora_bin.c.bin_path == payload.bin_path))


async def fileset_file_added(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileAdded)
    key = and_(
        fileset_files.c.workspace == payload.workspace,
        fileset_files.c.fileset == payload.fileset,
        fileset_files.c.path == payload.path,
    )
    await conn.execute(delete(fileset_files).where(key))
    await conn.execute(
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


async def fileset_file_stored(conn: AsyncConnection, event: Envelope) -> None:
    payload = event.payload
    assert isinstance(payload, fileset_events.FilesetFileStored)
    workspace, _, fileset = event.aggregate_id.partition("/")
    await conn.execute(
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
