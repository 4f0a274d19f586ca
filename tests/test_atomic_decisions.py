"""A worker that crashes in the middle of things, at the points that used to lose work: right after a decision of
several events lands, and between an event and the command a process manager sends because of it.

The stack runs with fault injection on (infra.faults): a test arms a crash point, the worker dies there at once (no
acknowledgement, no cleanup), the supervisor restarts it, and the log must read as if nothing happened.
"""

from __future__ import annotations

import collections
import uuid
from typing import Any

from infra.faults import arm
from streams.deployments import DeployGpu
from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import TINY_BASE_MODEL, peft_repo_files
from tests.support import Api, Stack, read_topic, wait_until
from tests.test_deployments_api import deploy, node_id, register_node

WAIT = {"wait": 60}


def crashed_and_restarted(stack: Stack, pid: int, point: str) -> None:
    wait_until(lambda: not (stack.data_dir / "faults" / point).exists(), timeout=60, message=f"the crash at {point}")
    wait_until(
        lambda: stack.pids().get("worker") not in (None, pid),
        timeout=60,
        message="the supervisor to restart the worker",
    )


def test_a_decision_of_several_events_lands_whole_and_once_across_a_crash(user: Api, stack: Stack) -> None:
    gpu = DeployGpu.OTHER  # no other test uses it: the node registered here takes no one else's instances
    first = deploy(user, gpu=gpu.value)["deploy_id"]
    second = deploy(user, gpu=gpu.value)["deploy_id"]
    worker = stack.pids()["worker"]

    arm(stack.data_dir, "after_publish", "node.registered")
    node = node_id()
    register_node(stack, node, gpu, 2)  # one decision: the node registered, and pending instances placed on it
    crashed_and_restarted(stack, worker, "after_publish")

    def placed(deploy_id: str) -> bool:
        return any(i["node_id"] == node for i in user.get(f"/deploy/{deploy_id}").json()["instance_details"])

    wait_until(lambda: placed(first) and placed(second), timeout=60, message="both deployments placed")
    records = [r for r in read_topic(stack, "loraplane.events")]
    registered = [
        r for r in records if r.json()["type"] == "node.registered" and r.json()["payload"]["node_id"] == node
    ]
    assert len(registered) == 1, "the redelivered registration was decided again"
    command_id = registered[0].json()["command_id"]
    decision = [r for r in records if r.json()["command_id"] == command_id]
    types = collections.Counter(r.json()["type"] for r in decision)
    assert types["node.registered"] == 1 and types["instance.placed"] >= 2, types
    # one batch: adjacent offsets of one partition, the cluster's versions one after another
    assert {r.partition for r in decision} == {registered[0].partition}
    offsets = sorted(r.offset for r in decision)
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    versions = sorted(r.json()["aggregate_version"] for r in decision)
    assert versions == list(range(versions[0], versions[0] + len(versions)))
    for deploy_id in (first, second):
        assert user.delete(f"/deploy/{deploy_id}", params={"wait": 20}).status_code == 204


def test_a_crash_between_an_event_and_its_follow_up_loses_nothing(user: Api, stack: Stack, hub_server: FakeHub) -> None:
    # A deployment of the tiny Llama that no node takes: an Empower LoRA of its base model is served on it
    # (agents.adapter_deployments) by a command sent because of `adapter.stored`.
    deploy_id = deploy(user, gpu=DeployGpu.H200_141GB.value, hf={"repo": TINY_BASE_MODEL})["deploy_id"]
    name = f"follow-{uuid.uuid4().hex[:8]}"
    hub_server.repos[f"tests/{name}"] = FakeRepo.single(peft_repo_files())
    worker = stack.pids()["worker"]

    arm(stack.data_dir, "after_publish", "adapter.stored")
    registered = user.post(
        "/api/v1/lora", params=WAIT, json={"model_source": "HF_HUB", "model_name": f"tests/{name}", "name": name}
    )
    assert registered.status_code in (200, 202), registered.text
    crashed_and_restarted(stack, worker, "after_publish")

    def served() -> dict[str, Any] | None:
        body = user.get(f"/api/v1/lora/{name}").json()
        return body if (body.get("active_deployment") or {}).get("deploy_id") == deploy_id else None

    wait_until(served, timeout=90, message="the LoRA served on the deployment after the restart")
    attached = [
        e
        for e in (r.json() for r in read_topic(stack, "loraplane.events"))
        if e["type"] == "deployment.adapter_attached" and e["aggregate_id"] == deploy_id
    ]
    assert len(attached) == 1, attached
    assert user.delete(f"/api/v1/lora/{name}", params={"force": "true", **WAIT}).status_code in (200, 202, 204)
    assert user.delete(f"/deploy/{deploy_id}", params={"wait": 20}).status_code == 204
