"""Snapshots of the agents' state (agents.snapshots): every aggregate round-trips exactly, and a damaged snapshot,
one of another format version or one of other aggregates is refused. Pure: no broker, no S3."""

from __future__ import annotations

import gc
import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from immutables import Map

import streams.catalog  # noqa: F401
from agents import snapshots
from agents.adapters import ADAPTERS
from agents.aggregate import Aggregate, Rejected
from agents.api_keys import API_KEYS
from agents.app import AGGREGATES
from agents.cluster import CLUSTER
from agents.deployments import DEPLOYMENTS
from agents.filesets import FILESETS
from agents.lora_files import LORA_DIRS, LoraDir
from agents.state import AgentState, HandledCommands
from agents.usage import USAGE
from agents.workspaces import WORKSPACES
from streams import registry
from streams.adapters import (
    AdapterApi,
    AdapterChanges,
    AdapterSpec,
    AdapterStatus,
    CompleteAdapter,
    DeleteAdapter,
    FailAdapter,
    FilesetSource,
    HfSource,
    RegisterAdapter,
    ReportAdapterProgress,
    UpdateAdapter,
)
from streams.api_keys import CreateApiKey, RevokeApiKey, Role
from streams.artifacts import Analysis, Artifact, Progress, Provenance, StoredFile, blob_key
from streams.cluster import CLUSTER_ID, CheckNodes, DeviceInfo, RegisterNode, ReleaseInstances, RequestInstances
from streams.deployments import (
    AdapterLoadStatus,
    AttachAdapter,
    CreateDeployment,
    DeployedAdapter,
    DeployGpu,
    DeploymentSpec,
    DetachAdapter,
    InstanceStatus,
    LoraSettings,
    ReportAdapter,
    ReportInstance,
    ScaleDeployment,
    ScaleSettings,
    Weights,
)
from streams.envelope import SYSTEM_ACTOR, Payload
from streams.evaluations import DatasetItem, EvaluationSpec, Metric, ReportEvaluationProgress, RequestEvaluation, Target
from streams.filesets import AddFilesetFile, StoreFilesetFile
from streams.lora_files import (
    CompleteLoraFile,
    DeleteLoraFile,
    FailLoraFile,
    LoraFileReserved,
    RestoreLoraFile,
    UploadLoraFile,
)
from streams.naming import EntityType
from streams.outcomes import CommandRejected
from streams.serialization import decode, encode, envelope_for
from streams.usage import RecordUsage, UsageRow
from streams.workspaces import CreateWorkspace, DeleteWorkspace

SHA_A, SHA_B = "a" * 64, "b" * 64
POSITIONS = {0: 120, 1: 0, 2: 7}


def send(state: AgentState, aggregate_id: str, *payloads: Payload) -> None:
    """Decide and fold as the processor does, each event through the wire format (as a replay reads it)."""
    for payload in payloads:
        aggregate_type = registry.type_of(payload).aggregate_type
        command = envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR)
        current = state.get(aggregate_type, aggregate_id)
        try:
            decided = list(state.aggregates[aggregate_type].decide(current.value, command))
        except Rejected as refused:
            decided = [CommandRejected(command_type=command.type, code=refused.code, reason=refused.reason)]
        version = current.version
        for event_payload in decided:
            version += not isinstance(event_payload, CommandRejected)
            event = envelope_for(
                event_payload,
                aggregate_id=aggregate_id,
                aggregate_type=aggregate_type,
                actor=SYSTEM_ACTOR,
                aggregate_version=version,
                command_id=command.command_id,
            )
            state.apply(decode(encode(event)))


def artifact(sha: str) -> Artifact:
    file = StoredFile(path="adapter_model.safetensors", key=blob_key(sha), sha256=sha, size=10)
    return Artifact(bucket="b", files=(file,), sha256=sha, size=10, total_size=10)


def analysis() -> Analysis:
    return Analysis(
        container="safetensors", format="peft", rank=8, target_modules=("q_proj",), dtypes=("F32",), base_model="o/t"
    )


def deployed(name: str, sha: str) -> DeployedAdapter:
    return DeployedAdapter(
        name=name, adapter_id=f"default/{name}", version=1, artifact=artifact(sha), analysis=analysis()
    )


def realistic_state() -> AgentState:
    """Every aggregate of the worker, moved through most of its events."""
    state = AgentState({a.name: a for a in AGGREGATES})
    send(state, "ws", CreateWorkspace(name="ws", description="first"))
    send(state, "gone", CreateWorkspace(name="gone"), DeleteWorkspace(name="gone"), DeleteWorkspace(name="gone"))
    send(state, "abcdef12", CreateApiKey(key_id="abcdef12", name="k", role=Role.ADMIN, key_hash="0" * 64))
    send(state, "abcdef13", CreateApiKey(key_id="abcdef13", name="k2", role=Role.USER, key_hash="1" * 64))
    send(state, "abcdef13", RevokeApiKey(key_id="abcdef13"))

    spec = AdapterSpec(
        workspace="ws", name="my-lora", source=FilesetSource(fileset="ws/files"), base_model="o/t", api=AdapterApi.NEMO
    )
    send(
        state,
        "ws/my-lora",
        RegisterAdapter(spec=spec, new_version_if_exists=False),
        ReportAdapterProgress(version=1, status=AdapterStatus.FETCHING, progress=Progress(bytes_done=5)),
        CompleteAdapter(
            version=1, artifact=artifact(SHA_A), analysis=analysis(), provenance=Provenance(source_url="fileset://x")
        ),
        UpdateAdapter(
            workspace="ws", name="my-lora", changes=AdapterChanges(description="d", lora_config={"alpha": 16})
        ),
    )
    hf = AdapterSpec(workspace="default", name="org/repo", source=HfSource(repo_id="org/repo"), api=AdapterApi.EMPOWER)
    send(
        state,
        "default/org/repo",
        RegisterAdapter(spec=hf, new_version_if_exists=True),
        FailAdapter(version=1, reason="not a LoRA"),
        RegisterAdapter(spec=hf, new_version_if_exists=True),
        DeleteAdapter(workspace="default", name="org/repo"),
    )

    def upload(name: str, sha: str) -> UploadLoraFile:
        return UploadLoraFile(
            entity_type=EntityType.STYLES,
            filename=name,
            use_safe_filename=True,
            staged_key=f"staging/{name}",
            size=10,
            sha256=sha,
        )

    def complete(path: str, sha: str) -> CompleteLoraFile:
        stored = StoredFile(path=path.split("/")[-1], key=blob_key(sha), sha256=sha, size=10)
        return CompleteLoraFile(partial_path=path, file=stored, analysis=Analysis(container="safetensors", format="x"))

    send(
        state,
        "styles",
        upload("a.safetensors", SHA_A),
        complete("styles/a.safetensors", SHA_A),
        upload("a.safetensors", SHA_B),
        FailLoraFile(partial_path="styles/a_v2.safetensors", reason="bad"),
        DeleteLoraFile(partial_path="styles/a.safetensors"),
        upload("a.safetensors", SHA_B),
        complete("styles/a.safetensors", SHA_B),
        DeleteLoraFile(partial_path="styles/a.safetensors"),
        RestoreLoraFile(partial_path="styles/a.safetensors"),
        upload("b.safetensors", SHA_A),
    )
    add = {"workspace": "ws", "fileset": "files", "size": 10}
    send(
        state,
        "ws/files",
        AddFilesetFile(**add, path="adapter_config.json", staged_key="staging/c", sha256=SHA_A),
        AddFilesetFile(**add, path="adapter_model.safetensors", staged_key="staging/m", sha256=SHA_B),
        StoreFilesetFile(file=StoredFile(path="adapter_config.json", key=blob_key(SHA_A), sha256=SHA_A, size=10)),
    )

    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    send(
        state,
        CLUSTER_ID,
        RegisterNode(
            node_id="n1", devices=tuple(DeviceInfo(index=i, gpu_type=DeployGpu.CPU, memory_mb=1) for i in (0, 1))
        ),
        RegisterNode(node_id="n2", devices=(DeviceInfo(index=0, gpu_type=DeployGpu.H100_80GB, memory_mb=81920),)),
        RequestInstances(deploy_id="d1", count=2, gpu_type=DeployGpu.CPU, num_gpus=1),
        RequestInstances(deploy_id="d2", count=2, gpu_type=DeployGpu.H100_80GB, num_gpus=1),  # one stays pending
        RequestInstances(deploy_id="d3", count=1, gpu_type=DeployGpu.H100_80GB, num_gpus=1),
        CheckNodes(checked_at=now, timeout_s=10, last_seen={"n2": now - timedelta(minutes=5), "n1": now}),
        ReleaseInstances(deploy_id="d3"),
    )
    spec_d = DeploymentSpec(
        model_name="tiny",
        gpu=DeployGpu.CPU,
        weights=Weights(repo="o/t"),
        lora=LoraSettings(max_loras=2, max_lora_rank=8),
    )
    report = {"instance_id": "d1-1", "node_id": "n1"}
    send(
        state,
        "d1",
        CreateDeployment(spec=spec_d),
        ScaleDeployment(settings=ScaleSettings(min_instances=1, max_instances=2)),
        ReportInstance(**report, status=InstanceStatus.RUNNING, endpoint="http://127.0.0.1:1", architecture="Llama"),
        AttachAdapter(adapter=deployed("one", SHA_A)),
        AttachAdapter(adapter=deployed("two", SHA_B), on_demand=True),
        ReportAdapter(**report, name="one", status=AdapterLoadStatus.LOADED, sha256=SHA_A),
        DetachAdapter(name="two"),
    )
    row = UsageRow(minute=now, model="tiny", requests=2, prompt_tokens=10, completion_tokens=3)
    send(state, "abcdef12", RecordUsage(api_key_id="abcdef12", gateway_id="g", rows=(row,)))
    spec_e = EvaluationSpec(
        adapter=Target(model="one@v1", adapter_id="default/one", version=1),
        baseline=Target(model="tiny"),
        deploy_id="d1",
        engine_model="tiny",
        base_model="o/t",
        metrics=(Metric.PERPLEXITY, Metric.ROUGE_L),
        items=(DatasetItem(prompt="a", reference="b"),),
        item_count=1,
    )
    send(
        state,
        "e1",
        RequestEvaluation(spec=spec_e),
        ReportEvaluationProgress(items_done=1, items_total=1),
    )
    return state


def test_every_aggregate_round_trips_exactly() -> None:
    state = realistic_state()
    assert {t for t, _ in state.entries} == {a.name for a in AGGREGATES}, "the sequence misses an aggregate"
    for (aggregate_type, aggregate_id), entry in state.entries.items():
        assert entry.value is not None, (aggregate_type, aggregate_id)

    loaded = snapshots.load(snapshots.dump(state, POSITIONS, "worker"), state.aggregates)

    assert loaded.positions == POSITIONS and loaded.who == "worker" and loaded.total_offset == 127
    for key, entry in state.entries.items():
        assert loaded.state.entries[key] == entry, key
    assert loaded.state == state
    assert snapshots.snapshot_equals_fold(state, loaded)
    cluster = loaded.state.get("cluster", CLUSTER_ID).value
    assert cluster.placement.pending and cluster.placement.allocations  # the interesting parts were there
    # Derived data not compared by ==: the capacity index is rebuilt or carried over exactly.
    original = state.get("cluster", CLUSTER_ID).value.placement.capacity
    assert cluster.placement.capacity == original
    styles = loaded.state.get("lora_dir", "styles").value
    assert isinstance(styles, LoraDir) and isinstance(styles.files, Map) and len(styles.binned) == 1

    # and the restored state goes on folding like the original
    more = LoraFileReserved(
        entity_type=EntityType.STYLES,
        partial_path="styles/c.safetensors",
        filename="c.safetensors",
        original_filename="c.safetensors",
        staged_key="k",
        size=1,
        sha256=SHA_A,
    )
    version = state.get("lora_dir", "styles").version + 1
    event = envelope_for(more, aggregate_id="styles", actor=SYSTEM_ACTOR, aggregate_version=version)
    state.apply(event)
    loaded.state.apply(event)
    assert loaded.state == state


def test_node_agent_state_round_trips() -> None:
    full = realistic_state()
    node = AgentState({CLUSTER.name: CLUSTER, DEPLOYMENTS.name: DEPLOYMENTS})
    node.entries = {k: v for k, v in full.entries.items() if k[0] in node.aggregates}
    node.handled_commands = full.handled_commands
    loaded = snapshots.load(snapshots.dump(node, POSITIONS, "node-n1"), node.aggregates)
    assert loaded.state == node and loaded.who == "node-n1"
    with pytest.raises(snapshots.SnapshotInvalid, match="covers"):
        snapshots.load(snapshots.dump(node, POSITIONS, "node-n1"), full.aggregates)


def test_a_loaded_state_is_kept_out_of_the_cyclic_collector_s_way() -> None:
    """A loaded state lives as long as its process: it is moved to the permanent generation, so no collection goes
    through its objects again (at 1M events, the first one after the load took 1 s)."""
    state = realistic_state()
    data = snapshots.dump(state, POSITIONS, "worker")
    frozen = gc.get_freeze_count()
    try:
        loaded = snapshots.load(data, state.aggregates)
        assert gc.get_freeze_count() - frozen >= len(loaded.state.entries)
        assert gc.isenabled()
    finally:
        gc.unfreeze()


def _parts(data: bytes) -> tuple[dict[str, object], bytes]:
    head, _, body = gzip.decompress(data).partition(b"\n")
    return json.loads(head), body


def _pack(header: dict[str, object], body: bytes) -> bytes:
    return gzip.compress(json.dumps(header).encode() + b"\n" + body)


def test_a_damaged_or_foreign_snapshot_is_refused() -> None:
    state = realistic_state()
    good = snapshots.dump(state, POSITIONS, "worker")
    header, body = _parts(good)

    altered = body.replace(b'"first"', b'"fist"')  # one changed byte in a workspace's description
    assert altered != body
    with pytest.raises(snapshots.SnapshotInvalid, match="hash"):
        snapshots.load(_pack(header, altered), state.aggregates)
    with pytest.raises(snapshots.SnapshotInvalid, match="hash"):
        snapshots.load(_pack(header, body[: len(body) // 2]), state.aggregates)
    with pytest.raises(snapshots.SnapshotInvalid, match="not gzip"):
        snapshots.load(good[: len(good) // 2], state.aggregates)
    with pytest.raises(snapshots.SnapshotInvalid):
        snapshots.load(b"garbage", state.aggregates)
    with pytest.raises(snapshots.SnapshotInvalid, match="format version"):
        snapshots.load(_pack({**header, "format_version": 99}, body), state.aggregates)

    # A body that hashes right but does not parse as our state (written by other code) is refused too.
    entries = json.loads(body)
    entries["entries"]["workspace"]["values"][0] = {"no": "such field"}
    bad = json.dumps(entries).encode()
    with pytest.raises(snapshots.SnapshotInvalid, match="unreadable body"):
        snapshots.load(_pack({**header, "sha256": hashlib.sha256(bad).hexdigest()}, bad), state.aggregates)

    # An aggregate whose evolve changed (state_version bumped) makes older snapshots unusable.
    bumped = dict(state.aggregates)
    bumped["workspace"] = Aggregate(WORKSPACES.name, WORKSPACES.decide, WORKSPACES.evolve, WORKSPACES.state_type, 2)
    with pytest.raises(snapshots.SnapshotInvalid, match="covers"):
        snapshots.load(good, bumped)
    # A snapshot that kept handled commands for a shorter window than asked for cannot dedupe as asked.
    with pytest.raises(snapshots.SnapshotInvalid, match="keeps handled commands"):
        snapshots.load(good, state.aggregates, handled_window_s=30 * 24 * 3600.0)


def test_handled_commands_keep_only_the_window() -> None:
    handled = HandledCommands(window_s=100.0)
    for i in range(5000):
        handled.add(f"c{i}", float(i))
    assert "c4999" in handled and "c4900" in handled
    assert "c4898" not in handled  # outside the window: not handled, pruned or not
    assert len(handled) == 101
    assert len(handled._at) <= 101 + 1024  # pruned as it goes: bounded by the window, not the log
    state = AgentState({WORKSPACES.name: WORKSPACES}, handled_commands=handled)
    loaded = snapshots.load(snapshots.dump(state, {}, "worker"), state.aggregates)
    assert loaded.state.handled_commands == handled
    assert len(json.loads(_parts(snapshots.dump(state, {}, "worker"))[1])["handled"]["ids"]) == 101


def test_folding_many_reservations_shares_structure() -> None:
    """Seed 004's directory keeps its files in a persistent map: an event never copies the other files (folding
    20k reservations took 1.9 s with a dict copy per event, 0.4 s now), and earlier states stay as they were."""
    state = AgentState({LORA_DIRS.name: LORA_DIRS})
    seen = []
    for i in range(3000):
        reserved = LoraFileReserved(
            entity_type=EntityType.STYLES,
            partial_path=f"styles/f{i}.safetensors",
            filename=f"f{i}.safetensors",
            original_filename=f"f{i}.safetensors",
            staged_key=f"staging/{i}",
            size=10,
            sha256=SHA_A,
        )
        state.apply(envelope_for(reserved, aggregate_id="styles", actor=SYSTEM_ACTOR, aggregate_version=i + 1))
        if i % 1000 == 0:
            seen.append(state.get("lora_dir", "styles").value)
    assert isinstance(state.get("lora_dir", "styles").value.files, Map)
    assert [len(s.files) for s in seen] == [1, 1001, 2001]
    assert len(FILESETS.state_type.__dataclass_fields__["files"].default_factory()) == 0
    assert USAGE.state_type is int and ADAPTERS.state_type and API_KEYS.state_type
