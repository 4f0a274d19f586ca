"""The node agent (`loraplane node`): registers the node's devices, runs vLLM for the instances the cluster placed
on it, keeps each instance's adapters as the deployment wants them, and reports every change as a command.

It reads the event log (the cluster and deployment aggregates, folded like the worker folds them) and compares
what should run (`agents.node.desired`) with what runs, every `poll` seconds. Reports go to the deployment's
aggregate (`deployment.report_instance`, `deployment.report_adapter`); the agent decides nothing the log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from minio import Minio

from agents.cluster import CLUSTER
from agents.deployments import DEPLOYMENTS
from agents.event_log import EventLogFollower
from agents.node.desired import DesiredInstance, adapters_for, instances_on
from agents.node.lora_preflight import deployment_facts, facts_of, preflight
from agents.node.reconcile import Load, LoadedAdapter, listed_adapters, reconcile
from agents.node.vllm_args import InvalidVllmSpec, VllmSpec, build_vllm_command
from agents.state import AgentState
from infra.errors import LoraplaneError, TransientError, is_retriable
from infra.node_cache import architecture_of, fetch_adapter_files, fetch_weights
from infra.secrets import SecretBox
from infra.settings import Settings
from infra.vllm_process import CPU_ENV, VllmApiError, VllmClient, VllmServer
from streams.cluster import CLUSTER_ID, DeviceInfo, NodeHeartbeat, RegisterNode
from streams.deployments import (
    AdapterLoadStatus,
    DeployedAdapter,
    DeployGpu,
    InstanceStatus,
    ReportAdapter,
    ReportInstance,
    engine_key_context,
    hf_token_context,
)
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.serialization import envelope_for

log = logging.getLogger(__name__)

Send = Callable[[Envelope], Awaitable[None]]
POLL_S = 0.5
REPORT_BACKOFF_LIMIT_S = 30.0


def engine_records(settings: Settings, node_id: str) -> Path:
    """Where a node agent writes down the engines it runs, for the agent that follows it (`stop_orphans`)."""
    return settings.data_dir / "run" / "engines" / node_id


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class NodeContext:
    """What every instance of the node shares: settings, S3, the secret box, vLLM's interpreter, the reporter."""

    def __init__(
        self,
        settings: Settings,
        node_id: str,
        send: Send,
        s3: Minio,
        secrets: SecretBox,
        vllm_python: Callable[[], Awaitable[str]],
    ) -> None:
        self.settings = settings
        self.node_id = node_id
        self.s3 = s3
        self.secrets = secrets
        self.vllm_python = vllm_python
        self._send = send

    async def report(self, deploy_id: str, payload: Payload) -> None:
        """Send a report; while the broker is briefly away, again with backoff (one command id, so once applied)."""
        command = envelope_for(payload, aggregate_id=deploy_id, actor=SYSTEM_ACTOR, command_id=uuid.uuid4().hex)
        backoff = 0.2
        while True:
            try:
                await self._send(command)
                return
            except Exception as exc:
                if not is_retriable(exc) or backoff > REPORT_BACKOFF_LIMIT_S:
                    log.exception("could not report %s for %s", command.type, deploy_id)
                    return
                log.warning("reporting %s for %s: %s; again in %.1fs", command.type, deploy_id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff *= 2


class InstanceRunner:
    """One placed instance: its vLLM process (restarted with backoff when it dies) and its adapters."""

    def __init__(self, ctx: NodeContext, desired: DesiredInstance) -> None:
        self.ctx = ctx
        self.instance_id = desired.instance_id
        self.deployment = desired.deployment
        self.device_indexes = desired.device_indexes
        self.server: VllmServer | None = None
        # While vLLM serves: an id of this start of it (for the adapter record), and the client that talks to it.
        self.serving: tuple[str, VllmClient] | None = None
        self.architecture: str | None = None
        self.wanted: Mapping[str, DeployedAdapter] = {}
        self.record: dict[str, LoadedAdapter] = {}
        self.refused: set[tuple[str, str, str]] = set()  # (name, sha256, process) whose load failed
        self.locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # The engine's own API key: vLLM refuses every /v1 call without it. Only the gateway can open the sealed copy.
        self.engine_key = secrets.token_urlsafe(32)
        self.sealed_engine_key = str(
            ctx.secrets.seal(self.engine_key, context=engine_key_context(self.deploy_id, self.instance_id))
        )
        self._wake = asyncio.Event()
        self._tasks = [
            asyncio.get_running_loop().create_task(self._run(), name=f"vllm {self.instance_id}"),
            asyncio.get_running_loop().create_task(self._keep_adapters(), name=f"adapters {self.instance_id}"),
        ]

    @property
    def deploy_id(self) -> str:
        return self.deployment.deploy_id

    def want(self, adapters: Mapping[str, DeployedAdapter]) -> None:
        if {n: a.artifact.sha256 for n, a in adapters.items()} != {
            n: a.artifact.sha256 for n, a in self.wanted.items()
        }:
            self.wanted = dict(adapters)
            log.info("%s: should hold %s", self.instance_id, ", ".join(sorted(adapters)) or "no adapter")
            self._wake.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ctx.secrets.shred(self.sealed_engine_key)  # the engine is gone: its key with it

    async def _report(self, status: InstanceStatus, **fields: str | None) -> None:
        report = ReportInstance(instance_id=self.instance_id, node_id=self.ctx.node_id, status=status, **fields)
        await self.ctx.report(self.deploy_id, report)

    # --- vLLM -----------------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        settings = self.ctx.settings
        failures = 0
        try:
            while True:
                await self._report(InstanceStatus.STARTING)
                reason, served = await self._serve_once()
                failures = 1 if served else failures + 1  # a crash after serving starts a new series
                await self._report(InstanceStatus.FAILED, fail_reason=reason[-8000:])
                if failures > settings.vllm_restart_limit:
                    log.error("%s failed %d times in a row; not restarted", self.instance_id, failures)
                    return
                backoff = min(2.0**failures, settings.vllm_restart_max_backoff_s)
                log.warning("%s failed (%d in a row); restarting in %.0fs", self.instance_id, failures, backoff)
                await asyncio.sleep(backoff)
        finally:
            if self.server is not None:
                await self.server.stop(grace=self.ctx.settings.vllm_stop_grace_s)
                self.server = None

    async def _serve_once(self) -> tuple[str, bool]:
        """Start vLLM and serve until it exits: why it is not serving (fail_reason), and whether it had served."""
        settings = self.ctx.settings
        bind = settings.node_bind_host or settings.node_advertise_host
        try:
            model_dir = await self._weights()
            python = await self.ctx.vllm_python()
            argv, env = build_vllm_command(self._spec(model_dir, bind), python=python, port=free_port(bind))
        except (LoraplaneError, InvalidVllmSpec, OSError) as exc:
            return f"could not prepare vLLM: {exc}", False
        port = int(argv[argv.index("--port") + 1])
        cpu = self.deployment.spec.gpu is DeployGpu.CPU
        log_path = settings.data_dir / "logs" / f"vllm-{self.instance_id}.log"
        env = {**(CPU_ENV if cpu else {}), **env}
        server = VllmServer(
            argv,
            port=port,
            log_path=log_path,
            env=env,
            host=settings.node_advertise_host,
            record=engine_records(settings, self.ctx.node_id) / f"{self.instance_id}.json",
        )
        self.server = server
        try:
            seconds = await server.start(ready_timeout=self.ctx.settings.vllm_ready_timeout_s)
        except LoraplaneError as exc:
            self.server = None
            return str(exc), False
        self.architecture = architecture_of(model_dir)
        log.info("%s serves at %s (ready in %.0fs)", self.instance_id, server.base_url, seconds)
        await self._report(
            InstanceStatus.RUNNING,
            endpoint=server.base_url,
            architecture=self.architecture,
            sealed_api_key=self.sealed_engine_key,
        )
        # One client for this start of vLLM: making an httpx client costs tens of ms, on every adapter's path.
        async with VllmClient(server.base_url, api_key=self.engine_key) as client:
            self.serving = (f"{server.pid}:{time.time_ns()}", client)
            self._wake.set()
            try:
                exited = await server.wait_exit()
            finally:
                self.serving = None
        self.server = None
        return str(exited), True

    async def _weights(self) -> Path:
        spec = self.deployment.spec
        source = spec.weights.repo if spec.weights else spec.model_name
        revision = spec.weights.revision if spec.weights else None
        token = None
        if spec.weights and spec.weights.sealed_token:
            token = self.ctx.secrets.open(spec.weights.sealed_token, context=hf_token_context(self.deploy_id))
        settings = self.ctx.settings
        return await asyncio.to_thread(
            fetch_weights, self.ctx.s3, source, revision, token, settings.node_cache, hf_endpoint=settings.hf_endpoint
        )

    def _spec(self, model_dir: Path, host: str) -> VllmSpec:
        spec = self.deployment.spec
        return VllmSpec(
            host=host,
            api_key=self.engine_key,
            model=str(model_dir),
            served_model_name=spec.model_name,
            gpu_type=spec.gpu,
            num_gpus=spec.num_gpus,
            max_batch_size=spec.max_batch_size,
            device_indexes=self.device_indexes,
            enable_lora=spec.lora.max_loras > 0,
            max_loras=max(1, spec.lora.max_loras),
            max_lora_rank=spec.lora.max_lora_rank,
            extra_args=spec.extra_args,
        )

    # --- adapters -------------------------------------------------------------------------------------------------

    async def _keep_adapters(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 10.0)  # and now and then: vLLM may have changed
            self._wake.clear()
            if self.serving is None:
                continue
            process, client = self.serving
            try:
                await self._reconcile_adapters(client, process)
            except Exception:
                log.exception("adapters of %s: reconcile failed; tried again later", self.instance_id)

    async def _reconcile_adapters(self, client: VllmClient, process: str) -> None:
        wanted = dict(self.wanted)
        began = time.perf_counter()
        listed = listed_adapters(await client.model_cards())
        took = time.perf_counter() - began
        log.debug("%s: vLLM listed %d adapters in %.3fs", self.instance_id, len(listed), took)
        plan = reconcile(
            {name: adapter.artifact.sha256 for name, adapter in wanted.items()},
            record=self.record,
            listed=listed,
            process=process,
            slots=self.deployment.spec.lora.max_loras,
        )
        for action in plan.actions:
            async with self.locks[action.name]:
                if isinstance(action, Load):
                    await self._load(client, wanted[action.name], process)
                else:
                    try:
                        await client.unload_lora_adapter(action.name)
                    except VllmApiError as exc:
                        if exc.status != 404:
                            raise
                        # vLLM no longer holds it: that is what the unload wanted.
                    self.record.pop(action.name, None)
                    await self._report_adapter(action.name, AdapterLoadStatus.UNLOADED, reason=action.why)

    async def _load(self, client: VllmClient, adapter: DeployedAdapter, process: str) -> None:
        sha256 = adapter.artifact.sha256
        if (adapter.name, sha256, process) in self.refused:
            return
        facts = deployment_facts(self.deployment.spec, self.architecture)
        reasons = preflight(facts_of(adapter), facts).reasons
        try:
            if reasons:
                raise LoraplaneError("; ".join(reasons))
            cache = self.ctx.settings.node_cache
            fetch_began = time.perf_counter()
            path = await asyncio.to_thread(fetch_adapter_files, self.ctx.s3, adapter.artifact, cache)
            began = time.perf_counter()
            await client.load_lora_adapter(adapter.name, path)
        except TransientError:
            raise  # vLLM or S3 briefly away: the next reconcile (at the latest in 10 s) tries again
        except LoraplaneError as exc:
            # Refused for good in this vLLM process: the same bytes would fail the same way.
            self.refused.add((adapter.name, sha256, process))
            await self._report_adapter(adapter.name, AdapterLoadStatus.FAILED, reason=str(exc))
            return
        log.info(
            "%s: loaded %s in %.3fs (its files from S3 or the node cache in %.3fs)",
            self.instance_id,
            adapter.name,
            time.perf_counter() - began,
            began - fetch_began,
        )
        self.record[adapter.name] = LoadedAdapter(sha256, process)
        await self._report_adapter(adapter.name, AdapterLoadStatus.LOADED, sha256=sha256)

    async def _report_adapter(self, name: str, status: AdapterLoadStatus, **fields: str) -> None:
        report = ReportAdapter(
            instance_id=self.instance_id, node_id=self.ctx.node_id, name=name, status=status, **fields
        )
        await self.ctx.report(self.deploy_id, report)


class NodeAgent:
    def __init__(self, ctx: NodeContext, devices: tuple[DeviceInfo, ...], send: Send) -> None:
        self.ctx = ctx
        self.devices = devices
        self._send = send
        self.state = AgentState({CLUSTER.name: CLUSTER, DEPLOYMENTS.name: DEPLOYMENTS})
        self.follower = EventLogFollower(ctx.settings, self.state, snapshots_as=f"node-{ctx.node_id}")
        self.runners: dict[str, InstanceRunner] = {}

    async def _cluster_command(self, payload: Payload) -> None:
        await self._send(envelope_for(payload, aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR))

    async def run(self, stopping: asyncio.Event) -> None:
        await self.follower.start()
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeats(stopping), name="heartbeats")
        try:
            await self._cluster_command(RegisterNode(node_id=self.ctx.node_id, devices=self.devices))
            log.info("node %s registered %d device(s)", self.ctx.node_id, len(self.devices))
            while not stopping.is_set():
                await self.converge()
                await self.follower.read_more(POLL_S)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await asyncio.gather(*(runner.stop() for runner in self.runners.values()), return_exceptions=True)
            self.runners.clear()
            await self.follower.stop()

    async def converge(self) -> None:
        desired = instances_on(self.state, self.ctx.node_id)
        for instance_id in sorted(set(self.runners) - set(desired)):
            log.info("instance %s was released from this node; stopping it", instance_id)
            await self.runners.pop(instance_id).stop()
        for instance_id, instance in sorted(desired.items()):
            runner = self.runners.get(instance_id)
            if runner is None:
                log.info("instance %s was placed on this node; starting it", instance_id)
                runner = self.runners[instance_id] = InstanceRunner(self.ctx, instance)
            runner.deployment = instance.deployment
            runner.want(adapters_for(self.state, instance.deployment.deploy_id, instance_id))

    async def _heartbeats(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self._cluster_command(NodeHeartbeat(node_id=self.ctx.node_id))
            except Exception:
                log.warning("could not send a heartbeat; trying again", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.ctx.settings.node_heartbeat_s)
