"""The inference gateway end to end with real vLLM: the official `openai` client calls the stack's API URL with a
loraplane key, and the stack's node agent serves a tiny Llama (made here, served from the local Hub) on this CPU.

Every answer is compared with what vLLM itself answers when asked directly (with the engine's own key, which the test
reads from the log as only the gateway would). The LoRAs are registered before the deployment exists, so they are
stored and not served: the gateway loads them on demand. The deployment has two adapter slots.

One deployment serves the module (a vLLM start takes about a minute here); the tests run in file order.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from infra.vllm_process import VllmClient
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Api, Stack, deploy_and_wait_running, engine_key, wait_until
from tests.tiny_llama import CHAT_TEMPLATE, cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

BASE_REPO = "loraplane-tests/gw-llama"
SERVED = "gw-llama"
PROMPT = "The quick brown fox"
START_TIMEOUT_S = 900.0
WAIT = {"wait": 60}
LORAS = ("gw-pinned", "gw-cold-a", "gw-cold-b", "gw-cold-c")


@dataclass
class Engine:
    deploy_id: str
    endpoint: str
    key: str

    def completion(self, model: str, prompt: str = PROMPT, max_tokens: int = 12) -> dict[str, Any]:
        """vLLM's own answer, asked directly."""
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return self._post("/v1/completions", body)

    def chat(self, model: str, content: str) -> dict[str, Any]:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
        return self._post("/v1/chat/completions", body)

    def adapters(self) -> set[str]:
        async def ask() -> dict[str, Any]:
            async with VllmClient(self.endpoint, api_key=self.key) as client:
                return await client.model_cards()

        return {m["id"] for m in asyncio.run(ask())["data"] if m.get("parent")}

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.key}"}
        answer = httpx.post(f"{self.endpoint}{path}", json=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


def deployment(user: Api, deploy_id: str) -> dict[str, Any]:
    answer = user.get(f"/deploy/{deploy_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def served_adapters(user: Api, deploy_id: str, names: set[str]) -> dict[str, Any] | None:
    """The deployment's adapters, once the read model shows exactly `names` (it follows the log a moment later)."""
    served = {a["name"]: a for a in deployment(user, deploy_id)["adapters"]}
    return served if set(served) == names else None


@pytest.fixture(scope="module")
def engine(
    user_key: str, stack: Stack, hub_server: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("gateway-e2e")
    base = make_tiny_llama(root / "base", chat_template=CHAT_TEMPLATE)
    hub_server.repos[BASE_REPO] = FakeRepo.single(files_of(base))
    user = Api(stack, user_key)
    for seed, name in enumerate(LORAS, start=11):
        directory = make_lora_adapter(base, root / name, seed=seed, base_model_name=BASE_REPO)
        hub_server.repos[f"loraplane-tests/{name}"] = FakeRepo.single(files_of(directory))
        body = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{name}", "name": name}
        answer = user.post("/api/v1/lora", json=body, params=WAIT)
        assert answer.status_code == 200, answer.text
    body = deploy_and_wait_running(user, cpu_deploy_body(SERVED, BASE_REPO), START_TIMEOUT_S)
    deploy_id = body["deploy_id"]
    [instance] = body["instance_details"]
    try:
        yield Engine(deploy_id, instance["endpoint"], engine_key(stack, instance["instance_id"]))
    finally:
        user.delete(f"/deploy/{deploy_id}", params=WAIT)
        user.close()


@pytest.fixture()
def client(stack: Stack, user_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=user_key, max_retries=0, timeout=120)


def test_the_base_model_and_a_pinned_lora_answer_exactly_as_vllm_does(
    client: openai.OpenAI, user: Api, engine: Engine
) -> None:
    answer = user.post("/deploy/lora", params=WAIT, json={"deploy_id": engine.deploy_id, "lora_name": "gw-pinned"})
    assert answer.status_code == 200, answer.text
    for model in (SERVED, "gw-pinned"):
        direct = engine.completion(model)
        through = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
        assert through.choices[0].text == direct["choices"][0]["text"]
        assert through.usage is not None and through.usage.model_dump() == direct["usage"]
    assert engine.completion("gw-pinned")["choices"][0]["text"] != engine.completion(SERVED)["choices"][0]["text"]

    direct_chat = engine.chat("gw-pinned", "hello fox")
    chat = client.chat.completions.create(
        model="gw-pinned", messages=[{"role": "user", "content": "hello fox"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.content == direct_chat["choices"][0]["message"]["content"]


def test_streaming_gives_the_same_text(client: openai.OpenAI, engine: Engine) -> None:
    whole = client.completions.create(model="gw-pinned", prompt=PROMPT, max_tokens=12, temperature=0)
    chunks = list(
        client.completions.create(model="gw-pinned", prompt=PROMPT, max_tokens=12, temperature=0, stream=True)
    )
    assert len(chunks) > 1
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    chat = client.chat.completions.create(
        model=SERVED, messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in chat if c.choices)
    assert text == engine.chat(SERVED, "hello")["choices"][0]["message"]["content"]


def test_a_stored_unserved_lora_answers_its_first_request(client: openai.OpenAI, user: Api, engine: Engine) -> None:
    assert "gw-cold-a@v1" not in engine.adapters()
    began = time.monotonic()
    first = client.completions.create(model="gw-cold-a", prompt=PROMPT, max_tokens=12, temperature=0)
    print(f"cold LoRA answered in {time.monotonic() - began:.2f}s")
    assert first.model == "gw-cold-a@v1"
    assert first.choices[0].text == engine.completion("gw-cold-a@v1")["choices"][0]["text"]
    assert first.choices[0].text not in (
        engine.completion(SERVED)["choices"][0]["text"],
        engine.completion("gw-pinned")["choices"][0]["text"],
    )
    served = wait_until(lambda: served_adapters(user, engine.deploy_id, {"gw-pinned", "gw-cold-a@v1"}))
    assert served["gw-cold-a@v1"]["on_demand"] is True and served["gw-pinned"]["on_demand"] is False


def test_with_the_slots_full_the_least_recently_used_on_demand_lora_is_evicted_never_the_pinned(
    client: openai.OpenAI, user: Api, engine: Engine
) -> None:
    # Two slots: gw-pinned and gw-cold-a. gw-cold-b evicts gw-cold-a; then gw-cold-c evicts gw-cold-b.
    for model, gone in (("gw-cold-b", "gw-cold-a@v1"), ("gw-cold-c", "gw-cold-b@v1")):
        answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
        assert answer.choices[0].text == engine.completion(f"{model}@v1")["choices"][0]["text"]
        wait_until(lambda model=model: served_adapters(user, engine.deploy_id, {"gw-pinned", f"{model}@v1"}))
        wait_until(lambda gone=gone: gone not in engine.adapters(), timeout=30, message=f"{gone} unloaded")
        assert "gw-pinned" in engine.adapters()
    pinned = client.completions.create(model="gw-pinned", prompt=PROMPT, max_tokens=12, temperature=0)
    assert pinned.choices[0].text == engine.completion("gw-pinned")["choices"][0]["text"]
    # An evicted LoRA is loaded again on its next request (evicting the least recently used: gw-cold-c).
    again = client.completions.create(model="gw-cold-a", prompt=PROMPT, max_tokens=12, temperature=0)
    assert again.choices[0].text == engine.completion("gw-cold-a@v1")["choices"][0]["text"]


def test_models_list_what_can_be_called_and_what_is_loaded(client: openai.OpenAI, engine: Engine) -> None:
    models = {m.id: m.model_extra or {} for m in client.models.list().data}
    assert models[SERVED]["loaded"] is True and models[SERVED]["parent"] is None
    assert models["gw-pinned"]["parent"] == SERVED and models["gw-pinned"]["loaded"] is True
    assert models["gw-cold-a"]["loaded"] is True and models["gw-cold-b"]["loaded"] is False
    assert models["gw-cold-b"]["parent"] == SERVED


def test_errors_and_usage_through_the_official_client(stack: Stack, engine: Engine) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key="lp_x_y", max_retries=0).models.list()
    key = stack.issue_key("user", f"e2e-usage-{uuid.uuid4().hex[:6]}")
    client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=key, max_retries=0, timeout=120)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gw-nothing", prompt=PROMPT)
    reported = [0, 0]
    for model in (SERVED, "gw-pinned"):
        answer = client.completions.create(model=model, prompt=PROMPT, max_tokens=5, temperature=0)
        assert answer.usage is not None
        reported[0] += answer.usage.prompt_tokens
        reported[1] += answer.usage.completion_tokens
    stream = client.completions.create(
        model="gw-pinned", prompt=PROMPT, max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.usage is not None
    reported[0] += last.usage.prompt_tokens
    reported[1] += last.usage.completion_tokens

    mine = Api(stack, key)

    def usage() -> dict[str, list[int]] | None:
        page = mine.get("/v2/usage", params={"bucket": "1h", "group_by": "model"}).json()
        rows = [r for b in page["data"] for r in b["results"]]
        if sum(r["num_model_requests"] for r in rows) < 3:
            return None
        return {r["model"]: [r["input_tokens"], r["output_tokens"]] for r in rows}

    found = wait_until(usage, timeout=20, interval=0.5, message="the usage rows")
    assert set(found) == {SERVED, "gw-pinned"}
    assert [sum(v[0] for v in found.values()), sum(v[1] for v in found.values())] == reported


def test_vllm_s_key_shows_in_no_log(stack: Stack, engine: Engine) -> None:
    logs = list(stack.data_dir.glob("logs/*.log"))
    assert any(log.name.startswith("vllm-") for log in logs)
    for log in logs:
        assert engine.key.encode() not in log.read_bytes(), log
