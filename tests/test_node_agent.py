"""A second node agent (`loraplane node`, a real process on the stack's broker and S3) whose "vLLM" is a script that
dies at once, as vLLM does on a host without a working GPU: the instance is reported failed with the log's last
lines, restarted up to the limit, then left failed; the node stops cleanly on SIGTERM.

The GPU type (H100-80GB) is used by no other test of the session, so no other deployment lands on this node.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Api, Stack, events, wait_until

CONFIG = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
FAKE_VLLM = """#!/bin/sh
echo "fake vLLM started with: $*"
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
echo "RuntimeError: No CUDA GPUs are available"
exit 1
"""


def test_a_vllm_that_dies_is_reported_restarted_up_to_the_limit_then_left_failed(
    user: Api, stack: Stack, hub_server: FakeHub, tmp_path: Path
) -> None:
    repo = f"tests/h100-model-{uuid.uuid4().hex[:8]}"
    hub_server.repos[repo] = FakeRepo.single({"config.json": CONFIG, "model.safetensors": b"w" * 16})
    fake = tmp_path / "fake-vllm"
    fake.write_text(FAKE_VLLM)
    fake.chmod(0o755)
    node_id = f"gpu-node-{uuid.uuid4().hex[:8]}"
    env = {
        **stack.cli_env(),
        "LORAPLANE_DATA_DIR": str(tmp_path / "node"),
        "LORAPLANE_NODE_ID": node_id,
        "LORAPLANE_NODE_DEVICES": "H100-80GB:2",
        "LORAPLANE_VLLM_PYTHON": str(fake),
        "LORAPLANE_VLLM_RESTART_LIMIT": "1",
        "LORAPLANE_VLLM_RESTART_MAX_BACKOFF_S": "0.5",
        "HF_ENDPOINT": hub_server.url,
    }
    log = (tmp_path / "node.log").open("wb")
    node = subprocess.Popen([sys.executable, "-m", "infra.cli", "node"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        answer = user.post(
            "/deploy/llm",
            params={"wait": 20},
            json={"model_name": "h100-model", "gpu": "H100-80GB", "hf": {"repo": repo}, "extra_args": ["--seed", "1"]},
        )
        assert answer.status_code == 200, answer.text
        deploy_id = answer.json()["deploy_id"]

        def failed() -> dict[str, Any] | None:
            body = user.get(f"/deploy/{deploy_id}").json()
            return body if body["status"] == "failed" else None

        body = wait_until(failed, timeout=60, interval=0.3, message="the deployment failed")
        [instance] = body["instance_details"]
        assert instance["node_id"] == node_id
        reason = body["fail_reason"]
        assert reason == instance["reason"]
        assert "exited with code 1" in reason and "RuntimeError: No CUDA GPUs are available" in reason
        [index] = instance["device_indexes"]
        assert f"CUDA_VISIBLE_DEVICES={index}" in reason
        assert "--host 127.0.0.1" in reason and "--tensor-parallel-size 1" in reason and "--seed 1" in reason

        def reports() -> list[str]:
            mine = [e for e in events(stack) if e["aggregate_id"] == deploy_id]
            return [e["type"] for e in mine if e["type"].startswith("instance.")]

        # started, failed, restarted once (the limit), failed, and then left alone
        assert wait_until(lambda: reports() == ["instance.launched", "instance.failed"] * 2, timeout=10)
        time.sleep(2.0)  # four backoffs' worth: a third start would be on the log by now
        assert reports() == ["instance.launched", "instance.failed"] * 2
        assert node.poll() is None, "the node agent keeps running"
        deleted = user.delete(f"/deploy/{deploy_id}", params={"wait": 20})
        assert deleted.status_code == 204, deleted.text
    finally:
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=30)
        log.close()
    output = (tmp_path / "node.log").read_text()
    assert code == 0, output
    assert f"node {node_id} stopped" in output
