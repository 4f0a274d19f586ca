"""Adapter load benchmark: from the adapter command to the adapter answering a request, against vLLM's own
`/v1/load_lora_adapter` on the same instance.

Run `python bench/adapter_load.py`. It starts a fake Hugging Face Hub holding a tiny Llama and LoRAs made here,
a stack (`loraplane up` on free ports in a temporary directory, with its CPU node agent), registers the LoRAs
through the Empower API (so they are stored in S3), deploys the tiny Llama on `cpu` and waits for it to run. Then,
for each LoRA, in one run:
  1. pipeline: `POST /deploy/lora?wait=0` (API -> command -> deployment aggregate -> event -> node agent -> S3 fetch
     with sha256 check -> pre-flight -> load), polling `/v1/completions` with the LoRA's name until it answers;
  2. S3 fetch: the same files fetched from the stack's S3 with the minio SDK (what the node does before loading);
  3. raw: `/v1/load_lora_adapter` from a local copy on the same vLLM, then the first completion.
Each LoRA is a new one (the node has not cached it), and is undeployed again after its round to free the slot.
Goal: pipeline <= 2 x raw + S3 fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from infra.node_cache import fetch_adapter_files
from infra.s3 import make_client
from infra.settings import Settings
from infra.vllm_process import VllmApiError, VllmClient
from streams.artifacts import Artifact, StoredFile, blob_key
from tests.fake_hub import FakeHub, FakeRepo
from tests.support import engine_key, events, start_stack, stop_stack
from tests.tiny_llama import cpu_deploy_body, files_of, make_lora_adapter, make_tiny_llama

BASE_REPO = "bench/tiny-llama"
SERVED = "tiny-llama"
PROMPT = "The quick brown fox"


async def answer_when_served(client: VllmClient, name: str) -> None:
    deadline = time.monotonic() + 60.0
    while True:
        try:
            await client.completion(name, PROMPT, 4)
            return
        except VllmApiError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.005)


async def rounds(
    api: httpx.AsyncClient,
    endpoint: str,
    engine_key: str,
    deploy_id: str,
    loras: list[tuple[str, Path]],
    s3: Any,
    bucket: str,
    work: Path,
    sent_at: dict[str, datetime],
) -> list[tuple[float, float, float]]:
    out = []
    async with VllmClient(endpoint, api_key=engine_key) as vllm:
        for name, directory in loras:
            began = time.perf_counter()
            sent_at[name] = datetime.now(UTC)
            answer = await api.post(
                "/deploy/lora", params={"wait": 0}, json={"deploy_id": deploy_id, "lora_name": name}
            )
            if answer.status_code not in (200, 202):
                raise SystemExit(f"POST /deploy/lora answered {answer.status_code}: {answer.text[:500]}")
            await answer_when_served(vllm, name)
            pipeline = time.perf_counter() - began
            undeployed = await api.delete(f"/deploy/{deploy_id}/lora/{name}", params={"wait": 30})
            if undeployed.status_code != 204:
                raise SystemExit(f"undeploy answered {undeployed.status_code}: {undeployed.text[:500]}")

            artifact = stored_artifact(directory, bucket)
            began = time.perf_counter()
            await asyncio.to_thread(fetch_adapter_files, s3, artifact, work / f"fetch-{name}")
            fetch = time.perf_counter() - began

            raw_name = f"raw-{name}"
            began = time.perf_counter()
            await vllm.load_lora_adapter(raw_name, directory)
            await vllm.completion(raw_name, PROMPT, 4)
            raw = time.perf_counter() - began
            await vllm.unload_lora_adapter(raw_name)
            out.append((pipeline, fetch, raw))
            print(
                f"{name}: pipeline {pipeline * 1000:7.1f} ms  S3 fetch {fetch * 1000:6.1f} ms  raw {raw * 1000:6.1f} ms"
            )
    return out


async def register_loras(api: httpx.AsyncClient, names: list[str]) -> None:
    """Register each LoRA of the bench's Hub (`bench/{name}`) through the Empower API, answered once stored."""
    for name in names:
        body = {"model_source": "HF_HUB", "model_name": f"bench/{name}", "name": name}
        answer = await api.post("/api/v1/lora", params={"wait": 60}, json=body)
        if answer.status_code != 200:
            raise SystemExit(f"registering {name} answered {answer.status_code}: {answer.text[:500]}")


async def wait_running(api: httpx.AsyncClient, deploy_id: str, instances: int) -> list[dict[str, Any]]:
    began = time.monotonic()
    while True:
        body = (await api.get(f"/deploy/{deploy_id}")).json()
        running = [i for i in body["instance_details"] if i["status"] == "running"]
        if len(running) == instances:
            return running
        if body["status"] == "failed" or time.monotonic() - began > 900:
            raise SystemExit(f"deployment {deploy_id} did not run: {body['fail_reason']}")
        await asyncio.sleep(0.5)


def stored_artifact(directory: Path, bucket: str) -> Artifact:
    """The artifact the registry stored for the LoRA in `directory`: its files are content-addressed in S3."""
    files = []
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        data = (directory / name).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        files.append(StoredFile(path=name, key=blob_key(sha), sha256=sha, size=len(data)))
    weights = files[1]
    return Artifact(
        bucket=bucket,
        files=tuple(files),
        sha256=weights.sha256,
        size=weights.size,
        total_size=sum(f.size for f in files),
    )


def print_hops(stack: Any, sent_at: dict[str, datetime]) -> None:
    """Where the pipeline's time goes: the API's POST (wall clock here), the deployment aggregate's decision (its
    event's time, in the worker) and the node agent's log line once vLLM loaded it."""
    attached: dict[str, datetime] = {}
    for event in events(stack):
        if event["type"] == "deployment.adapter_attached":
            attached.setdefault(event["payload"]["adapter"]["name"], datetime.fromisoformat(event["occurred_at"]))
    loaded: dict[str, datetime] = {}
    said: dict[str, str] = {}
    heard: dict[str, datetime] = {}
    for line in (stack.data_dir / "logs" / "node.log").read_text().splitlines():
        if ": should hold bench-lora-" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            heard.setdefault(line.rsplit(" ", 1)[1], stamp)
        if ": loaded bench-lora-" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
            name, _, rest = line.split(": loaded ", 1)[1].partition(" ")
            loaded.setdefault(name, stamp)
            said.setdefault(name, rest)
    for name, sent in sorted(sent_at.items()):
        if name in attached and name in loaded:
            decided = (attached[name] - sent).total_seconds() * 1000
            on_node = (loaded[name] - attached[name]).total_seconds() * 1000
            print(f"{name}: POST -> decided {decided:6.1f} ms, decided -> loaded on the node {on_node:6.1f} ms")
            print(f"    node: {said[name]}")
            if name in heard:
                print(f"    decided -> the node knew: {(heard[name] - attached[name]).total_seconds() * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loras", type=int, default=5, help="LoRAs to load, one round each")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loraplane-bench-") as tmp:
        work = Path(tmp)
        base = make_tiny_llama(work / "base")
        repos = {BASE_REPO: FakeRepo.single(files_of(base))}
        loras = []
        for i in range(args.loras):
            name = f"bench-lora-{i}"
            directory = make_lora_adapter(base, work / name, seed=i + 1, base_model_name=BASE_REPO)
            repos[f"bench/{name}"] = FakeRepo.single(files_of(directory))
            loras.append((name, directory))
        with FakeHub(repos) as hub:
            stack = start_stack(
                work / "stack",
                extra_env={
                    "HF_ENDPOINT": hub.url,
                    "LORAPLANE_NODE_ID": "bench-node",
                    "LORAPLANE_NODE_DEVICES": "cpu:1",
                },
            )
            try:
                sent_at: dict[str, datetime] = {}
                results = asyncio.run(_run(stack, loras, work, sent_at))
                print_hops(stack, sent_at)
            finally:
                stop_stack(stack)
    pipeline = statistics.median(r[0] for r in results)
    fetch = statistics.median(r[1] for r in results)
    raw = statistics.median(r[2] for r in results)
    print(f"median over {len(results)} LoRAs:")
    print(f"  pipeline {pipeline * 1000:.1f} ms, S3 fetch {fetch * 1000:.1f} ms, raw {raw * 1000:.1f} ms")
    print(f"  pipeline / raw: {pipeline / raw:.2f}")
    print(f"  pipeline / (2 x raw + S3 fetch): {pipeline / (2 * raw + fetch):.2f}")
    print("goal: pipeline <= 2 x raw + S3 fetch (the second ratio <= 1.00)")


async def _run(
    stack: Any, loras: list[tuple[str, Path]], work: Path, sent_at: dict[str, datetime]
) -> list[tuple[float, float, float]]:
    key = stack.issue_key("admin", "bench")
    env = stack.cli_env()
    s3 = make_client(Settings.model_validate({"s3_endpoint": env["S3_ENDPOINT"]}))
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=stack.api_url, headers=headers, timeout=120) as api:
        await register_loras(api, [name for name, _ in loras])
        answer = await api.post("/deploy/llm", params={"wait": 20}, json=cpu_deploy_body(SERVED, BASE_REPO))
        deploy_id = answer.json()["deploy_id"]
        began = time.monotonic()
        [instance] = await wait_running(api, deploy_id, 1)
        print(f"deployment running in {time.monotonic() - began:.0f}s")
        # vLLM's own key: the raw baseline calls it directly
        key = await asyncio.to_thread(engine_key, stack, instance["instance_id"])
        bucket = env.get("S3_BUCKET", "loraplane")
        return await rounds(api, instance["endpoint"], key, deploy_id, loras, s3, bucket, work, sent_at)


if __name__ == "__main__":
    main()
