"""A real vLLM (the CPU build, from its own venv) serving a tiny Llama made here, with LoRA adapters hot-loaded.

The venv is built once by infra/vllm_env.py under ~/.cache/loraplane/vllm-env (LORAPLANE_VLLM_ENV overrides) and
reused by later runs; a vLLM start takes about a minute of CPU here, so the module shares one server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from agents.node.gpus import GpuType
from agents.node.vllm_args import VllmSpec, build_vllm_command
from infra.vllm_env import VllmEnv, ensure_vllm_env
from infra.vllm_process import CPU_ENV, VllmApiError, VllmClient, VllmExited, VllmServer
from tests.support import free_port
from tests.tiny_llama import ADAPTER_RANK, make_lora_adapter, make_tiny_llama

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

T = TypeVar("T")
SERVED_NAME = "tiny-llama"
PROMPT = "The quick brown fox"
MAX_TOKENS = 12
DEFAULT_ENV_DIR = Path.home() / ".cache" / "loraplane" / "vllm-env"


@dataclass
class Models:
    base: Path
    adapters: tuple[Path, Path]


@dataclass
class Running:
    server: VllmServer
    start_s: float


class Loop:
    """One event loop for the module: the server's subprocess belongs to the loop that started it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    yield runner
    runner.loop.close()


@pytest.fixture(scope="module")
def vllm_env() -> VllmEnv:
    env_dir = Path(os.environ.get("LORAPLANE_VLLM_ENV", DEFAULT_ENV_DIR))
    return ensure_vllm_env(env_dir, progress=lambda line: print(line, flush=True))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("models")
    base = make_tiny_llama(root / "tiny-llama")
    adapters = (
        make_lora_adapter(base, root / "lora-one", seed=1, base_model_name=SERVED_NAME),
        make_lora_adapter(base, root / "lora-two", seed=2, base_model_name=SERVED_NAME),
    )
    return Models(base, adapters)


def new_server(vllm_env: VllmEnv, models: Models, log_path: Path) -> VllmServer:
    spec = VllmSpec(
        model=str(models.base),
        served_model_name=SERVED_NAME,
        gpu_type=GpuType.CPU,
        max_batch_size=4,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=ADAPTER_RANK,
        extra_args=("--dtype", "float32", "--max-model-len", "256", "--seed", "0"),
    )
    port = free_port()
    argv, env = build_vllm_command(spec, python=str(vllm_env.python), port=port)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    return VllmServer(argv, port=port, log_path=log_path, env={**CPU_ENV, **env})


@pytest.fixture(scope="module")
def vllm(loop: Loop, vllm_env: VllmEnv, models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    server = new_server(vllm_env, models, tmp_path_factory.mktemp("vllm") / "vllm.log")
    start_s = loop.run(server.start())
    print(f"vLLM {vllm_env.vllm_version} ready in {start_s:.1f}s (pid {server.pid})")
    try:
        yield Running(server, start_s)
    finally:
        loop.run(server.stop())


def process_tree(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def assert_all_gone(processes: list[psutil.Process]) -> None:
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left behind: {[(p.pid, p.name()) for p in alive]}"


def test_adapter_loaded_at_runtime_answers_differently_then_unloads_and_stops(
    loop: Loop, vllm: Running, models: Models
) -> None:
    server = vllm.server
    assert server.pid is not None
    tree = process_tree(server.pid)
    assert len(tree) >= 2, "vLLM runs its engine core in a child process"

    async def scenario() -> tuple[str, str, str, float]:
        async with VllmClient(server.base_url) as client:
            assert await client.models() == [SERVED_NAME]
            base = await client.completion(SERVED_NAME, PROMPT, MAX_TOKENS)
            assert base == await client.completion(SERVED_NAME, PROMPT, MAX_TOKENS), "temperature 0 is deterministic"

            began = time.perf_counter()
            await client.load_lora_adapter("lora-one", models.adapters[0])
            load_s = time.perf_counter() - began
            await client.load_lora_adapter("lora-two", models.adapters[1])
            assert set(await client.models()) == {SERVED_NAME, "lora-one", "lora-two"}
            one = await client.completion("lora-one", PROMPT, MAX_TOKENS)
            two = await client.completion("lora-two", PROMPT, MAX_TOKENS)
            # The base model still answers as before beside the adapters.
            assert await client.completion(SERVED_NAME, PROMPT, MAX_TOKENS) == base

            await client.unload_lora_adapter("lora-one")
            assert set(await client.models()) == {SERVED_NAME, "lora-two"}
            with pytest.raises(VllmApiError) as unknown:
                await client.completion("lora-one", PROMPT, MAX_TOKENS)
            assert unknown.value.status == 404, unknown.value
            return base, one, two, load_s

    base, one, two, load_s = loop.run(scenario())
    print(f"load_lora_adapter took {load_s * 1000:.0f} ms; base={base!r} lora-one={one!r} lora-two={two!r}")
    assert base and one and two
    assert one != base
    assert two != base
    assert one != two

    code = loop.run(server.stop())
    assert code is not None
    assert_all_gone(tree)
    assert not loop.run(VllmClient(server.base_url, timeout=2).health())


def test_killed_vllm_is_reported_with_its_last_log_lines(
    loop: Loop, vllm_env: VllmEnv, models: Models, tmp_path: Path
) -> None:
    server = new_server(vllm_env, models, tmp_path / "vllm.log")
    try:
        loop.run(server.start())
        assert server.pid is not None
        tree = process_tree(server.pid)

        async def kill_and_watch() -> VllmExited:
            watcher = asyncio.ensure_future(server.wait_exit())
            await asyncio.sleep(0.2)
            assert not watcher.done()
            os.kill(tree[0].pid, signal.SIGKILL)  # no chance to shut its engine down: the orphan must be reaped too
            return await asyncio.wait_for(watcher, 60)

        exited = loop.run(kill_and_watch())
    finally:
        loop.run(server.stop())
    print(f"reported: {str(exited)[-600:]}")
    assert exited.code == -signal.SIGKILL
    assert exited.last_lines and exited.last_lines == server.last_log_lines()
    assert exited.last_lines in str(exited)
    assert_all_gone(tree)


def test_vllm_that_cannot_start_is_reported_with_its_last_log_lines(
    loop: Loop, vllm_env: VllmEnv, models: Models, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    server = new_server(vllm_env, Models(missing, models.adapters), tmp_path / "vllm.log")
    began = time.monotonic()
    with pytest.raises(VllmExited) as failed:
        loop.run(server.start(ready_timeout=300))
    print(f"reported after {time.monotonic() - began:.1f}s: {str(failed.value)[-600:]}")
    assert failed.value.code not in (None, 0)
    assert "before it was ready" in str(failed.value)
    assert str(missing) in failed.value.last_lines
    assert server.pid is not None
    assert not psutil.pid_exists(server.pid) or psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
