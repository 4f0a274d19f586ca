"""The node-local cache: a deployment's weights (Hub, `s3://` or a local path) and adapters' files from S3.

Synchronous (the node agent runs these in threads). Everything lands under a directory named by its content or
commit and is marked complete only when whole, so a crash mid-download is resumed, never served half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from minio import Minio

from infra.errors import LoraplaneError
from infra.huggingface import fetch_model
from streams.artifacts import Artifact

log = logging.getLogger(__name__)

COMPLETE = ".complete"


class CacheError(LoraplaneError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_adapter_files(client: Minio, artifact: Artifact, cache_dir: Path) -> Path:
    """The adapter's files (adapter_config.json, weights) in a local directory, each checked against its sha256."""
    dest = cache_dir / "adapters" / artifact.sha256
    if (dest / COMPLETE).exists():
        return dest
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for stored in artifact.files:
        target = partial / stored.path
        if not target.resolve().is_relative_to(partial.resolve()):
            raise CacheError(f"adapter file path {stored.path!r} leaves the adapter's directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(artifact.bucket, stored.key, str(target))
        if target.stat().st_size != stored.size or sha256_of(target) != stored.sha256:
            shutil.rmtree(partial, ignore_errors=True)
            raise CacheError(f"{stored.path} arrived from S3 with another size or sha256 than stored; not loaded")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    (dest / COMPLETE).touch()
    return dest


def fetch_weights(
    client: Minio | None,
    source: str,
    revision: str | None,
    token: str | None,
    cache_dir: Path,
    *,
    hf_endpoint: str | None = None,
) -> Path:
    """A local directory with the model's config.json, tokenizer and weights.

    `source` is a local directory, `s3://bucket/prefix` (every object under it), or a Hugging Face repo id."""
    if source.startswith(("/", "./", "file://")):
        path = Path(source.removeprefix("file://"))
        if not (path / "config.json").is_file():
            raise CacheError(f"{source} is not a model directory (no config.json)")
        return path
    if source.startswith("s3://"):
        if client is None:
            raise CacheError("an s3:// model needs S3 settings on the node")
        return _fetch_s3_model(client, source, cache_dir / "models" / "s3")
    _, path = fetch_model(source, revision, token, cache_dir / "models" / "hf", endpoint=hf_endpoint)
    return path


def _fetch_s3_model(client: Minio, url: str, root: Path) -> Path:
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    dest = root / bucket / hashlib.sha256(prefix.encode()).hexdigest()[:16]
    if (dest / COMPLETE).exists():
        return dest
    found = 0
    for obj in client.list_objects(bucket, prefix=f"{prefix}/" if prefix else "", recursive=True):
        name = obj.object_name or ""
        relative = name[len(prefix) :].lstrip("/") if prefix else name
        target = dest / relative
        if not relative or not target.resolve().is_relative_to(dest.resolve()):
            continue
        client.fget_object(bucket, name, str(target))
        found += 1
    if not (dest / "config.json").is_file():
        raise CacheError(f"{url} holds no config.json ({found} objects found): it is not a model")
    (dest / COMPLETE).touch()
    return dest


def architecture_of(model_dir: Path) -> str | None:
    """`architectures[0]` of the model's config.json (LlamaForCausalLM), if it names one."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    names = config.get("architectures") if isinstance(config, dict) else None
    return str(names[0]) if isinstance(names, list) and names else None
