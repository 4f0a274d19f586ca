"""The node cache against the stack's real S3 and the local Hub: adapters by sha256 (checked), weights by commit,
from `s3://` or a local directory. And the node's device detection from its setting."""

from __future__ import annotations

import hashlib
import io
import uuid
from pathlib import Path

import pytest

from agents.node.main import detect_devices
from infra.huggingface import HubRepoNotFound
from infra.node_cache import CacheError, architecture_of, fetch_adapter_files, fetch_weights
from infra.settings import Settings
from streams.artifacts import Artifact, StoredFile, blob_key
from streams.deployments import DeployGpu
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Stack
from tests.test_empower_api import s3_client

CONFIG = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'


def put(stack: Stack, data: bytes, key: str | None = None) -> StoredFile:
    client, bucket = s3_client(stack)
    sha = hashlib.sha256(data).hexdigest()
    key = key or blob_key(sha)
    client.put_object(bucket, key, io.BytesIO(data), len(data))
    return StoredFile(path="adapter_model.safetensors", key=key, sha256=sha, size=len(data))


def test_adapter_files_are_fetched_once_and_checked(stack: Stack, tmp_path: Path) -> None:
    client, bucket = s3_client(stack)
    weights = put(stack, uuid.uuid4().bytes * 100)
    config = put(stack, b'{"r": 8}').model_copy(update={"path": "adapter_config.json"})
    artifact = Artifact(bucket=bucket, files=(config, weights), sha256=weights.sha256, size=weights.size, total_size=0)
    path = fetch_adapter_files(client, artifact, tmp_path)
    assert path == tmp_path / "adapters" / weights.sha256
    assert hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest() == weights.sha256
    assert (path / "adapter_config.json").read_bytes() == b'{"r": 8}'
    assert fetch_adapter_files(client, artifact, tmp_path) == path

    # bytes that are not what the registry stored are never served
    other = put(stack, b"other bytes", key=f"tests/{uuid.uuid4().hex}")
    lying = StoredFile(path="adapter_model.safetensors", key=other.key, sha256="0" * 64, size=other.size)
    bad = Artifact(bucket=bucket, files=(lying,), sha256="0" * 64, size=other.size, total_size=other.size)
    with pytest.raises(CacheError, match="another size or sha256"):
        fetch_adapter_files(client, bad, tmp_path)
    assert not (tmp_path / "adapters" / ("0" * 64)).exists()

    escaping = Artifact(
        bucket=bucket, files=(weights.model_copy(update={"path": "../../x"}),), sha256="1" * 64, size=1, total_size=1
    )
    with pytest.raises(CacheError, match="leaves"):
        fetch_adapter_files(client, escaping, tmp_path)


def test_weights_from_s3_a_local_directory_and_the_hub(stack: Stack, hub_server: FakeHub, tmp_path: Path) -> None:
    client, bucket = s3_client(stack)
    prefix = f"models/{uuid.uuid4().hex}"
    client.put_object(bucket, f"{prefix}/config.json", io.BytesIO(CONFIG), len(CONFIG))
    client.put_object(bucket, f"{prefix}/model.safetensors", io.BytesIO(b"w" * 10), 10)
    from_s3 = fetch_weights(client, f"s3://{bucket}/{prefix}", None, None, tmp_path)
    assert sorted(p.name for p in from_s3.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "model.safetensors",
    ]
    assert architecture_of(from_s3) == "LlamaForCausalLM"
    with pytest.raises(CacheError, match=r"no config\.json"):
        fetch_weights(client, f"s3://{bucket}/nothing-{uuid.uuid4().hex}", None, None, tmp_path)

    assert fetch_weights(None, str(from_s3), None, None, tmp_path) == from_s3
    with pytest.raises(CacheError, match="not a model directory"):
        fetch_weights(None, str(tmp_path / "missing"), None, None, tmp_path)

    repo = f"tests/model-{uuid.uuid4().hex[:8]}"
    hub_server.repos[repo] = FakeRepo.single({"config.json": CONFIG, "model.safetensors": b"m" * 10, "notes.bin": b"x"})
    from_hub = fetch_weights(None, repo, None, None, tmp_path, hf_endpoint=hub_server.url)
    assert {p.name for p in from_hub.iterdir() if not p.name.startswith(".")} == {"config.json", "model.safetensors"}
    with pytest.raises(HubRepoNotFound):
        fetch_weights(None, f"tests/absent-{uuid.uuid4().hex[:8]}", None, None, tmp_path, hf_endpoint=hub_server.url)


def test_devices_come_from_the_setting_when_given() -> None:
    devices = detect_devices(Settings(node_devices="H100-80GB:2,cpu:1"))
    assert [d.gpu_type for d in devices] == [DeployGpu.H100_80GB, DeployGpu.H100_80GB, DeployGpu.CPU]
    assert [d.index for d in devices] == [0, 1, 2]
    with pytest.raises(ValueError, match="unknown device type"):
        detect_devices(Settings(node_devices="TPU:1"))
