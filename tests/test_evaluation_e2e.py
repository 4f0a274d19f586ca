"""Evaluations end to end with real vLLM: the stack's node agent serves a tiny Llama (made here, from the local Hub),
two PEFT LoRAs of it are registered through the Empower API, and evaluations run through the API, the evaluation
agent and the gateway.

The figures are checked against independent computations: perplexity with `transformers` + `peft` on the same
weights (the same token ids: the prompt tokenized with its special tokens, the reference without), exact_match and
ROUGE-L on the texts vLLM itself answers when asked directly, the judge's grades on the same judge requests sent
straight to vLLM. A worker killed mid-run resumes and scores no item twice; a cancel stops a run; bad input answers
422 naming the field; `deploy_id` pins where a run executes, against a second deployment of the same base model on
a stub node (tests/stub_node.py) that the gateway would otherwise pick.

One vLLM deployment serves the module (a vLLM start takes about a minute here); the tests run in file order.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fake_civitai import FakeCivitai, FakeFile
from tests.fake_hub import FakeHub, FakeRepo
from tests.peft_artifacts import kohya_image_lora
from tests.stub_node import stub_node_agent, stub_stats, stub_text, unused_gpu_type
from tests.support import Api, Stack, deploy_and_wait_running, engine_key, events, wait_until
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

BASE_REPO = "loraplane-tests/ev-llama"
SERVED = "ev-llama"
LORAS = {"ev-a": 31, "ev-b": 32}
START_TIMEOUT_S = 900.0
WAIT = {"wait": 60}
ITEMS = [
    {"prompt": "The quick brown fox", "reference": " jumps over the lazy dog."},
    {"prompt": "A LoRA adapter changes", "reference": " a few low-rank matrices of a base model."},
    {"prompt": "Kafka keeps the log of record,", "reference": " every decision is an event"},
    {"prompt": "Once upon a time there was", "reference": " a small language model"},
    {"prompt": "numbers", "reference": " 0 1 2 3 4 5"},
]
MAX_TOKENS = 8


@dataclass
class Setup:
    deploy_id: str
    endpoint: str
    key: str
    base_dir: Path
    lora_dirs: dict[str, Path]

    def completion(self, model: str, prompt: str) -> str:
        """vLLM's own answer, asked directly with the engine's key."""
        body = {"model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
        headers = {"Authorization": f"Bearer {self.key}"}
        answer = httpx.post(f"{self.endpoint}/v1/completions", json=body, headers=headers, timeout=120)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["choices"][0]["text"])


@pytest.fixture(scope="module")
def setup(
    admin_key: str, stack: Stack, hub_server: FakeHub, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Setup]:
    admin = Api(stack, admin_key)
    root = tmp_path_factory.mktemp("evaluation-e2e")
    base = make_tiny_llama(root / "base")
    hub_server.repos[BASE_REPO] = FakeRepo.single(files_of(base))
    dirs = {}
    for name, seed in LORAS.items():
        dirs[name] = make_lora_adapter(base, root / name, seed=seed, base_model_name=BASE_REPO)
        hub_server.repos[f"loraplane-tests/{name}"] = FakeRepo.single(files_of(dirs[name]))
        lora = {"model_source": "HF_HUB", "model_name": f"loraplane-tests/{name}", "name": name}
        answer = admin.post("/api/v1/lora", json=lora, params=WAIT)
        assert answer.status_code == 200, answer.text
    deployed = deploy_and_wait_running(admin, cpu_deploy_body(SERVED, BASE_REPO), START_TIMEOUT_S)
    deploy_id = deployed["deploy_id"]
    [instance] = deployed["instance_details"]
    try:
        yield Setup(deploy_id, instance["endpoint"], engine_key(stack, instance["instance_id"]), base, dirs)
    finally:
        admin.delete(f"/deploy/{deploy_id}", params=WAIT)
        admin.close()


def hf_perplexity(base_dir: Path, lora_dir: Path | None, items: list[dict[str, str]]) -> float:
    """The dataset's perplexity computed here with transformers (+ peft for an adapter): exp(total NLL of the
    reference tokens / their number), the prompt tokenized with its special tokens and the reference without."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model: Any = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if lora_dir is not None:
        model = PeftModel.from_pretrained(model, lora_dir)
    model.eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for item in items:
            prompt = tokenizer(item["prompt"]).input_ids
            reference = tokenizer(item["reference"], add_special_tokens=False).input_ids
            ids = torch.tensor([prompt + reference])
            logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
            for position in range(len(prompt), len(prompt) + len(reference)):
                nll -= float(logprobs[position - 1, ids[0, position]])
                count += 1
    return math.exp(nll / count)


def results_of(admin: Api, evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    answer = admin.get(evaluation["results_url"])
    assert answer.status_code == 200, answer.text
    return [json.loads(line) for line in answer.text.splitlines()]


def figures(evaluation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["metric"]: r for r in evaluation["results"]}


def test_an_evaluation_agrees_with_transformers_peft_and_with_vllm_s_own_texts(admin: Api, setup: Setup) -> None:
    from rouge_score import rouge_scorer

    body = {
        "adapter": {"name": "ev-a"},
        "items": ITEMS,
        "metrics": ["perplexity", "exact_match", "contains", "rouge_l"],
        "max_tokens": MAX_TOKENS,
    }
    began = time.monotonic()
    answer = admin.post("/api/v1/evaluation", json=body, params={"wait": 300}, timeout=330)
    print(f"evaluation of {len(ITEMS)} items in {time.monotonic() - began:.1f}s")
    assert answer.status_code == 200, answer.text
    run = answer.json()
    assert run["status"] == "completed" and run["items_done"] == len(ITEMS), run
    assert run["adapter"] == "ev-a@v1" and run["baseline"] == SERVED and run["deploy_id"] == setup.deploy_id

    got = figures(run)
    adapter_ppl = hf_perplexity(setup.base_dir, setup.lora_dirs["ev-a"], ITEMS)
    base_ppl = hf_perplexity(setup.base_dir, None, ITEMS)
    print(
        f"perplexity adapter {got['perplexity']['adapter']:.4f} (hf {adapter_ppl:.4f}), "
        f"base {got['perplexity']['baseline']:.4f} (hf {base_ppl:.4f})"
    )
    assert got["perplexity"]["adapter"] == pytest.approx(adapter_ppl, rel=1e-3)
    assert got["perplexity"]["baseline"] == pytest.approx(base_ppl, rel=1e-3)
    assert abs(adapter_ppl - base_ppl) / base_ppl > 0.01, "the adapter should change the perplexity"
    assert got["perplexity"]["difference"] == pytest.approx(
        got["perplexity"]["adapter"] - got["perplexity"]["baseline"]
    )

    rows = results_of(admin, run)
    assert [r["index"] for r in rows] == list(range(len(ITEMS)))
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    expected: dict[str, dict[str, list[float]]] = {"adapter": {}, "baseline": {}}
    for row, item in zip(rows, ITEMS, strict=True):
        for side, model in (("adapter", "ev-a@v1"), ("baseline", SERVED)):
            text = setup.completion(model, item["prompt"])
            assert row[side]["text"] == text, (side, row)
            em = 1.0 if " ".join(text.split()) == " ".join(item["reference"].split()) else 0.0
            rouge = scorer.score(item["reference"], text)["rougeL"].fmeasure
            assert row[side]["exact_match"] == em and row[side]["rouge_l"] == pytest.approx(rouge)
            expected[side].setdefault("exact_match", []).append(em)
            expected[side].setdefault("rouge_l", []).append(rouge)
    assert (
        rows[0]["adapter"]["text"] != rows[0]["baseline"]["text"]
        or rows[1]["adapter"]["text"] != rows[1]["baseline"]["text"]
    ), "the adapter should change what is generated"
    for metric in ("exact_match", "rouge_l"):
        for side in ("adapter", "baseline"):
            mean = sum(expected[side][metric]) / len(ITEMS)
            assert got[metric][side] == pytest.approx(mean), (metric, side)

    listed = admin.get("/api/v1/evaluation").json()
    assert run["id"] in [r["id"] for r in listed["data"]]
    assert admin.get(f"/api/v1/evaluation/{run['id']}").json()["results"] == run["results"]


RUBRIC = "Grade the answer."
SCALE = ["1", "2", "3", "4", "5"]


def test_a_judge_grades_both_sides_as_the_same_requests_sent_straight_to_vllm_do(admin: Api, setup: Setup) -> None:
    from agents.evaluations.scoring import judge_prompt

    body = {
        "adapter": {"name": "ev-a"},
        "items": ITEMS,
        "metrics": ["exact_match"],
        "judge": {"model": SERVED, "rubric": RUBRIC},
        "max_tokens": MAX_TOKENS,
    }
    answer = admin.post("/api/v1/evaluation", json=body, params={"wait": 300}, timeout=330)
    assert answer.status_code == 200, answer.text
    run = answer.json()
    assert run["status"] == "completed", run
    assert run["metrics"] == ["exact_match", "judge"]
    assert run["judge"] == {"model": SERVED, "deploy_id": setup.deploy_id, "rubric": RUBRIC, "reference": True}
    headers = {"Authorization": f"Bearer {setup.key}"}
    expected: dict[str, list[int]] = {"adapter": [], "baseline": []}
    for row, item in zip(results_of(admin, run), ITEMS, strict=True):
        for side in ("adapter", "baseline"):
            prompt = judge_prompt(RUBRIC, item["prompt"], row[side]["text"], item["reference"])
            direct = {
                "model": SERVED,
                "prompt": prompt,
                "max_tokens": 8,
                "temperature": 0,
                "structured_outputs": {"choice": SCALE},
            }
            got = httpx.post(f"{setup.endpoint}/v1/completions", json=direct, headers=headers, timeout=120)
            assert got.status_code == 200, got.text
            text = got.json()["choices"][0]["text"]
            assert text in SCALE, f"vLLM did not keep to the scale: {text!r}"
            assert row[side]["judge_output"] == text and row[side]["judge"] == int(text), (side, row)
            expected[side].append(int(text))
    figures_of = figures(run)["judge"]
    print(f"judge: adapter {figures_of['adapter']}, baseline {figures_of['baseline']}, grades {expected}")
    for side in ("adapter", "baseline"):
        assert figures_of[side] == pytest.approx(sum(expected[side]) / len(ITEMS))
    assert figures_of["difference"] == pytest.approx(figures_of["adapter"] - figures_of["baseline"])


def test_another_adapter_as_the_baseline(admin: Api, setup: Setup) -> None:
    body = {"adapter": {"name": "ev-a"}, "baseline": {"name": "ev-b", "version": 1}, "items": ITEMS[:3]}
    answer = admin.post("/api/v1/evaluation", json=body, params={"wait": 300}, timeout=330)
    assert answer.status_code == 200, answer.text
    run = answer.json()
    assert run["baseline"] == "ev-b@v1"
    got = figures(run)["perplexity"]
    assert got["baseline"] == pytest.approx(hf_perplexity(setup.base_dir, setup.lora_dirs["ev-b"], ITEMS[:3]), rel=1e-3)
    assert got["adapter"] == pytest.approx(hf_perplexity(setup.base_dir, setup.lora_dirs["ev-a"], ITEMS[:3]), rel=1e-3)


def long_run(admin: Api, count: int) -> dict[str, Any]:
    items = [{"prompt": f"{ITEMS[i % len(ITEMS)]['prompt']} {i}", "reference": " 0 1"} for i in range(count)]
    body = {"adapter": {"name": "ev-a"}, "items": items, "metrics": ["perplexity", "exact_match"], "max_tokens": 8}
    answer = admin.post("/api/v1/evaluation", json=body)
    assert answer.status_code == 202, answer.text
    assert answer.headers["location"] == f"/api/v1/evaluation/{answer.json()['id']}"
    return answer.json()


def test_a_worker_killed_mid_run_resumes_without_scoring_an_item_twice(admin: Api, stack: Stack) -> None:
    total = 16
    run = long_run(admin, total)

    def progressed() -> dict[str, Any] | None:
        got = admin.get(f"/api/v1/evaluation/{run['id']}").json()
        return got if got["items_done"] > 0 else None

    at_kill = wait_until(progressed, timeout=300, interval=0.2, message="the first progress report")
    worker_pid = stack.pids()["worker"]
    os.kill(worker_pid, signal.SIGKILL)
    assert at_kill["status"] == "running" and at_kill["items_done"] < total, "finished before the kill: proves nothing"

    def finished() -> dict[str, Any] | None:
        got = admin.get(f"/api/v1/evaluation/{run['id']}").json()
        return got if got["status"] != "running" else None

    done = wait_until(finished, timeout=600, interval=1.0, message="the resumed run to finish")
    assert done["status"] == "completed", done
    rows = results_of(admin, done)
    assert sorted(r["index"] for r in rows) == list(range(total))
    workers = {r["worker"] for r in rows}
    first = f"-{worker_pid}"
    by_first = [r for r in rows if r["worker"].endswith(first)]
    print(f"{len(by_first)} of {total} items scored before the kill (progress said {at_kill['items_done']}); {workers}")
    # Every item progress had counted was written by the first worker and never scored again by the second.
    assert len(by_first) >= at_kill["items_done"]
    assert len(workers) == 2, "the second worker scored the rest"


def test_a_cancelled_run_stops_within_seconds(admin: Api, stack: Stack) -> None:
    run = long_run(admin, 200)
    time.sleep(2)
    began = time.monotonic()
    answer = admin.delete(f"/api/v1/evaluation/{run['id']}", params={"wait": 30})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    print(f"cancelled in {time.monotonic() - began:.2f}s")
    again = admin.delete(f"/api/v1/evaluation/{run['id']}", params={"wait": 30})
    assert again.status_code == 409, again.text

    def idle() -> bool:
        health = admin.get("/api/v1/evaluation/health").json()
        return health["queue_depth"] == 0

    wait_until(idle, timeout=30, message="no run left in the queue")
    # The agent stopped: no more item results are written for the run.
    count = len(_item_objects(stack, run["id"]))
    time.sleep(3)
    assert len(_item_objects(stack, run["id"])) == count < 200
    assert admin.get(f"/api/v1/evaluation/{run['id']}/results").status_code == 409


def _item_objects(stack: Stack, evaluation_id: str) -> list[str]:
    from infra.s3 import make_client
    from infra.settings import Settings

    settings = Settings(
        s3_endpoint=stack.env["S3_ENDPOINT"],
        s3_access_key=stack.env["S3_ACCESS_KEY"],
        s3_secret_key=stack.env["S3_SECRET_KEY"],
        s3_bucket=stack.env["S3_BUCKET"],
    )
    client = make_client(settings)
    prefix = f"evaluations/{evaluation_id}/items/"
    return [o.object_name or "" for o in client.list_objects(settings.s3_bucket, prefix=prefix)]


def test_health_names_the_agent_and_the_deployments(admin: Api, user: Api, setup: Setup) -> None:
    health = admin.get("/api/v1/evaluation/health")
    assert health.status_code == 200, health.text
    body = health.json()
    assert body["status"] == "ok" and body["agents"] >= 1
    assert setup.deploy_id in [d["deploy_id"] for d in body["deployments"]]
    assert user.get("/api/v1/evaluation/health").status_code == 403


@pytest.mark.parametrize(
    ("change", "loc", "words"),
    [
        ({"adapter": {"name": "ev-nobody"}}, ["body", "adapter", "name"], "does not exist"),
        ({"adapter": {"name": "ev-a", "version": 9}}, ["body", "adapter", "version"], "has no version 9"),
        ({"baseline": {"name": "ev-nobody"}}, ["body", "baseline", "name"], "does not exist"),
        ({"items": [{"prompt": "x"}]}, ["body", "items", 0, "reference"], "perplexity"),
        ({"items": [{"reference": "x"}]}, ["body", "items", 0, "prompt"], ""),
        ({"items": [{"prompt": "x", "reference": "y"}] * 1001}, ["body", "items"], ""),
        ({"metrics": ["bleu"]}, ["body", "metrics", 0], ""),
        ({"deploy_id": "ev-no-such"}, ["body", "deploy_id"], "does not exist"),
        ({"judge": {"model": "ev-nobody", "rubric": "r"}}, ["body", "judge", "model"], "neither"),
        ({"judge": {"model": SERVED}}, ["body", "judge", "rubric"], ""),
        ({"judge": {"model": SERVED, "rubric": "r", "deploy_id": "ev-no-such"}}, ["body", "judge", "deploy_id"], ""),
        (
            {"metrics": ["judge"], "judge": {"model": SERVED, "rubric": "r"}, "items": [{"prompt": "x"}]},
            ["body", "items", 0, "reference"],
            "judge",
        ),
        ({"metrics": ["judge"]}, ["body", "judge"], "needs a `judge`"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(
    admin: Api, setup: Setup, change: dict[str, Any], loc: list[Any], words: str
) -> None:
    body = {"adapter": {"name": "ev-a"}, "items": ITEMS[:1], **change}
    answer = admin.post("/api/v1/evaluation", json=body)
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"][:1]
    assert detail["loc"][: len(loc)] == loc, detail
    assert words in detail["msg"]


def test_an_image_lora_is_refused_with_the_reason(admin: Api, setup: Setup, civitai_server: FakeCivitai) -> None:
    civitai_server.files[9801] = FakeFile(kohya_image_lora(), 'attachment; filename="ev_pixels.safetensors"')
    body = {
        "base_model": "stabilityai/stable-diffusion-xl-base-1.0",
        "lora_name": "ev-pixels",
        "source": {"type": "civitai", "civit_url": f"{civitai_server.site_url}/api/download/models/9801"},
        "private": False,
    }
    answer = admin.post("/v1/lora/create", json=body, params=WAIT)
    assert answer.status_code == 200, answer.text
    refused = admin.post("/api/v1/evaluation", json={"adapter": {"name": "ev-pixels"}, "items": ITEMS[:1]})
    assert refused.status_code == 422, refused.text
    [detail] = refused.json()["detail"]
    assert detail["loc"] == ["body", "adapter", "name"] and "image LoRA" in detail["msg"], detail


def test_a_jsonl_dataset_is_uploaded_checked_by_line_and_evaluated(admin: Api, setup: Setup) -> None:
    bad = b'{"prompt": "a", "reference": "b"}\n{"prompt": "c", "reference": "d"\n'
    answer = admin.post("/api/v1/evaluation/datasets", files={"file": ("bad.jsonl", bad, "application/jsonl")})
    assert answer.status_code == 422, answer.text
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", "file", "line", 2] and "not JSON" in detail["msg"], detail
    missing = b'{"reference": "b"}\n'
    answer = admin.post("/api/v1/evaluation/datasets", files={"file": ("m.jsonl", missing, "application/jsonl")})
    assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["body", "file", "line", 1, "prompt"]

    good = "".join(json.dumps(item) + "\n" for item in ITEMS[:3]).encode()
    answer = admin.post("/api/v1/evaluation/datasets", files={"file": ("good.jsonl", good, "application/jsonl")})
    assert answer.status_code == 201, answer.text
    uploaded = answer.json()
    assert uploaded["items"] == 3 and uploaded["with_reference"] == 3 and uploaded["size"] == len(good)

    body = {"adapter": {"name": "ev-b"}, "dataset_id": uploaded["dataset_id"]}
    answer = admin.post("/api/v1/evaluation", json=body, params={"wait": 300}, timeout=330)
    assert answer.status_code == 200, answer.text
    got = figures(answer.json())["perplexity"]
    assert got["adapter"] == pytest.approx(hf_perplexity(setup.base_dir, setup.lora_dirs["ev-b"], ITEMS[:3]), rel=1e-3)

    unknown = admin.post("/api/v1/evaluation", json={**body, "dataset_id": "0" * 64})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    both = admin.post("/api/v1/evaluation", json={**body, "items": ITEMS[:1]})
    assert both.status_code == 422 and both.json()["detail"][0]["loc"] == ["body", "items"]


def test_deploy_id_pins_the_run_to_its_deployment(
    admin: Api,
    admin_key: str,
    stack: Stack,
    setup: Setup,
    hub_server: FakeHub,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A second deployment of the same base model, on a stub node (answers at once, with no log-probabilities), serves
    ev-c pinned: without a pin the gateway sends ev-c there. The evaluation pinned to the real deployment loads ev-c
    there on demand, and every answer it scored came from there."""
    root = tmp_path_factory.mktemp("evaluation-pinned")
    ev_c = make_lora_adapter(setup.base_dir, root / "ev-c", seed=33, base_model_name=BASE_REPO)
    hub_server.repos["loraplane-tests/ev-c"] = FakeRepo.single(files_of(ev_c))
    gpu = unused_gpu_type(admin)
    with stub_node_agent(stack, admin_key, hub_server, root / "node", gpu, 1):
        body: dict[str, Any] = {"model_name": f"{SERVED}-stub", "gpu": gpu, "hf": {"repo": BASE_REPO}}
        body["lora"] = {"max_loras": 2, "max_lora_rank": 8}
        stub = deploy_and_wait_running(admin, body, timeout=120)
        stub_id, [stub_instance] = stub["deploy_id"], stub["instance_details"]
        try:
            # ev-c, an Empower LoRA stored now, is served at once on each deployment of its base model with a free
            # adapter slot: the stub one, and the real one unless earlier tests' loads filled its two. It is then
            # served pinned on the stub one and no longer on the real one.
            lora = {"model_source": "HF_HUB", "model_name": "loraplane-tests/ev-c", "name": "ev-c"}
            assert admin.post("/api/v1/lora", json=lora, params=WAIT).status_code == 200

            def served_on(deploy_id: str) -> set[str]:
                return {a["name"] for a in admin.get(f"/deploy/{deploy_id}").json()["adapters"]}

            def attached_where_it_fits() -> bool:
                real = served_on(setup.deploy_id)
                return "ev-c" in served_on(stub_id) and ("ev-c" in real or len(real) >= 2)

            wait_until(attached_where_it_fits, timeout=60, interval=0.5, message="ev-c attached where a slot is free")
            if "ev-c" in served_on(setup.deploy_id):
                undeployed = admin.delete(f"/deploy/{setup.deploy_id}/lora/ev-c", params=WAIT)
                assert undeployed.status_code == 204, undeployed.text
            served = admin.post("/deploy/lora", params=WAIT, json={"deploy_id": stub_id, "lora_name": "ev-c"})
            assert served.status_code == 200, served.text
            client = openai.OpenAI(base_url=f"{stack.api_url}/v1", api_key=admin_key, max_retries=0, timeout=60)
            unpinned = client.completions.with_raw_response.create(model="ev-c", prompt="where", max_tokens=2)
            assert unpinned.headers["x-loraplane-deployment"] == stub_id
            assert unpinned.parse().choices[0].text == stub_text("ev-c", "where", 2)
            stub_requests = stub_stats(stub_instance["endpoint"])["requests"]

            body = {
                "adapter": {"name": "ev-c"},
                "deploy_id": setup.deploy_id,
                "items": ITEMS[:3],
                "metrics": ["perplexity", "exact_match"],
                "max_tokens": MAX_TOKENS,
            }
            answer = admin.post("/api/v1/evaluation", json=body, params={"wait": 300}, timeout=330)
            assert answer.status_code == 200, answer.text
            run = answer.json()
            assert run["status"] == "completed" and run["deploy_id"] == setup.deploy_id, run
            got = figures(run)["perplexity"]["adapter"]
            assert got == pytest.approx(hf_perplexity(setup.base_dir, ev_c, ITEMS[:3]), rel=1e-3)
            rows = results_of(admin, run)
            assert {r["deploy_id"] for r in rows} == {setup.deploy_id}
            for row, item in zip(rows, ITEMS[:3], strict=True):
                assert row["adapter"]["text"] == setup.completion("ev-c@v1", item["prompt"])
            # ev-c was loaded on demand on the pinned deployment, and the stub engine heard nothing of the run.
            log = events(stack)
            attached = [
                e["payload"]
                for e in log
                if e["type"] == "deployment.adapter_attached"
                and e["payload"]["adapter"]["adapter_id"] == "default/ev-c"
                and e["aggregate_id"] == setup.deploy_id
            ]
            assert attached[-1]["adapter"]["name"] == "ev-c@v1" and attached[-1]["on_demand"] is True, attached
            loaded = {
                e["aggregate_id"] for e in log if e["type"] == "adapter.loaded" and e["payload"]["name"] == "ev-c@v1"
            }
            assert loaded == {setup.deploy_id}
            assert stub_stats(stub_instance["endpoint"])["requests"] == stub_requests
        finally:
            admin.delete(f"/deploy/{stub_id}", params=WAIT)
