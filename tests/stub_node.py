"""A second node agent for tests: a real `loraplane node` process on the stack's broker whose "vLLM" is
tests/stub_engine.py (answers at once), advertising 127.0.0.2. Engines get API keys of their own that the node seals
with the stack's master key, as a real node does, so only the gateway opens them.

The node offers `count` devices of one GPU type. Other tests register fake nodes of most types that never
heartbeat: the node is started only once the cluster has dropped every other live node of its type, so the
instances of a deployment of that type land on it.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.fake_hub import FakeHub
from tests.support import Api, Stack, wait_until

STUB = Path(__file__).with_name("stub_engine.py")


@dataclass
class StubNodeAgent:
    node_id: str
    gpu: str
    process: subprocess.Popen[bytes]
    data_dir: Path


def stub_text(model: str, prompt: str, max_tokens: int) -> str:
    """What tests/stub_engine.py answers."""
    words = [model, "says", *prompt.split()]
    return "".join(f" {words[i % len(words)]}" for i in range(max_tokens))


def stub_stats(endpoint: str) -> dict[str, Any]:
    return httpx.get(f"{endpoint}/_stub/stats", timeout=5).json()  # type: ignore[no-any-return]


def only_live_node_of_gpu(admin: Api, node_id: str, gpu: str) -> bool:
    nodes = admin.get("/v2/nodes").json()["data"]
    others = [n for n in nodes if not n["lost"] and n["node_id"] != node_id]
    mine = [n for n in nodes if n["node_id"] == node_id and not n["lost"]]
    return bool(mine) and not any(d["gpu_type"] == gpu for n in others for d in n["devices"])


# tests/test_gateway.py's own stub node offers these.
RESERVED = frozenset({"B300-270GB"})


def unused_gpu_type(admin: Api) -> str:
    """A GPU type no deployment left in the stack asks for and no live node offers: a node of it takes no other
    test's instances, and the instances of a deployment of it land on that node."""
    from streams.deployments import DeployGpu

    asked = {d["config"]["gpu"] for d in admin.get("/deploy/list").json()}
    offered = {d["gpu_type"] for n in admin.get("/v2/nodes").json()["data"] if not n["lost"] for d in n["devices"]}
    free = [
        g.value
        for g in DeployGpu
        if g not in (DeployGpu.CPU, DeployGpu.OTHER) and g.value not in asked | offered | RESERVED
    ]
    assert free, f"every GPU type is taken: {sorted(asked | offered)}"
    return free[0]


@contextmanager
def stub_node_agent(
    stack: Stack, admin_key: str, hub_server: FakeHub, root: Path, gpu: str, count: int
) -> Iterator[StubNodeAgent]:
    """The node running, registered and the only live node of `gpu`; stopped afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    fake_vllm = root / "fake-vllm"
    fake_vllm.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STUB}" "$@"\n')
    fake_vllm.chmod(0o755)
    node_id = f"stub-node-{uuid.uuid4().hex[:6]}"
    env = {
        **stack.cli_env(),
        "LORAPLANE_DATA_DIR": str(root / "data"),
        "LORAPLANE_NODE_ID": node_id,
        "LORAPLANE_NODE_DEVICES": f"{gpu}:{count}",
        "LORAPLANE_VLLM_PYTHON": str(fake_vllm),
        "LORAPLANE_NODE_ADVERTISE_HOST": "127.0.0.2",
        "HF_ENDPOINT": hub_server.url,
        # The node seals each engine's key; the gateway opens it: both share the stack's master key and key store.
        "LORAPLANE_SECRET_KEY": (stack.data_dir / "secret.key").read_text().strip(),
        "LORAPLANE_SECRET_KEY_DIR": str(stack.data_dir / "secret-keys"),
    }
    log = (root / "node.log").open("wb")
    node = subprocess.Popen([sys.executable, "-m", "infra.cli", "node"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with Api(stack, admin_key) as admin:
            wait_until(
                lambda: only_live_node_of_gpu(admin, node_id, gpu), timeout=60, interval=0.5, message=f"{gpu} nodes"
            )
        yield StubNodeAgent(node_id, gpu, node, root / "data")
    finally:
        node.terminate()
        node.wait(timeout=30)
        log.close()
