"""The inference gateway through the real stack, against engines that answer at once.

A second node agent (`loraplane node`, a real process on the stack's broker) advertises 127.0.0.2 and runs
tests/stub_engine.py as its "vLLM": each engine listens on 127.0.0.2 with an API key of its own that the node sealed
and only the gateway opens. The official `openai` client calls the stack's API URL. Real vLLM answers in
tests/test_gateway_e2e.py; here the gateway's own behaviour is tested: keys, errors, streaming, cancellation,
retries, lazy loading and eviction, usage, metrics, and the `loraplane gateway` process.

The node offers two B300-270GB GPUs: the one other test deploying on that type deletes its deployment, and the fake
nodes it registers never heartbeat, so the fixture waits until the cluster has dropped them. The tests run in file
order.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import peft_lora_files, peft_repo_files
from tests.stub_node import stub_node_agent, stub_stats, stub_text
from tests.support import Api, Stack, engine_key, events, free_port, read_topic, wait_until

BASE_REPO = "loraplane-tests/stub-llama"
SERVED = "stub-llama"
CONFIG = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'
WAIT = {"wait": 30}
TOPICS = ("loraplane.events", "loraplane.commands", "loraplane.deadletter")


@dataclass
class StubNode:
    node_id: str
    deploy_id: str
    endpoints: list[str]
    process: subprocess.Popen[bytes]
    data_dir: Path


def gateway_client(stack: Stack, key: str, url: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url or stack.api_url}/v1", api_key=key, max_retries=0, timeout=60)


def deployment(user: Api, deploy_id: str) -> dict[str, Any]:
    answer = user.get(f"/deploy/{deploy_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


GPU = "B300-270GB"


@pytest.fixture(scope="module")
def stub_node(
    stack: Stack, user_key: str, admin_key: str, hub_server: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StubNode]:
    root = tmp_path_factory.mktemp("stub-node")
    hub_server.repos[BASE_REPO] = FakeRepo.single({"config.json": CONFIG, "model.safetensors": b"w" * 16})
    user = Api(stack, user_key)
    deploy_id = None
    try:
        with stub_node_agent(stack, admin_key, hub_server, root, GPU, 2) as node:
            body = {
                "model_name": SERVED,
                "gpu": GPU,
                "hf": {"repo": BASE_REPO},
                "settings": {"min_instances": 2, "max_instances": 2},
                "lora": {"max_loras": 1, "max_lora_rank": 8},
            }
            answer = user.post("/deploy/llm", params=WAIT, json=body)
            assert answer.status_code == 200, answer.text
            deploy_id = answer.json()["deploy_id"]

            def running() -> list[str] | None:
                got = deployment(user, deploy_id)
                assert got["status"] != "failed", got["fail_reason"]
                endpoints = [i["endpoint"] for i in got["instance_details"] if i["status"] == "running"]
                return endpoints if len(endpoints) == 2 else None

            endpoints = wait_until(running, timeout=90, interval=0.3, message="both stub instances running")
            try:
                yield StubNode(node.node_id, deploy_id, sorted(endpoints), node.process, node.data_dir)
            finally:
                user.delete(f"/deploy/{deploy_id}", params=WAIT)
    finally:
        user.close()


def test_completions_reach_the_engine_on_the_node_s_address_with_the_engine_s_own_key(
    stack: Stack, user_key: str, stub_node: StubNode
) -> None:
    assert all(e.startswith("http://127.0.0.2:") for e in stub_node.endpoints), stub_node.endpoints
    client = gateway_client(stack, user_key)
    caller_trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    completion = client.completions.create(
        model=SERVED, prompt="hello there", max_tokens=5, extra_headers={"traceparent": caller_trace}
    )
    assert completion.choices[0].text == stub_text(SERVED, "hello there", 5)
    assert completion.usage is not None and completion.usage.completion_tokens == 5

    seen = [stub_stats(e) for e in stub_node.endpoints]
    headers = next(s["headers"] for s in seen if s["requests"])
    assert headers["Authorization"].startswith("Bearer ") and user_key not in headers["Authorization"]
    # The caller's trace goes on into the engine (the test stack records no spans of its own: its exporter is none).
    assert headers["traceparent"].split("-")[1] == caller_trace.split("-")[1], headers
    chat = client.chat.completions.create(model=SERVED, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.choices[0].message.content == stub_text(SERVED, "hi", 3)
    # Nothing reaches an engine without its key, from this host or any other.
    for endpoint in stub_node.endpoints:
        direct = httpx.post(f"{endpoint}/v1/completions", json={"model": SERVED, "prompt": "x"}, timeout=5)
        assert direct.status_code == 401
        guessed = httpx.post(
            f"{endpoint}/v1/completions",
            json={"model": SERVED, "prompt": "x"},
            headers={"Authorization": f"Bearer {user_key}"},
            timeout=5,
        )
        assert guessed.status_code == 401


def test_an_engine_s_key_is_in_no_log_topic_or_answer(stack: Stack, user: Api, stub_node: StubNode) -> None:
    details = deployment(user, stub_node.deploy_id)["instance_details"]
    keys = [engine_key(stack, i["instance_id"]) for i in details]
    assert all(len(k) > 30 for k in keys)
    places = {f"topic {t}": b"".join(r.value or b"" for r in read_topic(stack, t)) for t in TOPICS}
    places["GET /deploy"] = json.dumps(details).encode()
    for log in [*stack.data_dir.glob("logs/*.log"), *stub_node.data_dir.glob("logs/*.log")]:
        places[str(log)] = log.read_bytes()
    for where, data in places.items():
        assert not any(k.encode() in data for k in keys), f"an engine key in {where}"


def test_errors_are_in_openai_s_shape(stack: Stack, user_key: str, stub_node: StubNode) -> None:
    with pytest.raises(openai.AuthenticationError) as missing:
        gateway_client(stack, "lp_nope_nope").completions.create(model=SERVED, prompt="x")
    assert missing.value.status_code == 401 and missing.value.code == "invalid_api_key"

    anonymous = httpx.post(f"{stack.api_url}/v1/completions", json={"model": SERVED}, timeout=10)
    assert anonymous.status_code == 401
    assert set(anonymous.json()["error"]) == {"message", "type", "param", "code"}

    client = gateway_client(stack, user_key)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="no-such-model", prompt="x")
    assert unknown.value.code == "model_not_found"
    assert unknown.value.body["param"] == "model"  # type: ignore[index]

    headers = {"Authorization": f"Bearer {user_key}"}
    for body, param in ((b"{not json", None), (b"[1, 2]", None), (b'{"prompt": "x"}', "model")):
        bad = httpx.post(f"{stack.api_url}/v1/completions", content=body, headers=headers, timeout=10)
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["type"] == "invalid_request_error" and bad.json()["error"]["param"] == param

    for method in ("GET", "PUT", "TRACE"):
        wrong = httpx.request(method, f"{stack.api_url}/v1/chat/completions", headers=headers, timeout=10)
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST", (method, wrong.text)
        assert wrong.json()["error"]["code"] == "method_not_allowed"


def test_a_request_pinned_to_a_deployment_says_where_it_ran_and_an_unusable_pin_is_a_404(
    stack: Stack, user_key: str, stub_node: StubNode
) -> None:
    client = gateway_client(stack, user_key)
    pinned = {"X-Loraplane-Deployment": stub_node.deploy_id}
    raw = client.completions.with_raw_response.create(model=SERVED, prompt="pin me", max_tokens=3, extra_headers=pinned)
    assert raw.headers["x-loraplane-deployment"] == stub_node.deploy_id
    with Api(stack, user_key) as user:
        instances = {i["instance_id"] for i in deployment(user, stub_node.deploy_id)["instance_details"]}
    assert raw.headers["x-loraplane-instance"] in instances
    assert raw.parse().choices[0].text == stub_text(SERVED, "pin me", 3)
    unpinned = client.completions.with_raw_response.create(model=SERVED, prompt="x", max_tokens=1)
    assert unpinned.headers["x-loraplane-deployment"] == stub_node.deploy_id  # said on every answer

    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(
            model=SERVED, prompt="x", max_tokens=1, extra_headers={"X-Loraplane-Deployment": "no-such-deployment"}
        )
    assert unknown.value.code == "deployment_not_found"
    assert "'no-such-deployment' does not exist" in unknown.value.message
    assert unknown.value.body["param"] == "X-Loraplane-Deployment"  # type: ignore[index]
    blank = httpx.post(
        f"{stack.api_url}/v1/completions",
        json={"model": SERVED, "prompt": "x"},
        headers={"Authorization": f"Bearer {user_key}", "X-Loraplane-Deployment": ""},
        timeout=10,
    )
    assert blank.status_code == 400 and blank.json()["error"]["param"] == "X-Loraplane-Deployment", blank.text


def test_a_model_with_no_running_instance_answers_503_with_retry_after(
    stack: Stack, user: Api, user_key: str, stub_node: StubNode
) -> None:
    # Both of the node's devices are taken by the module's deployment: this one stays pending.
    answer = user.post(
        "/deploy/llm", params=WAIT, json={"model_name": "stub-pending", "gpu": GPU, "hf": {"repo": BASE_REPO}}
    )
    assert answer.status_code == 200, answer.text
    try:
        response = httpx.post(
            f"{stack.api_url}/v1/completions",
            json={"model": "stub-pending", "prompt": "x"},
            headers={"Authorization": f"Bearer {user_key}"},
            timeout=30,
        )
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["error"]["code"] == "model_not_ready"
    finally:
        user.delete(f"/deploy/{answer.json()['deploy_id']}", params=WAIT)


def test_streaming_passes_events_through_and_strips_the_usage_chunk_unless_asked(
    stack: Stack, user_key: str, stub_node: StubNode
) -> None:
    client = gateway_client(stack, user_key)
    chunks = list(client.completions.create(model=SERVED, prompt="stream me", max_tokens=6, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == stub_text(SERVED, "stream me", 6)
    assert all(c.choices and c.usage is None for c in chunks), "a usage chunk the client did not ask for"

    asked = list(
        client.completions.create(
            model=SERVED, prompt="stream me", max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert asked[-1].choices == [] and asked[-1].usage is not None and asked[-1].usage.completion_tokens == 6


def test_a_client_that_goes_away_cancels_the_engine_s_request(stack: Stack, user_key: str, stub_node: StubNode) -> None:
    before = sum(stub_stats(e)["cancelled"] for e in stub_node.endpoints)
    body = {"model": SERVED, "prompt": "please be slow", "max_tokens": 50, "stream": True}
    headers = {"Authorization": f"Bearer {user_key}"}
    with httpx.stream("POST", f"{stack.api_url}/v1/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    # 50 tokens at 0.2 s would take 10 s; the engine hears of the disconnect at its next token.
    wait_until(
        lambda: sum(stub_stats(e)["cancelled"] for e in stub_node.endpoints) > before,
        timeout=3,
        message="the engine's stream cancelled",
    )


def register_lora(user: Api, hub: FakeHub, name: str, seed: int) -> None:
    hub.repos[f"loraplane-tests/{name}"] = FakeRepo.single(peft_repo_files(BASE_REPO, seed=seed))
    body = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{name}", "name": name}
    answer = user.post("/api/v1/lora", json=body, params=WAIT)
    assert answer.status_code == 200, answer.text


def on_demand_attaches(stack: Stack, deploy_id: str, adapter: str) -> list[dict[str, Any]]:
    return [
        e
        for e in events(stack)
        if e["type"] == "deployment.adapter_attached"
        and e["aggregate_id"] == deploy_id
        and e["payload"]["adapter"]["adapter_id"] == f"default/{adapter}"
    ]


def test_a_lora_no_deployment_can_serve_answers_400_and_one_that_fails_to_load_502_with_the_reasons(
    stack: Stack, user: Api, user_key: str, hub_server: FakeHub, stub_node: StubNode
) -> None:
    tag = uuid.uuid4().hex[:6]
    wide, unloadable = f"stub-wide-{tag}", f"stub-unloadable-{tag}"
    # Rank 16 on instances of max_lora_rank 8: stored, but refused by the pre-flight (not served at once either).
    files = {**peft_lora_files(BASE_REPO, rank=16, seed=7), "README.md": b"---\nlicense: mit\n---\n"}
    hub_server.repos[f"loraplane-tests/{wide}"] = FakeRepo.single(files)
    body = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{wide}", "name": wide}
    registered = user.post("/api/v1/lora", json=body)  # with ?wait= it would wait to be served, which it is not
    assert registered.status_code == 202, registered.text
    wait_until(lambda: user.get(f"/api/v1/lora/{wide}").json().get("status") == "ready", message=f"{wide} stored")
    client = gateway_client(stack, user_key)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=wide, prompt="x", max_tokens=2)
    assert refused.value.code == "adapter_incompatible"
    assert "rank 16 is above the instance's max_lora_rank 8" in refused.value.message
    # Served at once on the deployment (an Empower LoRA of its base model), and refused by the engine.
    hub_server.repos[f"loraplane-tests/{unloadable}"] = FakeRepo.single(peft_repo_files(BASE_REPO, seed=8))
    body = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{unloadable}", "name": unloadable}
    registered = user.post("/api/v1/lora", json=body)
    assert registered.status_code == 202, registered.text
    wait_until(
        lambda: any(
            a["name"] == unloadable and a["status"] == "failed"
            for i in deployment(user, stub_node.deploy_id)["instance_details"]
            for a in i["adapters"]
        ),
        message="the node's failed load",
    )
    with pytest.raises(openai.InternalServerError) as failed:
        client.completions.create(model=unloadable, prompt="x", max_tokens=2)
    assert failed.value.status_code == 502 and failed.value.code == "adapter_load_failed"
    assert "the stub refuses it" in failed.value.message
    undeployed = user.delete(f"/deploy/{stub_node.deploy_id}/lora/{unloadable}", params=WAIT)
    assert undeployed.status_code == 204, undeployed.text


def test_a_cold_lora_loads_once_for_many_concurrent_requests_and_lru_eviction_spares_the_pinned(
    stack: Stack, user: Api, user_key: str, hub_server: FakeHub, stub_node: StubNode
) -> None:
    tag = uuid.uuid4().hex[:6]
    pinned, cold, colder = f"stub-pinned-{tag}", f"stub-cold-{tag}", f"stub-colder-{tag}"
    # Two instances with one adapter slot each. An Empower LoRA of the base model is served at once, on demand; the
    # pinned one is then served explicitly, the two others stop being served: stored and cold.
    register_lora(user, hub_server, pinned, 1)
    answer = user.post("/deploy/lora", params=WAIT, json={"deploy_id": stub_node.deploy_id, "lora_name": pinned})
    assert answer.status_code == 200, answer.text
    for seed, name in ((2, cold), (3, colder)):
        register_lora(user, hub_server, name, seed)
        undeployed = user.delete(f"/deploy/{stub_node.deploy_id}/lora/{name}", params=WAIT)
        assert undeployed.status_code == 204, undeployed.text
    assert {a["name"] for a in deployment(user, stub_node.deploy_id)["adapters"]} == {pinned}

    client = gateway_client(stack, user_key)

    def ask(model: str) -> str:
        return client.completions.create(model=model, prompt="cold start", max_tokens=4).choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, [cold] * 8))
    assert answers == [stub_text(f"{cold}@v1", "cold start", 4)] * 8
    [attach] = [
        a for a in on_demand_attaches(stack, stub_node.deploy_id, cold) if a["payload"]["adapter"]["name"] != cold
    ]
    assert attach["payload"]["on_demand"] is True and attach["payload"]["adapter"]["name"] == f"{cold}@v1"

    # Both slots are held now (the pinned one and `cold`): `colder` evicts `cold`, never the pinned one.
    assert ask(colder) == stub_text(f"{colder}@v1", "cold start", 4)
    evicted = [
        e
        for e in events(stack)
        if e["type"] == "deployment.adapter_evicted" and e["aggregate_id"] == stub_node.deploy_id
    ]
    assert [e["payload"]["name"] for e in evicted][-1:] == [f"{cold}@v1"], evicted
    assert "least recently used" in evicted[-1]["payload"]["reason"]

    def served() -> dict[str, Any] | None:
        found = {a["name"]: a for a in deployment(user, stub_node.deploy_id)["adapters"]}
        return found if set(found) == {pinned, f"{colder}@v1"} else None

    adapters = wait_until(served, message="the read model following the eviction")
    assert adapters[pinned]["on_demand"] is False and adapters[f"{colder}@v1"]["on_demand"] is True
    assert ask(pinned) == stub_text(pinned, "cold start", 4)

    models = {m.id: m for m in client.models.list().data}
    assert models[SERVED].model_extra["loaded"] is True  # type: ignore[index]
    assert models[pinned].model_extra["parent"] == SERVED and models[pinned].model_extra["loaded"] is True  # type: ignore[index]
    assert models[cold].model_extra["loaded"] is False  # type: ignore[index]  # stored, loadable on demand
    assert client.models.retrieve(colder).id == colder


def test_a_lora_stored_while_every_slot_is_taken_waits_for_no_slot_and_loads_at_its_first_request(
    stack: Stack, user: Api, user_key: str, hub_server: FakeHub, stub_node: StubNode
) -> None:
    # The test before left both slots held: the pinned LoRA and one loaded on demand.
    held = deployment(user, stub_node.deploy_id)["adapters"]
    assert len(held) == 2, f"this test needs the deployment's two slots taken: {held}"
    late = f"stub-late-{uuid.uuid4().hex[:6]}"
    hub_server.repos[f"loraplane-tests/{late}"] = FakeRepo.single(peft_repo_files(BASE_REPO, seed=4))
    body = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{late}", "name": late}
    answer = user.post("/api/v1/lora", json=body, params=WAIT)
    # Stored, and not served at once: attached beyond the slots it would wait for one that nothing frees.
    assert answer.status_code == 200 and answer.json()["active_deployment"] is None, answer.text
    assert on_demand_attaches(stack, stub_node.deploy_id, late) == []
    # Its first request loads it on demand, evicting the least recently used on-demand LoRA.
    client = gateway_client(stack, user_key)
    text = client.completions.create(model=late, prompt="late", max_tokens=3).choices[0].text
    assert text == stub_text(f"{late}@v1", "late", 3)
    [attach] = on_demand_attaches(stack, stub_node.deploy_id, late)
    assert attach["payload"]["on_demand"] is True and attach["payload"]["adapter"]["name"] == f"{late}@v1"


def test_usage_is_recorded_per_key_and_model_and_priced(
    stack: Stack, admin: Api, user: Api, user_key: str, stub_node: StubNode
) -> None:
    other_key = stack.issue_key("user", f"usage-{uuid.uuid4().hex[:6]}")
    client = gateway_client(stack, other_key)
    expected = {"prompt": 0, "completion": 0}
    for prompt, max_tokens in (("one two three", 4), ("four", 7)):
        answer = client.completions.create(model=SERVED, prompt=prompt, max_tokens=max_tokens)
        assert answer.usage is not None
        expected["prompt"] += answer.usage.prompt_tokens
        expected["completion"] += answer.usage.completion_tokens
    streamed = list(client.completions.create(model=SERVED, prompt="five six", max_tokens=3, stream=True))
    assert streamed  # its usage came in the chunk the client did not see
    expected["prompt"] += 3
    expected["completion"] += 3
    mine = Api(stack, other_key)
    params = {"bucket": "1m", "group_by": ["model", "api_key"]}

    def totals() -> dict[str, Any] | None:
        page = mine.get("/v2/usage", params=params).json()
        results = [r for b in page["data"] for r in b["results"]]
        found = {
            "requests": sum(r["num_model_requests"] for r in results),
            "prompt": sum(r["input_tokens"] for r in results),
            "completion": sum(r["output_tokens"] for r in results),
            "cost": sum(r["cost"] for r in results),
            "models": {r["model"] for r in results},
        }
        return found if found["requests"] == 3 else None

    found = wait_until(totals, timeout=20, interval=0.5, message="the usage rows")
    assert found["prompt"] == expected["prompt"] and found["completion"] == expected["completion"]
    assert found["models"] == {SERVED}
    # The stub's base model has no price of its own: the "*" price of the test stack (0.5 a token).
    assert found["cost"] == pytest.approx(0.5 * (expected["prompt"] + expected["completion"]))

    # A user sees its own usage only; an admin sees every key's, and may pick one.
    key_id = other_key.split("_")[1]
    assert user.get("/v2/usage", params={**params, "api_key_id": key_id}).status_code == 422
    by_admin = admin.get("/v2/usage", params={**params, "api_key_id": key_id}).json()
    assert sum(r["num_model_requests"] for b in by_admin["data"] for r in b["results"]) == 3
    assert {r["api_key_id"] for b in by_admin["data"] for r in b["results"]} == {key_id}
    bad = admin.get("/v2/usage", params={"from": "yesterday"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "from"]

    # The rows are projected from the log: a replay makes the same.
    rebuilt = stack.data_dir.parent / f"usage-replay-{uuid.uuid4().hex[:6]}.db"
    assert stack.cli("replay", "--database-url", f"sqlite+aiosqlite:///{rebuilt}").returncode == 0

    def usage_rows(path: Path) -> list[tuple[Any, ...]]:
        with sqlite3.connect(path) as conn:
            return sorted(conn.execute("SELECT * FROM usage_rows WHERE api_key_id = ?", (key_id,)).fetchall())

    assert usage_rows(rebuilt) == usage_rows(stack.data_dir / "readmodel.db") != []


def test_metrics_count_requests_tokens_and_loads(stack: Stack, user_key: str, stub_node: StubNode) -> None:
    gateway_client(stack, user_key).completions.create(model=SERVED, prompt="count me", max_tokens=2)
    text = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
    assert re.search(rf'loraplane_gateway_requests_total{{model="{SERVED}",status="200"}} [1-9]', text)
    assert re.search(rf'loraplane_gateway_tokens_total{{kind="completion",model="{SERVED}"}} [1-9]', text)
    assert 'loraplane_gateway_on_demand_loads_total{model="stub-cold-' in text
    assert "loraplane_gateway_evictions_total" in text and "loraplane_gateway_time_to_first_token_seconds" in text
    assert "loraplane_gateway_in_flight" in text


def test_the_loraplane_gateway_process_serves_the_same_routes_on_its_own(
    stack: Stack, user_key: str, stub_node: StubNode, tmp_path: Path
) -> None:
    port = free_port()
    env = {**stack.cli_env(), "LORAPLANE_GATEWAY_PORT": str(port)}
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.3, message="the gateway ready")
        client = gateway_client(stack, user_key, url)
        assert SERVED in {m.id for m in client.models.list().data}
        answer = client.completions.create(model=SERVED, prompt="from the replica", max_tokens=3)
        assert answer.choices[0].text == stub_text(SERVED, "from the replica", 3)
        assert httpx.get(f"{url}/metrics", timeout=5).status_code == 200
    finally:
        process.terminate()
        code = process.wait(timeout=30)
        log.close()
    assert code == 0, (tmp_path / "gateway.log").read_text()


def test_a_request_that_finds_its_instance_gone_is_retried_on_another(
    stack: Stack, user_key: str, stub_node: StubNode
) -> None:
    """Last: it takes one of the module's engines away for good."""
    # The two instances are tied (nothing in flight), so the gateway tries them in instance-id order: close that one.
    details = httpx.get(
        f"{stack.api_url}/deploy/{stub_node.deploy_id}", headers={"Authorization": f"Bearer {user_key}"}
    ).json()["instance_details"]
    first = min(details, key=lambda i: i["instance_id"])["endpoint"]
    httpx.post(f"{first}/_stub/close", timeout=5)
    time.sleep(0.5)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{first}/health", timeout=2)

    def retries() -> float:
        text = httpx.get(f"{stack.api_url}/metrics", timeout=10).text
        match = re.search(r"^loraplane_gateway_retries_total ([0-9.]+)$", text, re.MULTILINE)
        return float(match[1]) if match else 0.0

    before = retries()
    client = gateway_client(stack, user_key)
    for i in range(3):
        answer = client.completions.create(model=SERVED, prompt=f"retry {i}", max_tokens=2)
        assert answer.choices[0].text == stub_text(SERVED, f"retry {i}", 2)
    assert retries() >= before + 1
