"""Runs the staging sweep (`infra.staging`) in the API process: at start, then every `staging_sweep_every_s`."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from minio import Minio

from infra.settings import Settings
from infra.staging import sweep_staging

log = logging.getLogger(__name__)


async def sweep_forever(settings: Settings, s3: Minio) -> None:
    while True:
        try:
            await asyncio.to_thread(
                sweep_staging,
                s3,
                settings.s3_bucket,
                now=datetime.now(UTC),
                abandoned_upload_s=settings.staging_abandoned_upload_s,
                orphan_s=settings.staging_orphan_s,
            )
        except Exception as exc:  # S3 away: the next sweep tries again
            log.warning("staging sweep failed: %s", exc)
        await asyncio.sleep(settings.staging_sweep_every_s)
