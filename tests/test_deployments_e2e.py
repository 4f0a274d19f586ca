"""Seed 003 end to end with real vLLM: the stack's node agent serves a tiny Llama from the (fake) Hub on this CPU,
and LoRAs registered through the Empower API are hot-loaded onto it through `POST /deploy/lora`.

One deployment serves the whole module (a vLLM start takes about a minute here); the tests run in file order.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from infra.vllm_process import VllmApiError, VllmClient
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Api, deploy_and_wait_running, engine_key, wait_until
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

BASE_REPO = "loraplane-tests/e2e-llama"
SERVED = "e2e-llama"
PROMPT = "The quick brown fox"
START_TIMEOUT_S = 900.0
WAIT = {"wait": 60}


@dataclass
class Served:
    deploy_id: str
    instance_id: str
    endpoint: str
    key: str  # the engine's own API key (the gateway's; the test reads it from the log)
    adapters: dict[str, str]  # LoRA name -> its completion, seen on the first load


def completion(served: Served, model: str) -> str:
    """vLLM's own answer, asked directly (not through the gateway)."""

    async def ask() -> str:
        async with VllmClient(served.endpoint, api_key=served.key) as client:
            return await client.completion(model, PROMPT, 12)

    return asyncio.run(ask())


def deployment(user: Api, deploy_id: str) -> dict[str, Any]:
    answer = user.get(f"/deploy/{deploy_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def loaded_on(body: dict[str, Any], name: str) -> list[str]:
    return [
        i["instance_id"]
        for i in body["instance_details"]
        for a in i["adapters"]
        if a["name"] == name and a["status"] == "loaded"
    ]


def vllm_pid(endpoint: str) -> int:
    port = int(endpoint.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    raise AssertionError(f"nothing listens on {endpoint}")


def register_lora(user: Api, hub: FakeHub, name: str, directory: Path) -> None:
    hub.repos[f"loraplane-tests/{name}"] = FakeRepo.single(files_of(directory))
    body = {
        "model_source": "HF_HUB",
        "model_name": f"loraplane-tests/{name}",
        "name": name,
        "base_model_name": BASE_REPO,
    }
    answer = user.post("/api/v1/lora", json=body, params=WAIT)
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def served(
    user_key: str, stack: Any, hub_server: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("e2e-models")
    base = make_tiny_llama(root / "base")
    hub_server.repos[BASE_REPO] = FakeRepo.single(files_of(base))
    for name, seed, rank in (("e2e-lora-one", 1, 8), ("e2e-lora-two", 2, 8), ("e2e-lora-wide", 3, 16)):
        register_lora(
            Api(stack, user_key),
            hub_server,
            name,
            make_lora_adapter(base, root / name, seed=seed, rank=rank, base_model_name=BASE_REPO),
        )
    user = Api(stack, user_key)
    body = deploy_and_wait_running(user, cpu_deploy_body(SERVED, BASE_REPO), START_TIMEOUT_S)
    deploy_id = body["deploy_id"]
    [instance] = body["instance_details"]
    try:
        key = engine_key(stack, instance["instance_id"])
        yield Served(deploy_id, instance["instance_id"], instance["endpoint"], key, {})
    finally:
        user.delete(f"/deploy/{deploy_id}", params=WAIT)
        user.close()


def test_a_deployed_lora_answers_differently_from_the_base_model(user: Api, served: Served) -> None:
    base = completion(served, SERVED)
    # vLLM runs with a key of its own: nothing but the gateway (and the node) can call it.
    refused = httpx.post(f"{served.endpoint}/v1/completions", json={"model": SERVED, "prompt": PROMPT}, timeout=30)
    assert refused.status_code == 401, refused.text
    answer = user.post("/deploy/lora", params=WAIT, json={"deploy_id": served.deploy_id, "lora_name": "e2e-lora-one"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    [instance] = body["instance_details"]
    assert loaded_on(body, "e2e-lora-one") == [instance["instance_id"]], body
    [served_lora] = body["adapters"]
    assert served_lora["name"] == "e2e-lora-one" and served_lora["adapter"] == "default/e2e-lora-one"
    assert served_lora["instances"] == [instance["instance_id"]]

    one = completion(served, "e2e-lora-one")
    assert one != base
    served.adapters["e2e-lora-one"] = one

    answer = user.post("/deploy/lora", params=WAIT, json={"deploy_id": served.deploy_id, "lora_name": "e2e-lora-two"})
    assert answer.status_code == 200, answer.text
    two = completion(served, "e2e-lora-two")
    assert two not in (base, one)
    served.adapters["e2e-lora-two"] = two


def test_the_pre_flight_check_and_the_deploy_refuse_a_rank_above_the_instance_s(user: Api, served: Served) -> None:
    ok = user.post("/api/v1/lora/e2e-lora-one/check", json={"deploy_id": served.deploy_id})
    assert ok.status_code == 200, ok.text
    assert ok.json()["verdict"] == "compatible" and ok.json()["reasons"] == []

    check = user.post("/api/v1/lora/e2e-lora-wide/check", json={"deploy_id": served.deploy_id})
    assert check.status_code == 200, check.text
    assert check.json()["verdict"] == "incompatible"
    [reason] = check.json()["reasons"]
    assert "rank 16 is above the instance's max_lora_rank 8" in reason

    refused = user.post("/deploy/lora", params=WAIT, json={"deploy_id": served.deploy_id, "lora_name": "e2e-lora-wide"})
    assert refused.status_code == 422, refused.text
    [detail] = refused.json()["detail"]
    assert detail["loc"] == ["body", "lora_name"] and reason in detail["msg"]


def test_deleting_a_served_lora_is_a_409_naming_the_deployment(user: Api, served: Served) -> None:
    answer = user.delete("/api/v1/lora/e2e-lora-two", params=WAIT)
    assert answer.status_code == 409, answer.text
    assert served.deploy_id in answer.text
    assert completion(served, "e2e-lora-two") == served.adapters["e2e-lora-two"]


def test_a_killed_vllm_is_reported_failed_then_restarted_with_its_adapters(user: Api, served: Served) -> None:
    pid = vllm_pid(served.endpoint)
    os.kill(pid, signal.SIGKILL)

    def failed() -> dict[str, Any] | None:
        body = deployment(user, served.deploy_id)
        [instance] = body["instance_details"]
        return instance if instance["status"] in ("failed", "starting") and instance["reason"] else None

    instance = wait_until(failed, timeout=60, interval=0.2, message="the instance reported failed")
    assert "exited" in instance["reason"], instance

    def reloaded() -> dict[str, Any] | None:
        body = deployment(user, served.deploy_id)
        if body["status"] != "running":
            return None
        return body if {a["name"] for a in body["adapters"] if a["instances"]} == set(served.adapters) else None

    body = wait_until(reloaded, timeout=START_TIMEOUT_S, interval=1.0, message="the restart with the adapters")
    [instance] = body["instance_details"]
    served.endpoint = instance["endpoint"]
    assert vllm_pid(served.endpoint) != pid
    for name, text in served.adapters.items():
        assert completion(served, name) == text, name


def test_undeploy_unloads_then_a_forced_delete_unloads_everywhere(user: Api, served: Served) -> None:
    answer = user.delete(f"/deploy/{served.deploy_id}/lora/e2e-lora-one", params=WAIT)
    assert answer.status_code == 204, answer.text
    assert loaded_on(deployment(user, served.deploy_id), "e2e-lora-one") == []
    with pytest.raises(VllmApiError) as refused:
        completion(served, "e2e-lora-one")
    assert refused.value.status == 404

    answer = user.delete("/api/v1/lora/e2e-lora-two", params={**WAIT, "force": "true"})
    assert answer.status_code == 204, answer.text
    body = deployment(user, served.deploy_id)
    assert body["adapters"] == [] and loaded_on(body, "e2e-lora-two") == []
    assert user.get("/api/v1/lora/e2e-lora-two").status_code == 404


def test_an_empower_lora_of_the_base_model_is_served_at_once_with_its_active_deployment(
    user: Api, stack: Any, hub_server: FakeHub, served: Served, tmp_path_factory: pytest.TempPathFactory
) -> None:
    root = tmp_path_factory.mktemp("auto")
    base_dir = make_tiny_llama(root / "base")
    directory = make_lora_adapter(base_dir, root / "auto", seed=4, base_model_name=BASE_REPO)
    hub_server.repos["loraplane-tests/e2e-lora-auto"] = FakeRepo.single(files_of(directory))
    body = {"model_source": "HF_HUB", "model_name": "loraplane-tests/e2e-lora-auto", "name": "e2e-lora-auto"}
    answer = user.post("/api/v1/lora", json=body, params=WAIT)
    assert answer.status_code == 200, answer.text
    active = answer.json()["active_deployment"]
    assert active is not None, answer.json()
    assert active["deploy_id"] == served.deploy_id and active["base_model_name"] == BASE_REPO
    assert active["model_name"] == "loraplane-tests/e2e-lora-auto" and active["model_source"] == "HF_HUB"
    assert set(active) >= {"base_model_name", "created_at", "creator", "hf_revision", "model_name", "model_source"}
    assert user.get("/api/v1/lora/e2e-lora-auto").json()["active_deployment"] == active

    loaded = wait_until(
        lambda: loaded_on(deployment(user, served.deploy_id), "e2e-lora-auto"), timeout=60, message="auto loaded"
    )
    assert len(loaded) == 1
    assert completion(served, "e2e-lora-auto") != completion(served, SERVED)


def test_deleting_the_deployment_stops_vllm(user: Api, served: Served) -> None:
    vllm = psutil.Process(vllm_pid(served.endpoint))
    tree = [vllm, *vllm.children(recursive=True)]
    answer = user.delete(f"/deploy/{served.deploy_id}", params=WAIT)
    assert answer.status_code == 204, answer.text
    _, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, f"left behind: {alive}"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{served.endpoint}/health", timeout=2)
