"""Staged uploads, and the staging sweep: what an upload left in S3 when the process streaming it died.

An upload is streamed to `blobs/uploads/{uuid}` (a multipart upload once it is larger than one part), where it
stays once stored: no copy. While it is not yet validated and stored, an empty marker `staging/{uuid}`, written
before the first byte, says so; the API names the upload in a command only once its bytes are complete, and the
agent that handles the command removes the marker when it stores the bytes (or removes both when it refuses
them). Uploads staged by earlier versions are whole objects `staging/{uuid}`: their own marker.

Two things escape that path, and only when a process dies at the wrong moment: a multipart upload the API never
completed nor aborted (killed while the bytes arrived: its parts stay on the server, invisible to a listing of
objects), and a complete upload whose command was never published (killed between the two), its marker still
there. The sweep aborts the first once they are older than `staging_abandoned_upload_s` (and removes their
markers) and removes the second (the bytes, then the marker) once its marker is older than `staging_orphan_s`;
every API process runs it at start and every `staging_sweep_every_s`. Two processes sweeping at once is harmless:
an abort or a removal of what is gone already is nothing.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from minio import Minio
from minio.error import S3Error

from infra.s3_objects import is_claimed_by, object_exists, remove_quietly

log = logging.getLogger(__name__)

STAGING_PREFIX = "staging/"
UPLOADS_PREFIX = "blobs/uploads/"
_PAGE = 1000
_MAX_PAGES = 100  # per sweep; the next sweep goes on


def new_upload_key() -> str:
    """Where the API streams one upload's bytes (and where they stay once stored)."""
    return f"{UPLOADS_PREFIX}{uuid.uuid4().hex}"


def staging_marker(key: str) -> str:
    """The marker saying the upload at `key` is not yet stored; an upload staged by an earlier version is its own."""
    if key.startswith(UPLOADS_PREFIX):
        return f"{STAGING_PREFIX}{key.removeprefix(UPLOADS_PREFIX)}"
    return key


def upload_of_marker(marker: str) -> str:
    return f"{UPLOADS_PREFIX}{marker.removeprefix(STAGING_PREFIX)}"


def mark_staged(client: Minio, bucket: str, key: str) -> None:
    client.put_object(bucket, staging_marker(key), io.BytesIO(b""), 0)


def release_staged(client: Minio, bucket: str, key: str) -> None:
    """The upload at `key` is about to be stored: the sweep must leave it alone from now on. (An upload staged by an
    earlier version was copied to its content address: this removes it.)"""
    remove_quietly(client, bucket, staging_marker(key))


def discard_staged(client: Minio, bucket: str, key: str, sha256: str | None = None) -> None:
    """Remove an upload no name will point at, and its marker. With `sha256`, bytes a claim names (a home other
    uploads may point at, claimed by an earlier run of the same job) are kept."""
    if sha256 is None or not key.startswith(UPLOADS_PREFIX) or not is_claimed_by(client, bucket, key, sha256):
        remove_quietly(client, bucket, key)
    remove_quietly(client, bucket, staging_marker(key))


@dataclass(frozen=True)
class SweepReport:
    aborted_uploads: int
    removed_objects: int


def abandoned_uploads(client: Minio, bucket: str, before: datetime) -> list[tuple[str, str]]:
    """(key, upload id) of the multipart uploads under `blobs/uploads/` (and the `staging/` of earlier versions)
    initiated before `before`."""
    return [
        found
        for prefix in (UPLOADS_PREFIX, STAGING_PREFIX)
        for found in _abandoned_uploads(client, bucket, prefix, before)
    ]


def _abandoned_uploads(client: Minio, bucket: str, prefix: str, before: datetime) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    key_marker: str | None = None
    upload_marker: str | None = None
    for _ in range(_MAX_PAGES):
        page = client._list_multipart_uploads(  # minio has no public call for it
            bucket, prefix=prefix, key_marker=key_marker, upload_id_marker=upload_marker, max_uploads=_PAGE
        )
        for upload in page.uploads:
            initiated = upload.initiated_time
            if upload.upload_id and (initiated is None or initiated < before):
                found.append((upload.object_name, upload.upload_id))
        if not page.is_truncated or not page.uploads:
            break
        key_marker, upload_marker = page.uploads[-1].object_name, page.uploads[-1].upload_id
    return found


def sweep_staging(
    client: Minio, bucket: str, *, now: datetime, abandoned_upload_s: float, orphan_s: float
) -> SweepReport:
    aborted = removed = 0
    for key, upload_id in abandoned_uploads(client, bucket, now - timedelta(seconds=abandoned_upload_s)):
        try:
            client._abort_multipart_upload(bucket, key, upload_id)
            aborted += 1
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise
        if key.startswith(UPLOADS_PREFIX) and not object_exists(client, bucket, key):
            remove_quietly(client, bucket, staging_marker(key))  # those bytes will never arrive
    orphaned_before = now - timedelta(seconds=orphan_s)
    for item in client.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True):
        marker = item.object_name
        if marker and item.last_modified is not None and item.last_modified < orphaned_before:
            # Looked at again just before: a job that stores the upload removes the marker first.
            if object_exists(client, bucket, marker):
                remove_quietly(client, bucket, upload_of_marker(marker))
                client.remove_object(bucket, marker)
                removed += 1
    if aborted or removed:
        log.info("staging sweep: %d abandoned uploads aborted, %d orphaned staged objects removed", aborted, removed)
    return SweepReport(aborted, removed)
