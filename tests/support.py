"""What the tests share: a running `loraplane up`, an HTTP client with a key, reading real topics."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaProducer, TopicPartition

from infra.kafka import make_consumer, read_to_end, stop_quietly
from infra.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """One `loraplane up` process tree and what the tests need to talk to it."""

    data_dir: Path
    api_url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.env["KAFKA_BOOTSTRAP_SERVERS"]

    def cli_env(self) -> dict[str, str]:
        return {**os.environ, **self.env, "LORAPLANE_DATA_DIR": str(self.data_dir)}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "infra.cli", *args],
            env=self.cli_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def settings(self, **overrides: Any) -> Settings:
        """The settings the stack's children run with (its broker, its S3, whether its log is archived), with
        `overrides`. A reader of the log must keep `log_archive`: once the keeper trims a partition, a reader without
        it starts at the broker's oldest batch and misses the archived events before it."""
        env = self.env
        fields: dict[str, Any] = {
            "kafka_bootstrap_servers": env["KAFKA_BOOTSTRAP_SERVERS"],
            "s3_endpoint": env["S3_ENDPOINT"],
            "s3_access_key": env["S3_ACCESS_KEY"],
            "s3_secret_key": env["S3_SECRET_KEY"],
            "s3_bucket": env["S3_BUCKET"],
            "log_archive": env.get("LORAPLANE_LOG_ARCHIVE") == "true",
        }
        return Settings(**{**fields, **overrides})

    def pids(self) -> dict[str, int]:
        return json.loads((self.data_dir / "run" / "processes.json").read_text())  # type: ignore[no-any-return]

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def issue_key(self, role: str = "admin", name: str = "tests", team: str = "default") -> str:
        result = self.cli("keys", "create", "--role", role, "--name", name, "--team", team)
        assert result.returncode == 0, result.stderr
        key = result.stdout.strip()
        # The key is usable once the API's read model has projected it.
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=self.api_url, headers={"Authorization": f"Bearer {key}"}) as client:
            while client.get("/v2/workspaces").status_code == 401:
                assert time.monotonic() < deadline, "the new key never became usable"
                time.sleep(0.1)
        return key


def start_stack(data_dir: Path, extra_env: dict[str, str] | None = None, timeout: float = 180) -> Stack:
    env = {
        **os.environ,
        "LORAPLANE_DATA_DIR": str(data_dir),
        "LORAPLANE_API_PORT": str(free_port()),
        "LORAPLANE_BROKER_PORT": "0",
        "LORAPLANE_S3_PORT": "0",
        # The node agent checks (on a fresh machine: builds) vLLM's environment when a deployment first needs it.
        "LORAPLANE_VLLM_PREPARE": "false",
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "up.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "infra.cli", "up"], env=env, stdout=log, stderr=subprocess.STDOUT)
    stack = Stack(data_dir=data_dir, api_url=f"http://127.0.0.1:{env['LORAPLANE_API_PORT']}", process=process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"loraplane up exited with {process.returncode}:\n{(data_dir / 'up.log').read_text()}")
        try:
            if httpx.get(f"{stack.api_url}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_stack(stack)
            raise RuntimeError(f"stack not ready in {timeout}s:\n{(data_dir / 'up.log').read_text()}")
        time.sleep(0.3)
    for line in (data_dir / "run" / "stack.env").read_text().splitlines():
        key, _, value = line.partition("=")
        stack.env[key] = value
    return stack


def stop_stack(stack: Stack, sig: int = signal.SIGTERM, timeout: float = 60) -> list[psutil.Process]:
    """Signal `loraplane up` and return every process of its tree still alive afterwards."""
    try:
        tree = stack.tree()
    except psutil.NoSuchProcess:
        tree = []
    stack.process.send_signal(sig)
    try:
        stack.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _, alive = psutil.wait_procs(tree, timeout=5)
    for proc in alive:
        proc.kill()
    return alive


class Api(httpx.Client):
    def __init__(self, stack: Stack, key: str | None) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        super().__init__(base_url=stack.api_url, headers=headers, timeout=30)


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    def json(self) -> Any:
        return json.loads(self.value or b"null")


def read_topic(stack: Stack, topic: str) -> list[TopicRecord]:
    """Every record of a topic, from offset 0 to its end as of now (the end as fetches report it). The part of
    `loraplane.events` the embedded broker's log keeper archived is read from the archive, as every reader does."""

    async def read() -> list[TopicRecord]:
        consumer = make_consumer(stack.settings(), fetch_max_wait_ms=150, max_partition_fetch_bytes=8 * 1024 * 1024)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            out: list[TopicRecord] = []

            def collect(tp: TopicPartition, records: list[Any]) -> None:
                out.extend(TopicRecord(tp.partition, r.offset, r.key, r.value, dict(r.headers)) for r in records)

            await read_to_end(consumer, partitions, collect, fetch_max_wait_ms=150)
            return out
        finally:
            await stop_quietly(consumer)

    return asyncio.run(read())


def events(stack: Stack) -> list[dict[str, Any]]:
    return [r.json() for r in read_topic(stack, "loraplane.events")]


class RawProducer:
    """Puts raw bytes on topics from synchronous tests (its own event loop, one producer)."""

    def __init__(self, bootstrap: str) -> None:
        async def start() -> AIOKafkaProducer:  # aiokafka clients are made inside a running loop
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
            await producer.start()
            return producer

        self._loop = asyncio.new_event_loop()
        self._producer = self._loop.run_until_complete(start())

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._loop.run_until_complete(self._producer.send_and_wait(topic, value=value, key=key))

    def send_many(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
        """Send without waiting between messages, so they reach the broker as fast as it takes them."""

        async def all_of_them() -> None:
            sent = [await self._producer.send(topic, value=value, key=key) for key, value in messages]
            await asyncio.gather(*sent)

        self._loop.run_until_complete(all_of_them())

    def close(self) -> None:
        self._loop.run_until_complete(stop_quietly(self._producer))
        self._loop.close()


@contextmanager
def produced(bootstrap: str) -> Iterator[RawProducer]:
    producer = RawProducer(bootstrap)
    try:
        yield producer
    finally:
        producer.close()


def wait_until(predicate: Any, timeout: float = 30, interval: float = 0.1, message: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def engine_key(stack: Stack, instance_id: str) -> str:
    """An instance's engine API key, as the gateway opens it: sealed on its latest `instance.started` event, opened
    with the stack's secret key store (tests only: no caller of loraplane holds it)."""
    from infra.secrets import open_secret_box
    from infra.settings import Settings
    from streams.deployments import engine_key_context

    started = [
        e for e in events(stack) if e["type"] == "instance.started" and e["payload"]["instance_id"] == instance_id
    ]
    assert started, f"{instance_id} never started"
    event = started[-1]
    box = open_secret_box(Settings(data_dir=stack.data_dir))
    context = engine_key_context(event["aggregate_id"], instance_id)
    return box.open(event["payload"]["sealed_api_key"], context=context)


def deploy_and_wait_running(client: Api, body: dict[str, Any], timeout: float = 900.0) -> dict[str, Any]:
    """`POST /deploy/llm` and the Deploy object once it runs (an assertion error with the reason if it fails)."""
    answer = client.post("/deploy/llm", params={"wait": 20}, json=body)
    assert answer.status_code == 200, answer.text
    deploy_id = answer.json()["deploy_id"]

    def running() -> dict[str, Any] | None:
        got = client.get(f"/deploy/{deploy_id}").json()
        assert got["status"] != "failed", got["fail_reason"]
        return got if got["status"] == "running" else None

    began = time.monotonic()
    deployed: dict[str, Any] = wait_until(running, timeout=timeout, interval=1.0, message="the deployment running")
    print(f"deployment {deploy_id} running in {time.monotonic() - began:.0f}s")
    return deployed


def _comparable(value: Any) -> Any:
    """JSON columns come back as dicts and lists: compare them by their canonical text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def read_model_rows(url: str) -> dict[str, set[tuple[Any, ...]]]:
    """Every row of every read-model table, typed by the SQLAlchemy tables (so both backends compare)."""
    from sqlalchemy import select

    from api.readmodel.database import create_engine
    from api.readmodel.tables import metadata

    async def read() -> dict[str, set[tuple[Any, ...]]]:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                return {
                    t.name: {tuple(map(_comparable, row)) for row in await conn.execute(select(t))}
                    for t in metadata.sorted_tables
                }
        finally:
            await engine.dispose()

    return asyncio.run(read())
