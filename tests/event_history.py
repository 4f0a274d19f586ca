"""A seeded, self-consistent history of the control plane as the events its agents would write, and a writer that
puts such a log straight on `loraplane.events`: the realistic log of `bench/replay.py` and of the replay tests.

Workspaces, API keys, adapters requested, progressed and stored (some rejected, some new versions), seed 004 files
reserved, stored, rejected and binned, deployments created, placed by the cluster, launched, started, with adapters
attached and loaded, later deleted and released, usage batches from the gateways, and a few rejected commands. They
are the real payloads in the real envelopes (`streams.serialization`), aggregate versions contiguous.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from agents.cluster import instance_id
from streams import adapters as ad
from streams import cluster as cl
from streams import deployments as dep
from streams import lora_files as lf
from streams.api_keys import ApiKeyCreated, ApiKeyRevoked, Role
from streams.artifacts import Analysis, Artifact, Progress, Provenance, StoredFile, blob_key
from streams.envelope import SYSTEM_ACTOR, Actor, ActorType, Envelope, Payload, new_id
from streams.naming import EntityType
from streams.outcomes import CommandRejected, RejectionCode
from streams.serialization import encode, envelope_for, headers_for, key_for
from streams.topics import EVENTS
from streams.usage import UsageRecorded, UsageRow
from streams.workspaces import WorkspaceCreated, WorkspaceDeleted

NODES, GPUS_PER_NODE = 32, 8
BASE_MODELS = ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3")
# scenario -> weight; each scenario is one decision or a short chain of them (see History)
SCENARIOS = {"usage": 30.0, "adapter": 6.0, "lora_file": 3.0, "deployment": 1.5, "workspace": 1.0, "api_key": 0.5}
REJECTED_SHARE = 0.01


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class History:
    """A seeded, self-consistent history of the control plane, as the events its agents would have written."""

    rng: random.Random
    clock: datetime = datetime(2025, 1, 1, tzinfo=UTC)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    workspaces: list[str] = field(default_factory=lambda: ["default"])
    keys: list[tuple[str, Actor]] = field(default_factory=list)
    adapters: dict[str, int] = field(default_factory=dict)  # adapter id -> latest version
    stored: list[dep.DeployedAdapter] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)  # entity type -> stored partial paths
    free: dict[str, list[int]] = field(default_factory=dict)  # node -> free device indexes
    running: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # deploy, instance, node, device
    counter: int = 0
    seq: int = 1
    admin: Actor = field(default_factory=lambda: Actor(type=ActorType.USER, id="admin", name="admin"))

    def emit(
        self, payload: Payload, aggregate_id: str, command_id: str, actor: Actor, aggregate_type: str | None = None
    ) -> Envelope:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 60_000))
        draft = envelope_for(
            payload, aggregate_id=aggregate_id, actor=actor, command_id=command_id, aggregate_type=aggregate_type
        )
        key = (draft.aggregate_type, aggregate_id)
        version = self.versions.get(key, 0)
        if not isinstance(payload, CommandRejected):
            version += 1
            self.versions[key] = version
        return draft.model_copy(update={"aggregate_version": version, "occurred_at": self.clock})

    def decision(
        self, payloads: list[Payload], aggregate_id: str, actor: Actor | None = None, aggregate_type: str | None = None
    ) -> Iterator[Envelope]:
        command_id = new_id()
        for payload in payloads:
            yield self.emit(payload, aggregate_id, command_id, actor or self.admin, aggregate_type)

    def name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{self.counter}"

    def events(self) -> Iterator[Envelope]:
        for n in range(NODES):
            node = f"gpu-node-{n:02d}"
            self.free[node] = list(range(GPUS_PER_NODE))
            devices = tuple(
                cl.DeviceInfo(index=i, gpu_type=dep.DeployGpu.H100_80GB, memory_mb=81559, name="NVIDIA H100 80GB HBM3")
                for i in range(GPUS_PER_NODE)
            )
            yield from self.decision([cl.NodeRegistered(node_id=node, devices=devices)], cl.CLUSTER_ID, SYSTEM_ACTOR)
        for _ in range(4):
            yield from self.api_key()
        scenarios, weights = list(SCENARIOS), list(SCENARIOS.values())
        while True:
            if self.rng.random() < REJECTED_SHARE:
                yield from self.rejected()
                continue
            yield from getattr(self, self.rng.choices(scenarios, weights)[0])()

    def workspace(self) -> Iterator[Envelope]:
        if len(self.workspaces) > 20 and self.rng.random() < 0.1:
            name = self.workspaces.pop(self.rng.randrange(1, len(self.workspaces)))
            yield from self.decision([WorkspaceDeleted(name=name)], name)
            return
        name = self.name("team")
        self.workspaces.append(name)
        yield from self.decision([WorkspaceCreated(name=name, description=f"workspace of {name}")], name)

    def api_key(self) -> Iterator[Envelope]:
        if len(self.keys) > 8 and self.rng.random() < 0.1:
            key_id, _ = self.keys.pop(self.rng.randrange(len(self.keys)))
            yield from self.decision([ApiKeyRevoked(key_id=key_id)], key_id)
            return
        key_id = new_id()[:16]
        name = self.name("key")
        self.keys.append((key_id, Actor(type=ActorType.API_KEY, id=key_id, name=name)))
        created = ApiKeyCreated(key_id=key_id, name=name, role=Role.USER, key_hash=_sha(key_id), team="default")
        yield from self.decision([created], key_id)

    def usage(self) -> Iterator[Envelope]:
        key_id, actor = self.rng.choice(self.keys)
        minute = self.clock.replace(second=0, microsecond=0)
        rows = tuple(
            UsageRow(
                minute=minute,
                model=self.rng.choice(self.stored).name if self.stored else BASE_MODELS[0],
                base_model=self.rng.choice(BASE_MODELS),
                requests=self.rng.randint(1, 40),
                prompt_tokens=self.rng.randint(10, 20_000),
                completion_tokens=self.rng.randint(1, 8_000),
            )
            for _ in range(self.rng.randint(1, 4))
        )
        recorded = UsageRecorded(api_key_id=key_id, gateway_id="gateway-1", rows=rows)
        yield from self.decision([recorded], key_id, actor)

    def adapter(self) -> Iterator[Envelope]:
        _, actor = self.rng.choice(self.keys)
        workspace = self.rng.choice(self.workspaces)
        if self.adapters and self.rng.random() < 0.2:
            aggregate_id = self.rng.choice(list(self.adapters))
            workspace, name = aggregate_id.split("/", 1)
        else:
            name = self.name("lora")
            aggregate_id = ad.adapter_id(workspace, name)
        version = self.adapters.get(aggregate_id, 0) + 1
        self.adapters[aggregate_id] = version
        repo = f"org-{self.rng.randint(1, 500)}/{name}"
        base = self.rng.choice(BASE_MODELS)
        spec = ad.AdapterSpec(
            workspace=workspace,
            name=name,
            source=ad.HfSource(repo_id=repo, revision="main"),
            base_model=base,
            description=f"{name}, fine-tuned on support tickets",
            api=ad.AdapterApi.EMPOWER if workspace == "default" else ad.AdapterApi.NEMO,
        )
        yield from self.decision([ad.AdapterRequested(version=version, spec=spec)], aggregate_id, actor)
        size = self.rng.randint(2_000_000, 400_000_000)
        for done in (0, size // 2, size):
            progress = Progress(bytes_done=done, bytes_total=size)
            fetching = ad.AdapterProgressed(version=version, status=ad.AdapterStatus.FETCHING, progress=progress)
            yield from self.decision([fetching], aggregate_id, SYSTEM_ACTOR)
        validating = ad.AdapterProgressed(version=version, status=ad.AdapterStatus.VALIDATING)
        yield from self.decision([validating], aggregate_id, SYSTEM_ACTOR)
        provenance = Provenance(hf_repo=repo, hf_revision="main", hf_commit=_sha(repo)[:40], license="apache-2.0")
        if self.rng.random() < 0.1:
            rejected = ad.AdapterRejected(
                version=version,
                reason="adapter_config.json: target module 'gate_proj' not in the base model",
                part=ad.RejectedPart.CONTENT,
                provenance=provenance,
            )
            yield from self.decision([rejected], aggregate_id, SYSTEM_ACTOR)
            return
        weights, config = _sha(f"{aggregate_id}@{version}"), _sha(f"{aggregate_id}@{version}/config")
        files = (
            StoredFile(path="adapter_config.json", key=blob_key(config), sha256=config, size=712),
            StoredFile(path="adapter_model.safetensors", key=blob_key(weights), sha256=weights, size=size - 712),
        )
        artifact = Artifact(bucket="loraplane", files=files, sha256=weights, size=size - 712, total_size=size)
        rank = self.rng.choice((8, 16, 32, 64))
        analysis = Analysis(
            container="safetensors",
            format="peft",
            rank=rank,
            ranks=(rank,),
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
            dtypes=("BF16",),
            parameter_count=rank * 1_000_000,
            tensor_count=256,
            peft_type="LORA",
            base_model=base,
            lora_alpha=2.0 * rank,
        )
        stored = ad.AdapterStored(version=version, artifact=artifact, analysis=analysis, provenance=provenance)
        yield from self.decision([stored], aggregate_id, SYSTEM_ACTOR)
        public = ad.public_name(workspace, name)
        deployed = dep.DeployedAdapter(
            name=public, adapter_id=aggregate_id, version=version, artifact=artifact, analysis=analysis
        )
        self.stored.append(deployed)

    def lora_file(self) -> Iterator[Envelope]:
        entity = self.rng.choice([e for e in EntityType])
        stored = self.files.setdefault(entity.value, [])
        if stored and self.rng.random() < 0.15:
            partial_path = stored.pop(self.rng.randrange(len(stored)))
            binned = lf.LoraFileBinned(partial_path=partial_path, bin_path=lf.bin_path(partial_path))
            yield from self.decision([binned], entity.value)
            return
        filename = f"{self.name(entity.value)}.safetensors"
        partial_path = f"{entity.value}/{filename}"
        sha = _sha(partial_path)
        size = self.rng.randint(1_000_000, 500_000_000)
        reserved = lf.LoraFileReserved(
            entity_type=entity,
            partial_path=partial_path,
            filename=filename,
            original_filename=filename,
            staged_key=f"staging/{new_id()}",
            size=size,
            sha256=sha,
        )
        yield from self.decision([reserved], entity.value)
        if self.rng.random() < 0.05:
            rejected = lf.LoraFileRejected(partial_path=partial_path, reason="not a LoRA: no lora_up/lora_down keys")
            yield from self.decision([rejected], entity.value, SYSTEM_ACTOR)
            return
        analysis = Analysis(container="safetensors", format="kohya", rank=16, ranks=(16,), dtypes=("F16",))
        file = StoredFile(path=filename, key=blob_key(sha), sha256=sha, size=size)
        stored_event = lf.LoraFileStored(partial_path=partial_path, file=file, analysis=analysis)
        yield from self.decision([stored_event], entity.value, SYSTEM_ACTOR)
        stored.append(partial_path)

    def deployment(self) -> Iterator[Envelope]:
        if len(self.running) >= NODES * GPUS_PER_NODE * 0.8 or (self.running and self.rng.random() < 0.45):
            yield from self.undeploy()
            return
        deploy_id = self.name("deploy")
        base = self.rng.choice(BASE_MODELS)
        spec = dep.DeploymentSpec(model_name=deploy_id, gpu=dep.DeployGpu.H100_80GB, base_model=base)
        yield from self.decision([dep.DeploymentCreated(spec=spec)], deploy_id)
        seq, self.seq = self.seq, self.seq + 1
        instance = cl.InstanceSpec(
            deploy_id=deploy_id,
            instance_id=instance_id(deploy_id, seq),
            gpu_type=dep.DeployGpu.H100_80GB,
            num_gpus=1,
            requested_seq=seq,
        )
        node = next((n for n, free in self.free.items() if free), None)
        if node is None:
            yield from self.decision([cl.InstanceQueued(instance=instance, reason="no free H100-80GB")], cl.CLUSTER_ID)
            self.running.append((deploy_id, instance.instance_id, None, 0))
            return
        device = self.free[node].pop(0)
        placed = cl.InstancePlaced(instance=instance, node_id=node, device_indexes=(device,))
        yield from self.decision([placed], cl.CLUSTER_ID, SYSTEM_ACTOR)
        self.running.append((deploy_id, instance.instance_id, node, device))
        launched = dep.InstanceLaunched(instance_id=instance.instance_id, node_id=node)
        yield from self.decision([launched], deploy_id, SYSTEM_ACTOR)
        endpoint = f"http://10.0.{NODES}.{device}:{8100 + device}"
        started = dep.InstanceStarted(
            instance_id=instance.instance_id, node_id=node, endpoint=endpoint, architecture="LlamaForCausalLM"
        )
        yield from self.decision([started], deploy_id, SYSTEM_ACTOR)
        for adapter in self.rng.sample(self.stored, min(2, len(self.stored))):
            yield from self.decision([dep.AdapterAttached(adapter=adapter)], deploy_id)
            loaded = dep.AdapterLoaded(
                instance_id=instance.instance_id, node_id=node, name=adapter.name, sha256=adapter.artifact.sha256
            )
            yield from self.decision([loaded], deploy_id, SYSTEM_ACTOR)

    def undeploy(self) -> Iterator[Envelope]:
        deploy_id, instance, node, device = self.running.pop(0)
        yield from self.decision([dep.DeploymentDeleted()], deploy_id)
        released = cl.InstanceReleased(deploy_id=deploy_id, instance_id=instance, node_id=node)
        yield from self.decision([released], cl.CLUSTER_ID, SYSTEM_ACTOR)
        if node is not None:
            self.free[node].append(device)

    def rejected(self) -> Iterator[Envelope]:
        name = self.rng.choice(self.workspaces)
        rejection = CommandRejected(
            command_type="workspace.create", code=RejectionCode.CONFLICT, reason="workspace exists", field="name"
        )
        yield from self.decision([rejection], name, aggregate_type="workspace")


async def write_log(
    bootstrap: str, envelopes: Iterator[Envelope], batch_records: int, progress: Callable[[int], None] | None = None
) -> tuple[float, float, int]:
    """Write `envelopes` to `loraplane.events`, keyed and partitioned as `infra.kafka.publish` does, in record batches
    of up to `batch_records` records per partition (Tansu stores one S3 object per batch); `progress(written)` every
    50,000. Returns (seconds building and encoding them, seconds in all, batches written)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=0,
        max_batch_size=4 * 1024 * 1024,
        max_request_size=16 * 1024 * 1024,
        request_timeout_ms=60_000,
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(EVENTS.name))
        partitioner = DefaultPartitioner()
        open_batches: dict[int, Any] = {}
        counts: dict[int, int] = {}
        sent: list[asyncio.Future[Any]] = []
        build = 0.0
        started = time.perf_counter()

        async def flush(partition: int) -> None:
            batch = open_batches.pop(partition)
            counts.pop(partition)
            batch.close()
            sent.append(await producer.send_batch(batch, EVENTS.name, partition=partition))

        done = 0
        began = time.perf_counter()
        for envelope in envelopes:
            key, value, headers = key_for(envelope), encode(envelope), headers_for(envelope)
            build += time.perf_counter() - began
            partition = partitioner(key, partitions, partitions)
            if partition not in open_batches:
                open_batches[partition], counts[partition] = producer.create_batch(), 0
            if open_batches[partition].append(key=key, value=value, timestamp=None, headers=headers) is None:
                await flush(partition)
                open_batches[partition], counts[partition] = producer.create_batch(), 0
                open_batches[partition].append(key=key, value=value, timestamp=None, headers=headers)
            counts[partition] += 1
            if counts[partition] >= batch_records:
                await flush(partition)
            done += 1
            if progress is not None and done % 50_000 == 0:
                progress(done)
            began = time.perf_counter()
        for partition in list(open_batches):
            await flush(partition)
        await asyncio.gather(*sent)
        return build, time.perf_counter() - started, len(sent)
    finally:
        await producer.stop()
