"""Artifact jobs survive what goes wrong: a worker killed in the middle of a download runs the job again
from the folded log and stores the adapter exactly once; a fault no retry fixes ends in a rejection."""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import uuid
from typing import Any

import numpy as np
from safetensors.numpy import save

from streams.adapters import DEFAULT_WORKSPACE, AdapterApi, AdapterSpec, RegisterAdapter, UploadSource, adapter_id
from streams.artifacts import blob_key
from streams.envelope import Actor, ActorType
from streams.serialization import encode, envelope_for, key_for
from tests.fake_civitai import FakeCivitai, FakeFile
from tests.support import Api, Stack, events, produced, wait_until


def _big_kohya_lora() -> bytes:
    """About 4 MB: long enough to stream slowly, small enough for the test stack's size limit."""
    rng = np.random.default_rng(7)
    tensors: dict[str, np.ndarray] = {}
    for block in ("down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", "mid_block_attentions_0_proj_in"):
        prefix = f"lora_unet_{block}"
        tensors[f"{prefix}.lora_down.weight"] = rng.standard_normal((64, 8192)).astype(np.float16)
        tensors[f"{prefix}.lora_up.weight"] = rng.standard_normal((8192, 64)).astype(np.float16)
        tensors[f"{prefix}.alpha"] = np.array(64.0, dtype=np.float16)
    return save(tensors)


def create_slow_civitai_lora(
    user: Api, civitai_server: FakeCivitai, name: str, version_id: int, body: bytes, throttle_s: float
) -> None:
    """DeepInfra's create of a CivitAI LoRA whose download takes a while (`throttle_s` between 64 KiB chunks)."""
    civitai_server.files[version_id] = FakeFile(
        body, f'attachment; filename="{name}.safetensors"', throttle_s=throttle_s
    )
    answer = user.post(
        "/v1/lora/create",
        json={
            "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
            "lora_name": name,
            "source": {"type": "civitai", "civit_url": f"{civitai_server.site_url}/api/download/models/{version_id}"},
            "private": False,
        },
    )
    assert answer.status_code == 202, answer.text


def _mine(stack: Stack, name: str) -> list[dict[str, Any]]:
    return [e for e in events(stack) if e["aggregate_id"] == f"default/{name}"]


def test_a_download_cut_by_a_worker_crash_is_resumed_and_stored_once(
    stack: Stack, user: Api, civitai_server: FakeCivitai
) -> None:
    body = _big_kohya_lora()
    version_id = 97_001
    name = f"crash-{uuid.uuid4().hex[:8]}"
    create_slow_civitai_lora(user, civitai_server, name, version_id, body, throttle_s=0.05)

    def downloading() -> bool:
        return any(
            e["type"] == "adapter.progressed" and e["payload"]["progress"]["bytes_done"] > 0 for e in _mine(stack, name)
        )

    wait_until(downloading, timeout=60, interval=0.1, message="the download to be under way")
    worker_pid = stack.pids()["worker"]
    os.kill(worker_pid, signal.SIGKILL)
    assert not any(e["type"] == "adapter.stored" for e in _mine(stack, name)), "stored before the kill: proves nothing"

    wait_until(
        lambda: stack.pids().get("worker") not in (None, worker_pid),
        timeout=60,
        message="the supervisor to restart the worker",
    )
    wait_until(
        lambda: any(e["type"] in ("adapter.stored", "adapter.rejected") for e in _mine(stack, name)),
        timeout=180,
        interval=0.5,
        message="the resumed job to finish",
    )
    mine = _mine(stack, name)
    counts = collections.Counter(e["type"] for e in mine)
    assert counts["adapter.requested"] == 1 and counts["adapter.stored"] == 1, counts
    assert counts["adapter.rejected"] == 0, [e["payload"] for e in mine if e["type"] == "adapter.rejected"]
    cdn_downloads = [r for r in civitai_server.seen("cdn") if r.path.startswith(f"/file/{version_id}/")]
    assert len(cdn_downloads) >= 2, "the job did not run again after the restart"

    digest = hashlib.sha256(body).hexdigest()
    stored = next(e for e in mine if e["type"] == "adapter.stored")["payload"]["artifact"]
    assert stored["sha256"] == digest and stored["files"][0]["key"] == blob_key(digest)
    got = user.get(f"/api/v1/lora/{name}").json()
    assert got["status"] == "ready", got


def test_a_job_that_fails_in_a_way_no_retry_fixes_ends_rejected_not_stuck(stack: Stack) -> None:
    """An empty staged key makes the S3 client itself refuse the call (ValueError): a fault that would
    repeat on every run. The version must end `rejected` with a pointer to the log, not stay `fetching`."""
    name = f"broken-{uuid.uuid4().hex[:8]}"
    spec = AdapterSpec(
        workspace=DEFAULT_WORKSPACE,
        name=name,
        source=UploadSource(staged_key="", filename="x.safetensors", size=1, sha256="0" * 64),
        api=AdapterApi.EMPOWER,
    )
    command = envelope_for(
        RegisterAdapter(spec=spec, new_version_if_exists=True),
        aggregate_id=adapter_id(DEFAULT_WORKSPACE, name),
        actor=Actor(type=ActorType.SYSTEM, id="test", name="artifact-test"),
    )
    with produced(stack.bootstrap) as producer:
        producer.send("loraplane.commands", encode(command), key_for(command))

    rejected = wait_until(
        lambda: next((e for e in _mine(stack, name) if e["type"] == "adapter.rejected"), None),
        timeout=60,
        interval=0.3,
        message="the broken job to be refused",
    )
    assert "could not be processed" in rejected["payload"]["reason"] and "worker log" in rejected["payload"]["reason"]
