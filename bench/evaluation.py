"""Evaluation benchmark: items per second of an evaluation run (API -> evaluation agent -> gateway -> vLLM) against
the same requests sent straight to vLLM, in the same run.

Run `python bench/evaluation.py`. It starts a fake Hugging Face Hub holding a tiny Llama and a LoRA made here and a
stack (`loraplane up` on free ports, with its CPU node agent), deploys the tiny Llama on vLLM, and then, in
interleaved rounds:

  through loraplane: `POST /api/v1/evaluation?wait=` with N items (perplexity + exact_match + rouge_l), timed from
      the request to the answer of the completed run;
  direct: the same requests per item (the prompt's and the reference's token ids, the log-probability of each
      reference token with the adapter and with the base model, a completion with each), with the engine's own key,
      the same number of items at once as the agent runs (LORAPLANE_EVALUATION_CONCURRENCY, 4) and both sides of an
      item at once.

With `--judge`, both sides also ask the base model for a grade of each generated answer (the judge metric: its
prompt from `agents.evaluations.scoring.judge_prompt`, its output constrained to 1..5 with vLLM's structured
outputs).

Goal: items/s through loraplane >= 0.8 of direct. The first run loads the LoRA on demand and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from agents.evaluations.scoring import judge_prompt, judge_request, parse_grade, text_scores, token_logprob
from infra.gateway_client import GatewayClient
from streams.evaluations import Metric
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Stack, engine_key, start_stack, stop_stack
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_load import register_loras, wait_running

BASE_REPO = "bench/ev-llama"
SERVED = "ev-llama"
LORA = "ev-bench"
CONCURRENCY = 4
METRICS = [Metric.PERPLEXITY, Metric.EXACT_MATCH, Metric.ROUGE_L]
MAX_TOKENS = 16
RUBRIC = "Grade the answer."
WORDS = "the quick brown fox jumps over the lazy dog a lora adapter changes a few low rank matrices".split()


def items(count: int) -> list[dict[str, str]]:
    return [
        {"prompt": " ".join(WORDS[i % 7 : i % 7 + 6]) + f" {i}", "reference": " " + " ".join(WORDS[i % 5 : i % 5 + 4])}
        for i in range(count)
    ]


async def through_loraplane(api: httpx.AsyncClient, dataset: list[dict[str, str]], judge: bool) -> float:
    body: dict[str, Any] = {
        "adapter": {"name": LORA},
        "items": dataset,
        "metrics": [m.value for m in METRICS],
        "max_tokens": MAX_TOKENS,
    }
    if judge:
        body["judge"] = {"model": SERVED, "rubric": RUBRIC}
    began = time.perf_counter()
    answer = await api.post("/api/v1/evaluation", params={"wait": 300}, json=body)
    seconds = time.perf_counter() - began
    if answer.status_code != 200 or answer.json()["status"] != "completed":
        raise SystemExit(f"the evaluation answered {answer.status_code}: {answer.text[:500]}")
    return seconds


async def direct(client: GatewayClient, dataset: list[dict[str, str]], judge: bool) -> float:
    slots = asyncio.Semaphore(CONCURRENCY)

    async def side(model: str, item: dict[str, str], ids: list[int], start: int) -> None:
        async def at(position: int) -> float:
            answer = await client.next_token_logprobs(model, ids[:position], ids[position])
            return token_logprob(answer, ids[position], position)

        await asyncio.gather(*(at(p) for p in range(start, len(ids))))
        text = await client.generate(model, item["prompt"], max_tokens=MAX_TOKENS, temperature=0.0)
        text_scores(METRICS, text, item["reference"])
        if judge:
            prompt = judge_prompt(RUBRIC, item["prompt"], text, item["reference"])
            parse_grade((await client.complete(judge_request(SERVED, prompt))).text)

    async def one(item: dict[str, str]) -> None:
        async with slots:
            prompt = await client.tokens(SERVED, item["prompt"], special=True)
            reference = await client.tokens(SERVED, item["reference"], special=False)
            ids = prompt + reference
            await asyncio.gather(side(f"{LORA}@v1", item, ids, len(prompt)), side(SERVED, item, ids, len(prompt)))

    began = time.perf_counter()
    await asyncio.gather(*(one(item) for item in dataset))
    return time.perf_counter() - began


async def run(stack: Stack, args: argparse.Namespace) -> None:
    key = stack.issue_key("admin", "bench")
    async with httpx.AsyncClient(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=600
    ) as api:
        await register_loras(api, [LORA])
        answer = await api.post("/deploy/llm", params={"wait": 20}, json=cpu_deploy_body(SERVED, BASE_REPO))
        [instance] = await wait_running(api, answer.json()["deploy_id"], 1)
        engine = GatewayClient(
            instance["endpoint"], await asyncio.to_thread(engine_key, stack, instance["instance_id"])
        )
        dataset = items(args.items)
        try:
            warm = await through_loraplane(api, dataset[:4], args.judge)  # loads the LoRA on demand
            print(f"warm-up run (loads {LORA} on demand): {warm:.1f}s")
            ours: list[float] = []
            theirs: list[float] = []
            for round_ in range(args.rounds):
                ours.append(len(dataset) / await through_loraplane(api, dataset, args.judge))
                theirs.append(len(dataset) / await direct(engine, dataset, args.judge))
                print(f"round {round_ + 1}: {ours[-1]:.2f} items/s through loraplane, {theirs[-1]:.2f} direct")
        finally:
            await engine.close()
        ratios = [a / b for a, b in zip(ours, theirs, strict=True)]
        print(
            f"\n{args.items} items x {args.rounds} rounds, metrics {', '.join(m.value for m in METRICS)}"
            f"{' + judge' if args.judge else ''}, "
            f"{MAX_TOKENS} tokens generated per side"
        )
        print(
            f"items/s through loraplane: median {statistics.median(ours):.2f} ({', '.join(f'{x:.2f}' for x in ours)})"
        )
        print(
            f"items/s direct to vLLM:    median {statistics.median(theirs):.2f} "
            f"({', '.join(f'{x:.2f}' for x in theirs)})"
        )
        print(f"ratio (goal >= 0.8): median {statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40, help="items per run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--judge", action="store_true", help="add the judge metric (the base model grades)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        work = Path(tmp)
        base = make_tiny_llama(work / "base")
        lora = make_lora_adapter(base, work / LORA, seed=5, base_model_name=BASE_REPO)
        repos = {BASE_REPO: FakeRepo.single(files_of(base)), f"bench/{LORA}": FakeRepo.single(files_of(lora))}
        with FakeHub(repos) as hub:
            extra: dict[str, Any] = {
                "HF_ENDPOINT": hub.url,
                "LORAPLANE_NODE_ID": "bench-node",
                "LORAPLANE_NODE_DEVICES": "cpu:1",
                "LORAPLANE_EVALUATION_CONCURRENCY": str(CONCURRENCY),
            }
            stack = start_stack(work / "stack", extra_env=extra)
            try:
                asyncio.run(run(stack, args))
            finally:
                stop_stack(stack)


if __name__ == "__main__":
    main()
