"""`loraplane node`: wires the node agent to Kafka, S3, the secret store, the node's devices and vLLM's interpreter."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys

import psutil

import streams.catalog  # noqa: F401 - registers every message type
from agents.node.agent import NodeAgent, NodeContext, engine_records
from agents.node.gpus import DetectedGpu, cpu_device, parse_devices_override, parse_nvidia_smi
from infra.kafka import make_producer, publish, stop_quietly
from infra.s3 import make_client
from infra.secrets import open_secret_box
from infra.settings import Settings
from infra.telemetry import configure_tracing
from infra.vllm_env import VllmEnvError, env_python
from infra.vllm_process import stop_orphans
from streams.cluster import DeviceInfo
from streams.envelope import Envelope
from streams.topics import COMMANDS

log = logging.getLogger(__name__)
NVIDIA_SMI_QUERY = ["--query-gpu=index,name,memory.total,uuid", "--format=csv"]


def detect_devices(settings: Settings) -> list[DetectedGpu]:
    """The setting if given; else what nvidia-smi lists; else one `cpu` device with the host's RAM."""
    ram = psutil.virtual_memory().total
    if settings.node_devices:
        return parse_devices_override(settings.node_devices, total_memory_bytes=ram)
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listing = subprocess.run([smi, *NVIDIA_SMI_QUERY], capture_output=True, text=True, timeout=30, check=True)
            found = parse_nvidia_smi(listing.stdout)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.warning("nvidia-smi failed (%s); this node offers its CPU", exc)
        else:
            if found:
                return found
    return [cpu_device(ram)]


class VllmInterpreter:
    """vLLM's interpreter: the setting, or an environment built once by `python -m infra.vllm_env` in a child process
    group of its own (its progress goes to this log; stopping the node stops the build with it)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._task: asyncio.Task[str] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._resolve(), name="vllm env")

    async def __call__(self) -> str:
        self.start()
        assert self._task is not None
        return await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _resolve(self) -> str:
        if self._settings.vllm_python:
            return self._settings.vllm_python
        env_dir = self._settings.vllm_env_dir
        log.info("vLLM environment at %s: checking (the first build takes about 5 minutes)", env_dir)
        build = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra.vllm_env",
            str(env_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        lines: list[str] = []
        try:
            assert build.stdout is not None
            async for raw in build.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines = [*lines[-19:], line]
                log.info("vLLM env: %s", line)
            code = await build.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(build.pid, signal.SIGKILL)
            await build.wait()
            raise
        if code != 0:
            raise VllmEnvError(f"building vLLM's environment at {env_dir} failed (exit code {code})", lines)
        return str(env_python(env_dir))


async def run_node(settings: Settings) -> None:
    node_id = settings.node_id or socket.gethostname()
    devices = tuple(
        DeviceInfo(index=d.index, gpu_type=d.gpu_type, memory_mb=d.memory_mb, name=d.name[:255])
        for d in detect_devices(settings)
    )
    producer = make_producer(settings)
    await producer.start()

    async def send(command: Envelope) -> None:
        await publish(producer, COMMANDS, command)

    interpreter = VllmInterpreter(settings)
    if settings.vllm_prepare:
        interpreter.start()
    # Engines a dead agent of this node left running are stopped before any is started: never two on one device.
    if orphans := await stop_orphans(engine_records(settings, node_id)):
        log.warning("stopped %d vLLM server(s) a previous node agent left running: %s", len(orphans), orphans)
    ctx = NodeContext(settings, node_id, send, make_client(settings), open_secret_box(settings), interpreter)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await NodeAgent(ctx, devices, send).run(stopping)
    finally:
        await interpreter.stop()
        await stop_quietly(producer)
        log.info("node %s stopped", node_id)


def main(settings: Settings) -> None:
    configure_tracing(settings, "node")
    asyncio.run(run_node(settings))
