"""Seed 003 through the real stack: API -> deployment aggregate -> process manager -> cluster aggregate -> read model.

The test stack's one node agent offers a `cpu` device (tests/test_deployments_e2e.py deploys on it); here, GPU nodes
are registered by sending `node.register` as a real command on the commands topic, and never heartbeat. Each test
uses a GPU type of its own, so instances pending from one test never take another's node.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import streams.catalog  # noqa: F401 - registers every message type
from streams.cluster import CLUSTER_ID, CheckNodes, DeviceInfo, RegisterNode
from streams.deployments import DeployGpu, InstanceStatus, ReportInstance
from streams.envelope import SYSTEM_ACTOR
from streams.serialization import encode, envelope_for, key_for
from streams.topics import COMMANDS, EVENTS
from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import TINY_BASE_MODEL, peft_repo_files
from tests.support import Api, Stack, events, produced, read_topic, wait_until

WAIT = {"wait": 20}
SEED_KEYS = {
    "deploy_id",
    "model_name",
    "version",
    "task",
    "status",
    "fail_reason",
    "created_at",
    "updated_at",
    "type",
    "instances",
    "config",
    "settings",
}


def register_node(stack: Stack, node_id: str, gpu: DeployGpu, count: int) -> None:
    devices = tuple(DeviceInfo(index=i, gpu_type=gpu, memory_mb=81920, name=f"test {gpu}") for i in range(count))
    command = envelope_for(RegisterNode(node_id=node_id, devices=devices), aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR)
    with produced(stack.bootstrap) as producer:
        producer.send(COMMANDS.name, encode(command), key=key_for(command))


def deploy(client: Api, **body: Any) -> dict[str, Any]:
    answer = client.post("/deploy/llm", params=WAIT, json={"model_name": "org/tiny", **body})
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def node_id() -> str:
    return f"node-{uuid.uuid4().hex[:8]}"


def test_pending_with_the_reason_then_placed_when_a_node_registers(user: Api, admin: Api, stack: Stack) -> None:
    body = deploy(user, gpu="H200-141GB", num_gpus=2, hf={"repo": "org/tiny", "revision": "abc123"})
    assert SEED_KEYS <= set(body)
    assert body["type"] == "llm" and body["task"] == "text-generation" and body["version"] == "abc123"
    assert body["status"] == "pending"
    assert body["fail_reason"] == "no node has any H200-141GB GPU"
    assert body["instances"] == {"running": 0, "pending": 1}
    assert body["config"] == {
        "gpu": "H200-141GB",
        "num_gpus": 2,
        "max_batch_size": 96,
        "weights": {"repo": "org/tiny", "revision": "abc123", "token": None},
    }
    assert body["settings"] == {"min_instances": 1, "max_instances": 1}
    deploy_id = body["deploy_id"]

    node = node_id()
    register_node(stack, node, DeployGpu.H200_141GB, 4)

    def placed() -> dict[str, Any] | None:
        got = user.get(f"/deploy/{deploy_id}").json()
        return got if got["status"] == "deploying" else None

    got = wait_until(placed, message="the instance placed")
    assert got["fail_reason"] == "" and got["instances"] == {"running": 0, "pending": 1}
    [instance] = got["instance_details"]
    assert instance["status"] == "placed" and instance["node_id"] == node and len(instance["device_indexes"]) == 2

    # the decision is on the log, decided by the cluster aggregate, caused by the deployment's creation
    mine = [e for e in events(stack) if e["payload"].get("instance", {}).get("deploy_id") == deploy_id]
    told = [(e["type"], e["payload"].get("reason"), e["payload"].get("node_id"), e["occurred_at"]) for e in mine]
    assert [e["type"] for e in mine] == ["instance.queued", "instance.placed"], told
    assert all(e["aggregate_type"] == "cluster" and e["aggregate_id"] == CLUSTER_ID for e in mine)
    assert mine[1]["payload"]["node_id"] == node

    # the admin view of the node shows which devices the instance holds
    nodes = admin.get("/v2/nodes")
    assert nodes.status_code == 200, nodes.text
    [listed] = [n for n in nodes.json()["data"] if n["node_id"] == node]
    assert listed["used"] == 2 and listed["free"] == 2 and not listed["lost"]
    held = [d["index"] for d in listed["devices"] if d["instance_id"] == instance["instance_id"]]
    assert held == instance["device_indexes"]
    assert user.get("/v2/nodes").status_code == 403


def test_scale_and_delete_release_the_gpus(user: Api, admin: Api, stack: Stack) -> None:
    node = node_id()
    register_node(stack, node, DeployGpu.B300_270GB, 2)
    wait_until(lambda: any(n["node_id"] == node for n in admin.get("/v2/nodes").json()["data"]), message="the node")
    body = deploy(user, gpu="B300-270GB", settings={"min_instances": 1, "max_instances": 3})
    deploy_id = body["deploy_id"]
    assert body["status"] == "deploying" and body["instances"]["pending"] == 1

    scaled = user.put(f"/deploy/{deploy_id}", params=WAIT, json={"settings": {"min_instances": 3, "max_instances": 3}})
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["settings"] == {"min_instances": 3, "max_instances": 3}

    def instances(status: str, count: int) -> dict[str, Any] | None:
        got = user.get(f"/deploy/{deploy_id}").json()
        return got if got["status"] == status and len(got["instance_details"]) == count else None

    got = wait_until(lambda: instances("pending", 3), message="three instances, one pending")
    states = sorted(i["status"] for i in got["instance_details"])
    # The message (the B300 events, for a failure's reader) is only built when the assertion fails.
    assert states == ["pending", "placed", "placed"], (
        got["instance_details"],
        [f"{e['type']} {e['payload']}" for e in events(stack) if "B300" in str(e["payload"])],
    )
    assert got["fail_reason"] == "no node has 1 free B300-270GB GPU (all 2 in use)"

    assert (
        user.put(
            f"/deploy/{deploy_id}", params=WAIT, json={"settings": {"min_instances": 3, "max_instances": 2}}
        ).status_code
        == 422
    )
    assert any(d["deploy_id"] == deploy_id for d in user.get("/deploy/list").json())

    deleted = user.delete(f"/deploy/{deploy_id}", params=WAIT)
    assert deleted.status_code == 204, deleted.text
    gone = wait_until(lambda: instances("deleted", 0), message="the instances released")
    assert gone["instances"] == {"running": 0, "pending": 0}
    assert not any(d["deploy_id"] == deploy_id for d in user.get("/deploy/list").json())
    [listed] = [n for n in admin.get("/v2/nodes").json()["data"] if n["node_id"] == node]
    assert listed["used"] == 0 and listed["free"] == 2
    again = user.delete(f"/deploy/{deploy_id}", params=WAIT)
    assert again.status_code == 404 and again.json()["detail"][0]["loc"] == ["path", "deploy_id"]
    assert user.put(f"/deploy/{deploy_id}", json={"settings": {"min_instances": 1}}).status_code == 404
    released = [e for e in events(stack) if e["type"] == "instance.released" and e["payload"]["deploy_id"] == deploy_id]
    assert len(released) == 3


def test_without_wait_answers_202_and_the_deployment_appears(user: Api) -> None:
    accepted = user.post("/deploy/llm", json={"model_name": "org/tiny", "gpu": "A100-80GB"})
    assert accepted.status_code == 202, accepted.text
    location = accepted.headers["location"]
    done = wait_until(lambda: (s := user.get(location).json())["status"] != "pending" and s, message="the outcome")
    assert done["status"] == "succeeded" and done["event_type"] == "deployment.created"
    got = wait_until(
        lambda: (d := user.get(f"/deploy/{done['aggregate_id']}").json())["status"] == "pending" and d,
        message="the pending deployment",
    )
    assert got["fail_reason"] == "no node has any A100-80GB GPU"


def test_bad_input_is_a_422_with_the_field(user: Api) -> None:
    def refused(body: dict[str, Any]) -> list[dict[str, Any]]:
        answer = user.post("/deploy/llm", params=WAIT, json={"model_name": "org/tiny", "gpu": "L4-24GB", **body})
        assert answer.status_code == 422, answer.text
        return answer.json()["detail"]  # type: ignore[no-any-return]

    assert refused({"gpu": "T4-16GB"})[0]["loc"] == ["body", "gpu"]
    assert refused({"num_gpus": 0})[0]["loc"] == ["body", "num_gpus"]
    assert refused({"num_gpus": 9})[0]["loc"] == ["body", "num_gpus"]
    assert refused({"max_batch_size": 0})[0]["loc"] == ["body", "max_batch_size"]
    assert refused({"max_batch_size": 257})[0]["loc"] == ["body", "max_batch_size"]
    assert refused({"settings": {"min_instances": 2, "max_instances": 1}})[0]["loc"][:2] == ["body", "settings"]
    assert refused({"surprise": 1})[0]["loc"] == ["body", "surprise"]
    # extra_args are judged by the agent against vLLM's allowlist, every reason in the answer
    [problem] = refused({"extra_args": ["--host", "0.0.0.0", "--trust-remote-code", "--max-model-len", "4096"]})
    assert problem["loc"] == ["body", "extra_args"] and problem["type"] == "invalid"
    assert "--host is set by the node agent" in problem["msg"]
    assert "--trust-remote-code would run Python code" in problem["msg"]
    assert "4096" not in problem["msg"]  # the allowed flag is not among the problems
    ok = deploy(user, gpu="L4-24GB", extra_args=["--max-model-len", "4096", "--enforce-eager"])
    assert ok["extra_args"] == ["--max-model-len", "4096", "--enforce-eager"]
    missing = user.get("/deploy/nosuchdeploy")
    assert missing.status_code == 404 and missing.json()["detail"][0]["loc"] == ["path", "deploy_id"]


def test_the_hf_token_is_sealed_and_masked(user: Api, stack: Stack) -> None:
    token = f"hf_{secrets.token_urlsafe(24)}"
    body = deploy(user, gpu="L40S-48GB", hf={"repo": "org/private", "token": token})
    assert body["config"]["weights"]["token"] == "hf_****"
    got = user.get(f"/deploy/{body['deploy_id']}")
    listed = user.get("/deploy/list")
    for text in (got.text, listed.text):
        assert token not in text and token[3:] not in text
    assert got.json()["config"]["weights"] == {"repo": "org/private", "revision": None, "token": "hf_****"}
    [created] = [
        e for e in events(stack) if e["type"] == "deployment.created" and e["aggregate_id"] == body["deploy_id"]
    ]
    assert created["payload"]["spec"]["weights"]["sealed_token"].startswith("v1.")
    for topic in (COMMANDS.name, EVENTS.name):
        for record in read_topic(stack, topic):
            raw = b"".join([record.key or b"", record.value or b"", *record.headers.values()])
            assert token[3:].encode() not in raw, f"the token in clear on {topic} at offset {record.offset}"
    for path in [*sorted((stack.data_dir / "logs").glob("*")), stack.data_dir / "up.log"]:
        assert token[3:].encode() not in (Path(path).read_bytes() if Path(path).is_file() else b"")


def send_command(stack: Stack, payload: Any, aggregate_id: str) -> str:
    command = envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR)
    with produced(stack.bootstrap) as producer:
        producer.send(COMMANDS.name, encode(command), key=key_for(command))
    return command.command_id


def test_a_report_runs_it_and_a_silent_node_s_instance_moves(user: Api, admin: Api, stack: Stack) -> None:
    first, second = sorted([node_id(), node_id()])
    register_node(stack, first, DeployGpu.RTXPRO6000_96GB, 1)
    wait_until(lambda: any(n["node_id"] == first for n in admin.get("/v2/nodes").json()["data"]), message="the node")
    body = deploy(user, gpu="RTXPRO6000-96GB")
    deploy_id = body["deploy_id"]
    [instance] = body["instance_details"]
    assert instance["node_id"] == first

    # a node agent reports the instance running
    report = ReportInstance(
        instance_id=instance["instance_id"], node_id=first, status=InstanceStatus.RUNNING, endpoint="http://n1:8000"
    )
    send_command(stack, report, deploy_id)
    running = wait_until(
        lambda: (d := user.get(f"/deploy/{deploy_id}").json())["status"] == "running" and d, message="running"
    )
    assert running["instances"] == {"running": 1, "pending": 0}
    assert running["instance_details"][0]["endpoint"] == "http://n1:8000"

    # the node falls silent: a liveness check drops it, and the instance is placed on the node that joined since
    register_node(stack, second, DeployGpu.RTXPRO6000_96GB, 1)
    now = datetime.now(UTC)
    check = CheckNodes(checked_at=now, timeout_s=30, last_seen={first: now - timedelta(minutes=5), second: now})
    send_command(stack, check, CLUSTER_ID)
    moved = wait_until(
        lambda: (d := user.get(f"/deploy/{deploy_id}").json())["instance_details"][0]["node_id"] == second and d,
        message="the instance moved",
    )
    assert moved["status"] == "deploying" and moved["instance_details"][0]["status"] == "placed"
    nodes = {n["node_id"]: n for n in admin.get("/v2/nodes").json()["data"]}
    assert nodes[first]["lost"] and "no heartbeat for 300s" in nodes[first]["lost_reason"]
    assert nodes[first]["free"] == 0 and nodes[second]["used"] == 1
    # a late report from the old node changes nothing
    late = send_command(stack, report, deploy_id)
    outcome = wait_until(
        lambda: (s := user.get(f"/v2/commands/{late}").json())["status"] != "pending" and s, message="the late report"
    )
    assert outcome["event_type"] == "instance.started"  # recorded on the log, and projected
    assert user.get(f"/deploy/{deploy_id}").json()["status"] == "deploying"


def test_a_node_that_never_heartbeats_is_dropped_by_the_worker_and_its_instance_waits(
    user: Api, admin: Api, stack: Stack
) -> None:
    node = node_id()
    register_node(stack, node, DeployGpu.B200_180GB, 1)
    wait_until(lambda: any(n["node_id"] == node for n in admin.get("/v2/nodes").json()["data"]), message="the node")
    body = deploy(user, gpu="B200-180GB")
    assert body["instance_details"][0]["node_id"] == node, body

    def dropped() -> dict[str, Any] | None:
        [listed] = [n for n in admin.get("/v2/nodes").json()["data"] if n["node_id"] == node]
        return listed if listed["lost"] else None

    # The stack's node timeout is 30 s (LORAPLANE_NODE_TIMEOUT_S); the worker checks every quarter of it.
    listed = wait_until(dropped, timeout=90, interval=0.5, message="the silent node dropped")
    assert "no heartbeat" in listed["lost_reason"]

    # The decision's next event (its instance queued) may be projected a batch after the node's drop.
    def waiting() -> dict[str, Any] | None:
        got: dict[str, Any] = user.get(f"/deploy/{body['deploy_id']}").json()
        return got if got["status"] != "deploying" else None

    got = wait_until(waiting, timeout=10, message="the instance re-placed or queued")
    assert got["status"] == "pending" and got["fail_reason"] == "no node has any B200-180GB GPU", got
    # The stack's own node agent heartbeats, so it is never dropped.
    [agent] = [n for n in admin.get("/v2/nodes").json()["data"] if n["node_id"] == "test-cpu-node"]
    assert not agent["lost"]


def test_serving_a_lora_refuses_bad_input_with_the_field(user: Api) -> None:
    body = deploy(user, gpu="A100-80GB")  # pending: no node has one
    deploy_id = body["deploy_id"]

    def refused(answer: Any, status: int, loc: list[str]) -> str:
        assert answer.status_code == status, answer.text
        [detail] = answer.json()["detail"]
        assert detail["loc"] == loc, detail
        return str(detail["msg"])

    missing = user.post("/deploy/lora", json={"deploy_id": deploy_id})
    refused(missing, 422, ["body", "lora_name"])
    nowhere = user.post("/deploy/lora", json={"deploy_id": "no-such-deploy", "lora_name": "x"})
    assert "does not exist" in refused(nowhere, 404, ["body", "deploy_id"])
    unknown = user.post("/deploy/lora", json={"deploy_id": deploy_id, "lora_name": f"nothing-{uuid.uuid4().hex}"})
    assert "does not exist" in refused(unknown, 404, ["body", "lora_name"])
    for huge in (3828269151575406874198016, 10**9):
        # a version past any the registry can hold is a 422, not an overflow in the read model (found by the fuzzer)
        served = {"deploy_id": deploy_id, "lora_name": "x", "version": huge}
        refused(user.post("/deploy/lora", json=served), 422, ["body", "version"])
        checked = {"deploy_id": deploy_id, "version": huge}
        refused(user.post("/api/v1/lora/x/check", json=checked), 422, ["body", "version"])
    not_served = user.delete(f"/deploy/{deploy_id}/lora/unserved", params=WAIT)
    assert "does not serve" in refused(not_served, 404, ["path", "lora_name"])

    check = user.post("/api/v1/lora/anything/check", json={"deploy_id": "no-such-deploy"})
    refused(check, 404, ["body", "deploy_id"])
    wrong = user.post("/api/v1/lora/anything/inspect", json={"deploy_id": deploy_id})
    assert "/check" in refused(wrong, 404, ["path"])
    bad_rank = user.post("/deploy/llm", json={"model_name": "m", "gpu": "cpu", "lora": {"max_lora_rank": 12}})
    assert "max_lora_rank must be one of" in refused(bad_rank, 422, ["body", "lora"])
    assert user.delete(f"/deploy/{deploy_id}", params=WAIT).status_code == 204


def test_a_forced_delete_without_wait_still_deletes_a_served_lora(user: Api, hub_server: FakeHub) -> None:
    # A deployment of the tiny Llama that no node takes: an Empower LoRA of that base model is served on it anyway.
    body = deploy(user, gpu="A100-80GB", hf={"repo": TINY_BASE_MODEL})
    deploy_id = body["deploy_id"]
    name = f"served-{uuid.uuid4().hex[:8]}"
    hub_server.repos[f"tests/{name}"] = FakeRepo.single(peft_repo_files())
    registered = user.post(
        "/api/v1/lora", params=WAIT, json={"model_source": "HF_HUB", "model_name": f"tests/{name}", "name": name}
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["active_deployment"]["deploy_id"] == deploy_id

    assert user.delete(f"/api/v1/lora/{name}").status_code == 409
    accepted = user.delete(f"/api/v1/lora/{name}", params={"force": "true"})
    assert accepted.status_code == 202, accepted.text
    wait_until(lambda: user.get(f"/api/v1/lora/{name}").status_code == 404, message="the LoRA deleted")
    wait_until(lambda: user.get(f"/deploy/{deploy_id}").json()["adapters"] == [], message="no longer served")
    assert user.delete(f"/deploy/{deploy_id}", params=WAIT).status_code == 204
