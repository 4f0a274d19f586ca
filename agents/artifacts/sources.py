"""Getting an adapter's files: from the Hub, from CivitAI, from an upload staged in S3, or from a fileset.

Each source yields `SourceFile`s the validator can open as seekable files, plus the provenance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from minio import Minio

from infra.civitai import download_civitai
from infra.errors import LoraplaneError
from infra.huggingface import fetch_adapter
from infra.s3_objects import S3ObjectReader, object_exists, stored_home
from infra.secrets import SecretBox, SecretError
from infra.settings import Settings
from streams.adapters import CivitaiSource, HfSource, RejectedPart, UploadSource, hf_token_context
from streams.artifacts import Provenance

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


class TokenUnreadable(LoraplaneError):
    part = RejectedPart.TOKEN


@dataclass(frozen=True)
class SourceFile:
    path: str
    size: int
    sha256: str
    local: Path | None = None  # downloaded here, or
    key: str | None = None  # already in the bucket under this key

    def open(self, client: Minio, bucket: str) -> BinaryIO:
        if self.local is not None:
            return self.local.open("rb")
        assert self.key is not None
        return S3ObjectReader(client, bucket, self.key, self.size)  # type: ignore[return-value]


@dataclass(frozen=True)
class Fetched:
    files: tuple[SourceFile, ...]
    provenance: Provenance


ProgressCallback = Callable[[int, int | None], None]


async def fetch_hf(
    source: HfSource, aggregate_id: str, dest: Path, settings: Settings, secrets: SecretBox | None
) -> Fetched:
    token = None
    if source.sealed_token is not None:
        if secrets is None:
            raise TokenUnreadable("this worker has no secret key to open the Hugging Face token with")
        try:
            token = secrets.open(source.sealed_token, context=hf_token_context(aggregate_id))
        except SecretError as exc:
            raise TokenUnreadable(f"the Hugging Face token cannot be read: {exc}") from None
    result = await asyncio.to_thread(
        fetch_adapter,
        source.repo_id,
        source.revision,
        token,
        dest,
        endpoint=settings.hf_endpoint,
        max_bytes=settings.max_adapter_bytes,
    )
    endpoint = (settings.hf_endpoint or DEFAULT_HF_ENDPOINT).rstrip("/")
    return Fetched(
        files=tuple(SourceFile(f.path, f.size, f.sha256, local=dest / f.path) for f in result.files),
        provenance=Provenance(
            source_url=f"{endpoint}/{source.repo_id}/tree/{result.commit_sha}",
            hf_repo=source.repo_id,
            hf_revision=source.revision,
            hf_commit=result.commit_sha,
            license=result.license,
        ),
    )


async def fetch_civitai(source: CivitaiSource, dest: Path, settings: Settings, progress: ProgressCallback) -> Fetched:
    partial = dest / "download.part"  # dest exists: the job made it
    with partial.open("wb") as out:

        async def sink(chunk: bytes) -> None:
            out.write(chunk)

        result = await download_civitai(
            source.url,
            sink,
            allowed_hosts=settings.civitai_hosts,
            max_bytes=settings.max_adapter_bytes,
            max_redirects=settings.download_max_redirects,
            token=settings.civitai_token.get_secret_value() if settings.civitai_token else None,
            progress=progress,
            timeout=settings.download_timeout_s,
        )
    local = dest / result.filename
    partial.rename(local)
    return Fetched(
        files=(SourceFile(result.filename, result.size, result.sha256, local=local),),
        provenance=Provenance(
            source_url=result.final_url,
            civitai_model_id=result.model_id,
            civitai_version_id=result.version_id,
            filename=result.filename,
        ),
    )


def staged_or_stored_key(client: Minio, bucket: str, staged_key: str, sha256: str) -> str | None:
    """The staged upload, or (when a run before this one found the bytes stored already and removed the upload)
    the home of its bytes."""
    if object_exists(client, bucket, staged_key):
        return staged_key
    return stored_home(client, bucket, sha256)


def upload_file(source: UploadSource, key: str) -> SourceFile:
    return SourceFile(source.filename, source.size, source.sha256, key=key)
