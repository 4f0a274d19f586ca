"""Inference gateway benchmark: requests through loraplane against the same requests sent straight to the engine,
in the same run.

Run `python bench/gateway.py`. It starts a fake Hugging Face Hub holding a tiny Llama and LoRAs made here, a stack
(`loraplane up` on free ports in a temporary directory, with its CPU node agent) and a second node agent whose
"vLLM" is tests/stub_engine.py (an OpenAI server that answers at once), then:

  (a) real vLLM (the tiny Llama on CPU): completions of 16 tokens at concurrency 1, 8 and 32, direct to vLLM (with its
      own key) and through the gateway (the API's URL), runs interleaved; the same streamed for time to first token.
      Goals: throughput through the gateway >= 0.9 of direct, added p50 latency <= 5 ms, added p50 TTFT <= 5 ms.
  (b) capacity against the stub engine, 64 concurrent: requests/s through a `loraplane gateway` process against the
      same load sent straight to the stub. Goal >= 0.5; p99 reported.
  (c) cold adapter: time to the first streamed token of a stored LoRA no instance holds (the gateway loads it on
      demand), against S3 fetch + vLLM's /v1/load_lora_adapter + one completion of one token, done by hand.
      Goal <= 1.5.

The load comes from this process (aiohttp, uvloop); every figure is printed with its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import httpx

from infra.node_cache import fetch_adapter_files
from infra.s3 import make_client
from infra.settings import Settings
from infra.vllm_process import VllmClient
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import Stack, engine_key, free_port, start_stack, stop_stack
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapter_load import register_loras, stored_artifact, wait_running

BASE_REPO = "bench/gw-llama"
SERVED = "gw-llama"
STUB_REPO = "bench/stub-llama"
STUB_SERVED = "stub-llama"
STUB = Path(__file__).resolve().parents[1] / "tests" / "stub_engine.py"
PROMPT = "The quick brown fox jumps over the lazy dog"
CONFIG = b'{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}'


@dataclass
class Run:
    seconds: float
    latencies: list[float]  # per request: to the whole answer, or to the first token when streaming

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def load(
    session: aiohttp.ClientSession, url: str, key: str, body: dict[str, Any], concurrency: int, count: int
) -> Run:
    """`count` requests, `concurrency` at a time; a streamed body's latency is its time to the first event."""
    payload = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    stream = bool(body.get("stream"))
    left = count
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            async with session.post(url, data=payload, headers=headers) as response:
                if response.status != 200:
                    raise SystemExit(f"{url} answered {response.status}: {(await response.text())[:500]}")
                if stream:
                    async for _ in response.content.iter_any():
                        latencies.append(time.perf_counter() - began)
                        break
                    async for _ in response.content.iter_any():
                        pass
                else:
                    await response.read()
                    latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(time.perf_counter() - began, latencies)


async def interleaved(rounds: int, *sides: Callable[[], Awaitable[Run]]) -> list[Run]:
    """Each side run `rounds` times, alternating, merged per side: slow drift of the machine hits both alike."""
    merged = [Run(0.0, []) for _ in sides]
    for _ in range(rounds):
        for i, side in enumerate(sides):
            run = await side()
            merged[i] = Run(merged[i].seconds + run.seconds, merged[i].latencies + run.latencies)
    return merged


def connector() -> aiohttp.TCPConnector:
    # Servers here (uvicorn) close a connection idle for 5 s: never reuse one that old.
    return aiohttp.TCPConnector(limit=0, keepalive_timeout=3)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


async def part_a(stack: Stack, key: str, endpoint: str, engine: str, rounds: int, levels: list[int]) -> None:
    print("\n(a) real vLLM (tiny Llama, CPU), 16-token completions: direct vs through the gateway")
    body = {"model": SERVED, "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    streamed = {**body, "stream": True}
    direct_url, gateway_url = f"{endpoint}/v1/completions", f"{stack.api_url}/v1/completions"
    async with aiohttp.ClientSession(connector=connector()) as session:
        await load(session, gateway_url, key, body, 4, 20)  # warm both paths
        await load(session, direct_url, engine, body, 4, 20)
        for concurrency in levels:
            count = max(24, concurrency * 4)
            direct, through = await interleaved(
                rounds,
                lambda c=concurrency, n=count: load(session, direct_url, engine, body, c, n),
                lambda c=concurrency, n=count: load(session, gateway_url, key, body, c, n),
            )
            d_ttft, g_ttft = await interleaved(
                rounds,
                lambda c=concurrency, n=count: load(session, direct_url, engine, streamed, c, n),
                lambda c=concurrency, n=count: load(session, gateway_url, key, streamed, c, n),
            )
            print(
                f"  concurrency {concurrency:2d}: p99 {ms(direct.pct(99))} direct, {ms(through.pct(99))} through; "
                f"max {ms(max(direct.latencies))} direct, {ms(max(through.latencies))} through"
            )
            print(
                f"  concurrency {concurrency:2d}: {direct.rps:6.1f} req/s direct, {through.rps:6.1f} through "
                f"(ratio {through.rps / direct.rps:.2f}, goal >= 0.9); p50 {ms(direct.pct(50))} direct, "
                f"{ms(through.pct(50))} through (added {ms(through.pct(50) - direct.pct(50))}, goal <= 5 ms); "
                f"TTFT p50 {ms(d_ttft.pct(50))} direct, {ms(g_ttft.pct(50))} through "
                f"(added {ms(g_ttft.pct(50) - d_ttft.pct(50))}, goal <= 5 ms)"
            )


async def part_b(stack: Stack, key: str, stub_endpoint: str, stub_key: str, gateway_url: str, count: int) -> None:
    print("\n(b) capacity against the stub engine, 64 concurrent: direct vs a `loraplane gateway` process")
    body = {"model": STUB_SERVED, "prompt": PROMPT, "max_tokens": 4}
    direct_url, through_url = f"{stub_endpoint}/v1/completions", f"{gateway_url}/v1/completions"
    async with aiohttp.ClientSession(connector=connector()) as session:
        await load(session, through_url, key, body, 64, 2000)  # warm
        await load(session, direct_url, stub_key, body, 64, 2000)
        direct, through = await interleaved(
            3,
            lambda: load(session, direct_url, stub_key, body, 64, count),
            lambda: load(session, through_url, key, body, 64, count),
        )
    print(
        f"  direct  {direct.rps:8.0f} req/s, p50 {ms(direct.pct(50))}, p99 {ms(direct.pct(99))}\n"
        f"  gateway {through.rps:8.0f} req/s, p50 {ms(through.pct(50))}, p99 {ms(through.pct(99))}\n"
        f"  ratio {through.rps / direct.rps:.2f} (goal >= 0.5)"
    )


async def part_c(stack: Stack, key: str, endpoint: str, engine: str, loras: list[tuple[str, Path]], work: Path) -> None:
    print("\n(c) cold adapter: first token of a stored, unloaded LoRA through the gateway vs doing it by hand")
    env = stack.cli_env()
    s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
    bucket = env.get("S3_BUCKET", "loraplane")
    ratios = []
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=120) as api,
        VllmClient(endpoint, api_key=engine) as vllm,
    ):
        for name, directory in loras:
            body = {"model": name, "prompt": PROMPT, "max_tokens": 16, "temperature": 0, "stream": True}
            began = time.perf_counter()
            async with api.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    raise SystemExit(f"{name}: {response.status_code} {(await response.aread())[:500]!r}")
                async for _ in response.aiter_raw():
                    break
                cold = time.perf_counter() - began
            began = time.perf_counter()
            await asyncio.to_thread(fetch_adapter_files, s3, stored_artifact(directory, bucket), work / f"c-{name}")
            fetch = time.perf_counter() - began
            began = time.perf_counter()
            await vllm.load_lora_adapter(f"raw-{name}", directory)
            loaded = time.perf_counter() - began
            began = time.perf_counter()
            await vllm.completion(f"raw-{name}", PROMPT, 1)
            first = time.perf_counter() - began
            await vllm.unload_lora_adapter(f"raw-{name}")
            baseline = fetch + loaded + first
            ratios.append(cold / baseline)
            print(
                f"  {name}: gateway first token {ms(cold)}; by hand {ms(baseline)} "
                f"(S3 {ms(fetch)} + load {ms(loaded)} + 1-token completion {ms(first)}); ratio {cold / baseline:.2f}"
            )
    print(f"  median ratio {statistics.median(ratios):.2f} (goal <= 1.5)")


def stub_node(stack: Stack, hub: FakeHub, work: Path) -> subprocess.Popen[bytes]:
    fake = work / "fake-vllm"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STUB}" "$@"\n')
    fake.chmod(0o755)
    env = {
        **stack.cli_env(),
        "LORAPLANE_DATA_DIR": str(work / "stub-node"),
        "LORAPLANE_NODE_ID": "bench-stub-node",
        "LORAPLANE_NODE_DEVICES": "B300-270GB:1",
        "LORAPLANE_VLLM_PYTHON": str(fake),
        "LORAPLANE_SECRET_KEY": (stack.data_dir / "secret.key").read_text().strip(),
        "LORAPLANE_SECRET_KEY_DIR": str(stack.data_dir / "secret-keys"),
        "HF_ENDPOINT": hub.url,
    }
    log = (work / "stub-node.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "infra.cli", "node"], env=env, stdout=log, stderr=subprocess.STDOUT)


def gateway_process(stack: Stack, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**stack.cli_env(), "LORAPLANE_GATEWAY_PORT": str(port), "LORAPLANE_LOG_LEVEL": "WARNING"}
    log = (work / "gateway.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "gateway"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the gateway process did not become ready")
        time.sleep(0.3)


async def run(stack: Stack, hub: FakeHub, loras: list[tuple[str, Path]], work: Path, args: argparse.Namespace) -> None:
    key = stack.issue_key("admin", "bench")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=120) as api:
        await register_loras(api, [name for name, _ in loras])
        # As many sequences in one batch as the highest concurrency: what it measures is the gateway, not vLLM's queue.
        body = {**cpu_deploy_body(SERVED, BASE_REPO), "max_batch_size": 32}
        answer = await api.post("/deploy/llm", params={"wait": 20}, json=body)
        [instance] = await wait_running(api, answer.json()["deploy_id"], 1)
        engine = await asyncio.to_thread(engine_key, stack, instance["instance_id"])
        if "a" in args.parts:
            levels = [int(c) for c in args.concurrency.split(",")]
            await part_a(stack, key, instance["endpoint"], engine, args.rounds, levels)
        if "c" in args.parts:
            await part_c(stack, key, instance["endpoint"], engine, loras, work)
        if "b" in args.parts:
            node = stub_node(stack, hub, work)
            try:
                stub = {"model_name": STUB_SERVED, "gpu": "B300-270GB", "hf": {"repo": STUB_REPO}}
                answer = await api.post("/deploy/llm", params={"wait": 20}, json=stub)
                [stub_instance] = await wait_running(api, answer.json()["deploy_id"], 1)
                gateway, url = gateway_process(stack, work)
                try:
                    stub_key = await asyncio.to_thread(engine_key, stack, stub_instance["instance_id"])
                    await part_b(stack, key, stub_instance["endpoint"], stub_key, url, args.requests)
                finally:
                    gateway.terminate()
                    gateway.wait(timeout=30)
            finally:
                node.terminate()
                node.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="abc", help="which parts to run (a, b, c)")
    parser.add_argument("--concurrency", default="1,8,32", help="(a): concurrency levels")
    parser.add_argument("--rounds", type=int, default=3, help="(a): interleaved rounds per concurrency")
    parser.add_argument("--requests", type=int, default=5000, help="(b): requests per round")
    parser.add_argument("--loras", type=int, default=3, help="(c): cold LoRAs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        work = Path(tmp)
        base = make_tiny_llama(work / "base")
        repos = {
            BASE_REPO: FakeRepo.single(files_of(base)),
            STUB_REPO: FakeRepo.single({"config.json": CONFIG, "model.safetensors": b"w" * 16}),
        }
        loras = []
        for i in range(args.loras):
            name = f"gw-bench-{uuid.uuid4().hex[:4]}-{i}"
            directory = make_lora_adapter(base, work / name, seed=i + 1, base_model_name=BASE_REPO)
            repos[f"bench/{name}"] = FakeRepo.single(files_of(directory))
            loras.append((name, directory))
        with FakeHub(repos) as hub:
            extra = {"HF_ENDPOINT": hub.url, "LORAPLANE_NODE_ID": "bench-node", "LORAPLANE_NODE_DEVICES": "cpu:1"}
            stack = start_stack(work / "stack", extra_env=extra)
            try:
                asyncio.run(run(stack, hub, loras, work, args))
            finally:
                stop_stack(stack)


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    main()
