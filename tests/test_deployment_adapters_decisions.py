"""Adapters on deployments, pure: attach (after the pre-flight check), detach, node reports, and which adapters
each instance of a node should hold (agents.node.desired) as the folded log says."""

from __future__ import annotations

import pytest

import streams.catalog  # noqa: F401
from agents.aggregate import Rejected
from agents.cluster import CLUSTER
from agents.deployments import DEPLOYMENTS, Deployment
from agents.node.desired import adapters_for, instances_on
from agents.state import AgentState
from streams import registry
from streams.artifacts import Analysis, Artifact, StoredFile
from streams.cluster import CLUSTER_ID, DeviceInfo, RegisterNode, RequestInstances
from streams.deployments import (
    AdapterAttached,
    AdapterChecked,
    AdapterDetached,
    AdapterEvicted,
    AdapterLoaded,
    AdapterLoadFailed,
    AdapterLoadStatus,
    AdapterUnloaded,
    AttachAdapter,
    CheckAdapter,
    CreateDeployment,
    DeployedAdapter,
    DeployGpu,
    DeploymentSpec,
    DetachAdapter,
    Eviction,
    InstanceLaunched,
    InstanceStatus,
    LoraSettings,
    ReportAdapter,
    ReportInstance,
    Weights,
)
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.outcomes import RejectionCode
from streams.serialization import envelope_for

BASE = "org/tiny-llama"
SPEC = DeploymentSpec(
    model_name="tiny", gpu=DeployGpu.CPU, weights=Weights(repo=BASE), lora=LoraSettings(max_loras=1, max_lora_rank=8)
)


def adapter(
    name: str, *, rank: int = 8, base: str = BASE, modules: tuple[str, ...] = ("q_proj", "v_proj")
) -> DeployedAdapter:
    sha = (name.encode().hex() * 64)[:64]
    files = (StoredFile(path="adapter_model.safetensors", key=f"blobs/sha256/{sha[:2]}/{sha}", sha256=sha, size=10),)
    return DeployedAdapter(
        name=name,
        adapter_id=f"default/{name}",
        version=1,
        artifact=Artifact(bucket="b", files=files, sha256=sha, size=10, total_size=10),
        analysis=Analysis(
            container="safetensors", format="peft", rank=rank, target_modules=modules, dtypes=("F32",), base_model=base
        ),
    )


def command(payload: Payload, aggregate_id: str = "d1") -> Envelope:
    return envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR)


def decide_all(state: AgentState, aggregate_id: str, *payloads: Payload) -> list[Payload]:
    out: list[Payload] = []
    for payload in payloads:
        aggregate_type = registry.type_of(payload).aggregate_type
        current = state.get(aggregate_type, aggregate_id)
        decided = state.aggregates[aggregate_type].decide(current.value, command(payload, aggregate_id))
        for version, event in enumerate(decided, start=current.version + 1):
            state.apply(envelope_for(event, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=version))
        out.extend(decided)
    return out


def new_state() -> AgentState:
    return AgentState({"deployment": DEPLOYMENTS, "cluster": CLUSTER})


def deployment(state: AgentState) -> Deployment:
    value = state.get("deployment", "d1").value
    assert isinstance(value, Deployment)
    return value


def test_attach_report_and_detach() -> None:
    state = new_state()
    report = {"instance_id": "d1-1", "node_id": "n"}
    out = decide_all(
        state,
        "d1",
        CreateDeployment(spec=SPEC),
        AttachAdapter(adapter=adapter("one")),
        ReportAdapter(**report, name="one", status=AdapterLoadStatus.LOADED, sha256=adapter("one").artifact.sha256),
    )
    assert [type(e) for e in out[1:]] == [AdapterAttached, AdapterLoaded]
    assert deployment(state).loaded == {"d1-1": {"one": adapter("one").artifact.sha256}}
    # A restarting vLLM holds nothing it loaded at run time.
    decide_all(state, "d1", ReportInstance(**report, status=InstanceStatus.STARTING))
    assert deployment(state).loaded == {}
    out = decide_all(
        state,
        "d1",
        ReportAdapter(**report, name="one", status=AdapterLoadStatus.FAILED, reason="vLLM said no"),
        ReportAdapter(**report, name="one", status=AdapterLoadStatus.UNLOADED),
        DetachAdapter(name="one"),
    )
    assert [type(e) for e in out] == [AdapterLoadFailed, AdapterUnloaded, AdapterDetached]
    assert deployment(state).adapters == {}
    with pytest.raises(Rejected) as refused:
        decide_all(state, "d1", DetachAdapter(name="one"))
    assert refused.value.code is RejectionCode.NOT_FOUND
    assert isinstance(out[0], AdapterLoadFailed) and out[0].reason == "vLLM said no"
    assert [type(e) for e in decide_all(state, "d1", ReportInstance(**report, status=InstanceStatus.STARTING))] == [
        InstanceLaunched
    ]


def test_an_adapter_the_instances_cannot_serve_is_refused_with_every_reason() -> None:
    state = new_state()
    decide_all(state, "d1", CreateDeployment(spec=SPEC))
    wrong = adapter("wide", rank=16, base="org/other", modules=("lm_head",))
    with pytest.raises(Rejected) as refused:
        decide_all(state, "d1", AttachAdapter(adapter=wrong))
    assert refused.value.code is RejectionCode.INVALID and refused.value.field == "lora_name"
    reason = refused.value.reason
    assert "rank 16 is above the instance's max_lora_rank 8" in reason
    assert "targets lm_head" in reason and "targets none of" in reason
    assert "was trained on 'org/other'" in reason
    assert deployment(state).adapters == {}


def test_each_instance_of_a_node_gets_its_share_of_the_adapters_by_slots() -> None:
    state = new_state()
    devices = (DeviceInfo(index=0, gpu_type=DeployGpu.CPU, memory_mb=1024),)
    decide_all(
        state, CLUSTER_ID, RegisterNode(node_id="a", devices=devices), RegisterNode(node_id="b", devices=devices)
    )
    decide_all(state, "d1", CreateDeployment(spec=SPEC))
    decide_all(state, CLUSTER_ID, RequestInstances(deploy_id="d1", count=2, gpu_type=DeployGpu.CPU, num_gpus=1))
    on_a, on_b = instances_on(state, "a"), instances_on(state, "b")
    assert len(on_a) == len(on_b) == 1, "instances of one deployment spread over nodes"
    [(ia, _)] = on_a.items()
    [(ib, _)] = on_b.items()
    for instance_id in (ia, ib):
        decide_all(
            state,
            "d1",
            ReportInstance(instance_id=instance_id, node_id="n", status=InstanceStatus.RUNNING, endpoint="http://x"),
        )
    decide_all(state, "d1", AttachAdapter(adapter=adapter("one")), AttachAdapter(adapter=adapter("two")))
    # One slot each: the two adapters are spread, one per instance.
    held = {iid: set(adapters_for(state, "d1", iid)) for iid in (ia, ib)}
    assert sorted(map(sorted, held.values())) == [["one"], ["two"]]
    # What an instance reported loaded stays where it is (no thrashing).
    holder_of_two = next(iid for iid, names in held.items() if names == {"two"})
    other = ia if holder_of_two == ib else ib
    sha = adapter("one").artifact.sha256
    decide_all(
        state,
        "d1",
        ReportAdapter(instance_id=other, node_id="n", name="one", status=AdapterLoadStatus.LOADED, sha256=sha),
    )
    assert set(adapters_for(state, "d1", other)) == {"one"}
    assert instances_on(state, "nobody") == {}


def test_a_check_records_the_verdict_with_every_reason_and_changes_nothing() -> None:
    state = new_state()
    decide_all(state, "d1", CreateDeployment(spec=SPEC))
    before = deployment(state)
    [ok] = decide_all(state, "d1", CheckAdapter(adapter=adapter("one")))
    assert ok == AdapterChecked(name="one", adapter_id="default/one", version=1, compatible=True, reasons=())
    [refused] = decide_all(state, "d1", CheckAdapter(adapter=adapter("wide", rank=16, base="org/other")))
    assert isinstance(refused, AdapterChecked) and not refused.compatible
    assert len(refused.reasons) == 2 and "rank 16" in refused.reasons[0] and "org/other" in refused.reasons[1]
    assert deployment(state) == before


def test_on_demand_adapters_are_evicted_in_the_same_decision_and_pinned_ones_never() -> None:
    state = new_state()
    two_slots = SPEC.model_copy(update={"lora": LoraSettings(max_loras=2, max_lora_rank=8)})
    decide_all(state, "d1", CreateDeployment(spec=two_slots), AttachAdapter(adapter=adapter("pinned")))
    decide_all(state, "d1", AttachAdapter(adapter=adapter("lazy"), on_demand=True))
    assert deployment(state).on_demand == {"lazy"}
    reason = "evicted to free a slot for next: the least recently used on-demand adapter"
    out = decide_all(
        state,
        "d1",
        AttachAdapter(adapter=adapter("next"), on_demand=True, evict=(Eviction(name="lazy", reason=reason),)),
    )
    assert out == [AdapterEvicted(name="lazy", reason=reason), AdapterAttached(adapter=adapter("next"), on_demand=True)]
    assert set(deployment(state).adapters) == {"pinned", "next"} and deployment(state).on_demand == {"next"}
    with pytest.raises(Rejected) as refused:
        decide_all(
            state,
            "d1",
            AttachAdapter(adapter=adapter("more"), on_demand=True, evict=(Eviction(name="pinned", reason="r"),)),
        )
    assert refused.value.code is RejectionCode.CONFLICT and "pinned" in refused.value.reason
    assert set(deployment(state).adapters) == {"pinned", "next"}


def test_serving_explicitly_pins_and_asking_again_on_demand_changes_nothing() -> None:
    state = new_state()
    decide_all(state, "d1", CreateDeployment(spec=SPEC), AttachAdapter(adapter=adapter("one"), on_demand=True))
    assert deployment(state).on_demand == {"one"}
    decide_all(state, "d1", AttachAdapter(adapter=adapter("one")))
    assert deployment(state).on_demand == frozenset()
    [again] = decide_all(
        state, "d1", AttachAdapter(adapter=adapter("one"), on_demand=True, evict=(Eviction(name="x", reason="r"),))
    )
    assert again == AdapterAttached(adapter=adapter("one"), on_demand=False)
    assert deployment(state).on_demand == frozenset()
    other = adapter("two").model_copy(update={"name": "one"})
    with pytest.raises(Rejected) as refused:
        decide_all(state, "d1", AttachAdapter(adapter=other, on_demand=True))
    assert refused.value.code is RejectionCode.CONFLICT and refused.value.field == "lora_name"
    decide_all(state, "d1", DetachAdapter(name="one"))
    assert deployment(state).adapters == {} and deployment(state).on_demand == frozenset()


def test_an_on_demand_adapter_takes_only_a_free_slot_and_an_explicit_one_any() -> None:
    """Attached beyond the slots, an on-demand adapter would wait for a slot nothing frees: refused, so its sender
    asks again with an eviction (the gateway) or leaves it to be loaded on demand (the process manager)."""
    state = new_state()
    decide_all(state, "d1", CreateDeployment(spec=SPEC), AttachAdapter(adapter=adapter("lazy"), on_demand=True))
    with pytest.raises(Rejected) as refused:
        decide_all(state, "d1", AttachAdapter(adapter=adapter("next"), on_demand=True))
    assert refused.value.code is RejectionCode.CONFLICT and refused.value.field == "evict"
    assert "no free adapter slot" in refused.value.reason and set(deployment(state).adapters) == {"lazy"}
    # asked again for what it holds: no slot needed
    [again] = decide_all(state, "d1", AttachAdapter(adapter=adapter("lazy"), on_demand=True))
    assert isinstance(again, AdapterAttached)
    evict = (Eviction(name="lazy", reason="r"),)
    decide_all(state, "d1", AttachAdapter(adapter=adapter("next"), on_demand=True, evict=evict))
    assert set(deployment(state).adapters) == {"next"}
    # serving one explicitly is the user's choice: it is attached, and waits for a slot (shown pending)
    decide_all(state, "d1", AttachAdapter(adapter=adapter("mine")))
    assert set(deployment(state).adapters) == {"next", "mine"}
