"""The embedded stack for real: SeaweedFS and Tansu as child processes on free loopback ports."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from infra.local_stack import LocalStack
from infra.processes import ChildFailed, ChildSpec, Supervisor
from infra.s3 import make_client
from infra.s3_objects import read_object
from infra.settings import Settings
from streams.topics import ALL_TOPICS, DEADLETTER, EVENTS

REPO = Path(__file__).resolve().parent.parent
PY_SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "broker_port": 0,
        "s3_port": 0,
        "kafka_bootstrap_servers": None,
        "s3_endpoint": None,
    }
    return Settings.model_validate({**values, **overrides})


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tree(pids: dict[str, int]) -> list[psutil.Process]:
    """The children listed in processes.json and all their descendants."""
    procs: list[psutil.Process] = []
    for name, pid in pids.items():
        if name == "supervisor":
            continue
        proc = psutil.Process(pid)
        procs += [proc, *proc.children(recursive=True)]
    return procs


def _listening(procs: list[psutil.Process]) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _eventually(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _object(data_dir: Path, env: dict[str, str], name: str) -> bytes:
    client = make_client(_settings(data_dir, s3_endpoint=env["S3_ENDPOINT"]))
    return await asyncio.to_thread(read_object, client, env["S3_BUCKET"], name)


async def _read_all(bootstrap: str, topic: str, partition: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        values: list[bytes] = []
        deadline = time.monotonic() + 10
        while (await consumer.position(tp)) < end and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            values += [r.value for r in batch.get(tp, []) if r.value is not None]
        return values
    finally:
        await consumer.stop()


# ------------------------------------------------------------------------------------ local stack


def test_stack_serves_topics_objects_and_messages_and_stops_clean(tmp_path: Path) -> None:
    asyncio.run(_serve_then_stop((tmp_path / "data").resolve()))


async def _serve_then_stop(data_dir: Path) -> None:
    lines: list[str] = []
    settings = _settings(data_dir)
    stack = LocalStack(settings, log=lines.append)
    try:
        env = await stack.start_services()
        assert env["LORAPLANE_DATA_DIR"] == str(data_dir)
        assert env["LORAPLANE_KAFKA_FETCH_MAX_WAIT_MS"] == "20"
        assert env["S3_ENDPOINT"].startswith("http://127.0.0.1:")
        bootstrap = env["KAFKA_BOOTSTRAP_SERVERS"]
        assert any(line.startswith("S3 ready in") for line in lines)
        assert any(line.startswith("topics ready:") for line in lines)

        pids = json.loads((data_dir / "run" / "processes.json").read_text())
        assert pids["supervisor"] == os.getpid()
        assert set(pids) == {"supervisor", "seaweedfs", "tansu"}
        procs = _tree(pids)
        listening = _listening(procs)
        # Only on loopback, and only on the ports we chose: no default port of either program remains.
        assert {ip for ip, _ in listening} == {"127.0.0.1"}
        assert {port for _, port in listening} == set(stack.ports.values())

        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            described = {t["topic"]: t for t in await admin.describe_topics([t.name for t in ALL_TOPICS])}
        finally:
            await admin.close()
        for spec in ALL_TOPICS:
            assert described[spec.name]["error_code"] == 0
            assert len(described[spec.name]["partitions"]) == spec.partitions

        client = make_client(settings.model_copy(update={"s3_endpoint": env["S3_ENDPOINT"]}))
        body = b"adapter weights " + uuid.uuid4().bytes
        await asyncio.to_thread(client.put_object, env["S3_BUCKET"], "a/b.bin", io.BytesIO(body), len(body))
        response = await asyncio.to_thread(client.get_object, env["S3_BUCKET"], "a/b.bin")
        try:
            assert response.read() == body
        finally:
            response.close()
            response.release_conn()

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            sent = await producer.send_and_wait(EVENTS.name, b"event-1", key=b"aggregate-1")
        finally:
            await producer.stop()
        assert b"event-1" in await _read_all(bootstrap, EVENTS.name, sent.partition)
    finally:
        await stack.stop()

    assert not [p.pid for p in procs if _alive(p)]
    assert all(_port_free(port) for port in stack.ports.values())
    assert not (data_dir / "run" / "processes.json").exists()
    stopped = [line.split()[0] for line in lines if " stopped (code " in line]
    assert stopped == ["tansu", "seaweedfs"]  # newest first: the broker before its storage
    await stack.stop()  # idempotent


def test_stack_restart_on_same_data_dir_keeps_messages_and_objects(tmp_path: Path) -> None:
    asyncio.run(_restart_keeps_data(tmp_path / "data"))


async def _restart_keeps_data(data_dir: Path) -> None:
    marker = uuid.uuid4().hex.encode()
    stack = LocalStack(_settings(data_dir), log=lambda _: None)
    try:
        env = await stack.start_services()
        producer = AIOKafkaProducer(bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"])
        await producer.start()
        try:
            await producer.send_and_wait(DEADLETTER.name, marker)
        finally:
            await producer.stop()
        client = make_client(_settings(data_dir, s3_endpoint=env["S3_ENDPOINT"]))
        await asyncio.to_thread(client.put_object, env["S3_BUCKET"], "kept", io.BytesIO(marker), len(marker))
    finally:
        await stack.stop()

    # A new data directory gets the SQLite filer store, never LevelDB's (see infra/local_stack.py).
    assert (data_dir / "s3" / "filer.db").is_file()
    assert not (data_dir / "s3" / "filerldb2").exists()

    again = LocalStack(_settings(data_dir), log=lambda _: None)
    try:
        env = await again.start_services()
        assert marker in await _read_all(env["KAFKA_BOOTSTRAP_SERVERS"], DEADLETTER.name, 0)
        assert await _object(data_dir, env, "kept") == marker
    finally:
        await again.stop()


def test_a_data_dir_with_a_leveldb_filer_keeps_it_and_its_objects(tmp_path: Path) -> None:
    asyncio.run(_leveldb_filer_kept(tmp_path / "data"))


async def _leveldb_filer_kept(data_dir: Path) -> None:
    # Data directories made before the SQLite filer store hold SeaweedFS's default LevelDB one, which alone knows
    # their objects: the stack must go on using it.
    leveldb = data_dir / "s3" / "filerldb2"
    leveldb.mkdir(parents=True)
    marker = uuid.uuid4().hex.encode()
    for attempt in range(2):
        stack = LocalStack(_settings(data_dir), log=lambda _: None)
        try:
            env = await stack.start_services()
            if attempt == 0:
                client = make_client(_settings(data_dir, s3_endpoint=env["S3_ENDPOINT"]))
                await asyncio.to_thread(client.put_object, env["S3_BUCKET"], "kept", io.BytesIO(marker), len(marker))
            assert await _object(data_dir, env, "kept") == marker
        finally:
            await stack.stop()
        assert any(leveldb.glob("*/CURRENT")), "SeaweedFS did not keep its filer in LevelDB"
        assert not (data_dir / "s3" / "filer.db").exists()


def test_second_stack_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        first = LocalStack(_settings(tmp_path), log=lambda _: None)
        (tmp_path / "run").mkdir(parents=True)
        first._lock_data_dir()
        try:
            with pytest.raises(RuntimeError, match="another loraplane stack"):
                await LocalStack(_settings(tmp_path), log=lambda _: None).start_services()
        finally:
            await first.stop()

    asyncio.run(run())


# ------------------------------------------------------------------------------------- supervisor


def test_supervisor_restarts_a_killed_child_and_stop_leaves_nothing(tmp_path: Path) -> None:
    asyncio.run(_restart_killed_child(tmp_path))


async def _restart_killed_child(data_dir: Path) -> None:
    lines: list[str] = []
    supervisor = Supervisor(data_dir, lines.append)
    pid_file = data_dir / "run" / "processes.json"
    # A second child with a grandchild in its process group: stop() must take both.
    spawner = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(60)"
    try:
        first = await supervisor.start(ChildSpec("sleeper", PY_SLEEP))
        await supervisor.start(ChildSpec("parent", [sys.executable, "-c", spawner, *PY_SLEEP]))
        assert json.loads(pid_file.read_text())["sleeper"] == first
        watch = asyncio.create_task(supervisor.watch())
        os.kill(first, signal.SIGKILL)
        await _eventually(lambda: supervisor.pid("sleeper") not in (None, first), within=5)
        second = supervisor.pid("sleeper")
        assert lines[0] == "sleeper exited with code -9; restarting in 0.5s"
        await _eventually(lambda: json.loads(pid_file.read_text()).get("sleeper") == second, within=2)
        assert json.loads(pid_file.read_text())["supervisor"] == os.getpid()
        parent = psutil.Process(supervisor.pids()["parent"])
        await _eventually(lambda: len(parent.children()) == 1, within=5)
        procs = _tree(json.loads(pid_file.read_text()))
        assert len(procs) == 3
        watch.cancel()
    finally:
        await supervisor.stop(timeout=5)
    assert not [p.pid for p in procs if _alive(p)]
    assert not pid_file.exists()
    assert "--- " in supervisor.last_log_lines("sleeper")


def test_supervisor_raises_child_failed_for_a_non_restartable_child(tmp_path: Path) -> None:
    async def run() -> None:
        supervisor = Supervisor(tmp_path, lambda _: None)
        code = "import sys; print('loading adapters'); print('boom', file=sys.stderr); sys.exit(3)"
        try:
            await supervisor.start(ChildSpec("once", [sys.executable, "-c", code], restart=False))
            with pytest.raises(ChildFailed) as failed:
                await asyncio.wait_for(supervisor.watch(), 10)
        finally:
            await supervisor.stop()
        assert (failed.value.name, failed.value.code) == ("once", 3)
        assert failed.value.last_log_lines.splitlines()[-2:] == ["loading adapters", "boom"]

    asyncio.run(run())


def test_a_child_past_its_grace_gets_its_dump_signal_before_it_is_killed(tmp_path: Path) -> None:
    """SeaweedFS has at times not stopped on SIGTERM: its dump signal (SIGQUIT, Go's stack dump) leaves in its log where
    it waited. A child without one is killed as before."""
    stuck = textwrap.dedent(
        """
        import signal, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        def dump(*_):
            print("goroutine 1 [select]: waiting here", flush=True)
            sys.exit(2)
        signal.signal(signal.SIGQUIT, dump)
        print("ready", flush=True)
        time.sleep(60)
        """
    )

    async def run() -> None:
        lines: list[str] = []
        supervisor = Supervisor(tmp_path, lines.append)
        await supervisor.start(ChildSpec("go", [sys.executable, "-c", stuck], dump_signal=signal.SIGQUIT))
        await supervisor.start(ChildSpec("plain", [sys.executable, "-c", stuck]))
        for name in ("go", "plain"):
            await _eventually(lambda name=name: "ready" in supervisor.last_log_lines(name).splitlines(), within=10)
        await supervisor.stop(timeout=1)
        assert "goroutine 1 [select]: waiting here" in supervisor.last_log_lines("go").splitlines()
        assert "goroutine 1 [select]: waiting here" not in supervisor.last_log_lines("plain").splitlines()
        ends = [line for line in lines if "did not stop" in line or "stopped (code" in line]
        assert ends[0] == "plain did not stop within 1s; killing it"
        assert ends[1].startswith("plain stopped (code -9)")
        path = supervisor.log_path("go")
        assert ends[2] == f"go did not stop within 1s; sent SIGQUIT for its stacks ({path}), then killing it"
        assert ends[3].startswith("go stopped (code 2)")

    asyncio.run(run())


def test_children_die_when_the_supervisor_is_sigkilled(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from pathlib import Path
        from infra.processes import ChildSpec, Supervisor

        async def main() -> None:
            supervisor = Supervisor(Path({str(tmp_path)!r}), print)
            print(await supervisor.start(ChildSpec("sleeper", {PY_SLEEP!r})), flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    outer = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert outer.stdout is not None
        child = psutil.Process(int(outer.stdout.readline()))
        assert _alive(child)
        outer.kill()
        outer.wait(5)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if outer.poll() is None:
            outer.kill()
            outer.wait()
