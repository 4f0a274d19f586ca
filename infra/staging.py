"""The staging sweep: what an upload left under `staging/` in S3 when the process streaming it died.

An upload is streamed to `staging/{uuid}` (a multipart upload once it is larger than one part) and only then named
in a command; the agent that handles the command removes the staged object. Two things escape that path, and only
when a process dies at the wrong moment: a multipart upload the API never completed nor aborted (killed while the
bytes arrived: its parts stay on the server, invisible to a listing of objects), and a complete staged object whose
command was never published (killed between the two). The sweep aborts the first once they are older than
`staging_abandoned_upload_s` and removes the second once older than `staging_orphan_s`; every API process runs it at
start and every `staging_sweep_every_s`. Two processes sweeping at once is harmless: an abort or a removal of what is
gone already is nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from minio import Minio
from minio.error import S3Error

log = logging.getLogger(__name__)

STAGING_PREFIX = "staging/"
_PAGE = 1000
_MAX_PAGES = 100  # per sweep; the next sweep goes on


@dataclass(frozen=True)
class SweepReport:
    aborted_uploads: int
    removed_objects: int


def abandoned_uploads(client: Minio, bucket: str, before: datetime) -> list[tuple[str, str]]:
    """(key, upload id) of the multipart uploads under `staging/` initiated before `before`."""
    found: list[tuple[str, str]] = []
    key_marker: str | None = None
    upload_marker: str | None = None
    for _ in range(_MAX_PAGES):
        page = client._list_multipart_uploads(  # minio has no public call for it
            bucket, prefix=STAGING_PREFIX, key_marker=key_marker, upload_id_marker=upload_marker, max_uploads=_PAGE
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
    orphaned_before = now - timedelta(seconds=orphan_s)
    for item in client.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True):
        if item.object_name and item.last_modified is not None and item.last_modified < orphaned_before:
            client.remove_object(bucket, item.object_name)
            removed += 1
    if aborted or removed:
        log.info("staging sweep: %d abandoned uploads aborted, %d orphaned staged objects removed", aborted, removed)
    return SweepReport(aborted, removed)
