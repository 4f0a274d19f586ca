"""Deployment decisions, the process manager's reconcile, and the liveness tracker: pure, no stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

import streams.catalog  # noqa: F401
from agents.aggregate import Rejected
from agents.cluster import CLUSTER
from agents.deployment_instances import reconcile
from agents.deployments import DEPLOYMENTS, Deployment
from agents.node_liveness import NodeLiveness, cluster_partition
from agents.state import AgentState
from streams import registry
from streams.cluster import (
    CLUSTER_ID,
    CheckNodes,
    DeviceInfo,
    NodeHeartbeat,
    RegisterNode,
    ReleaseInstances,
    RequestInstances,
)
from streams.deployments import (
    CreateDeployment,
    DeleteDeployment,
    DeployGpu,
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentSpec,
    InstanceFailed,
    InstanceStarted,
    InstanceStatus,
    ReportInstance,
    ScaleDeployment,
    ScaleSettings,
)
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.outcomes import RejectionCode
from streams.serialization import encode, envelope_for, headers_for
from streams.topics import COMMANDS

SPEC = DeploymentSpec(model_name="org/tiny", gpu=DeployGpu.H100_80GB)


def command(payload: Payload, aggregate_id: str = "d1") -> Envelope:
    return envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR)


def run(*payloads: Payload) -> tuple[Deployment | None, list[Payload]]:
    state: Deployment | None = None
    out: list[Payload] = []
    for version, payload in enumerate(payloads, start=1):
        for event_payload in DEPLOYMENTS.decide(state, command(payload)):
            out.append(event_payload)
            event = envelope_for(event_payload, aggregate_id="d1", actor=SYSTEM_ACTOR, aggregate_version=version)
            state = DEPLOYMENTS.evolve(state, event)
    return state, out


def refusal(state_payloads: list[Payload], payload: Payload) -> Rejected:
    state, _ = run(*state_payloads)
    with pytest.raises(Rejected) as refused:
        DEPLOYMENTS.decide(state, command(payload))
    return refused.value


def test_create_scale_report_delete() -> None:
    state, out = run(
        CreateDeployment(spec=SPEC),
        ScaleDeployment(settings=ScaleSettings(min_instances=2, max_instances=4)),
        ReportInstance(instance_id="d1-1", node_id="n", status=InstanceStatus.RUNNING, endpoint="http://n:8000"),
        ReportInstance(instance_id="d1-2", node_id="n", status=InstanceStatus.FAILED),
        DeleteDeployment(),
    )
    assert [type(e) for e in out] == [
        DeploymentCreated,
        DeploymentScaled,
        InstanceStarted,
        InstanceFailed,
        DeploymentDeleted,
    ]
    assert isinstance(out[3], InstanceFailed) and out[3].fail_reason == "the instance failed without a reason"
    assert state is not None and state.deleted and state.desired_instances == 0
    assert state.instances == {"d1-1": InstanceStatus.RUNNING, "d1-2": InstanceStatus.FAILED}


def test_refusals_name_the_field() -> None:
    bad_args = SPEC.model_copy(update={"extra_args": ("--port", "9", "--api-key", "x", "--seed", "1")})
    refused = refusal([], CreateDeployment(spec=bad_args))
    assert refused.code is RejectionCode.INVALID and refused.field == "extra_args"
    assert (
        "--port is set by the node agent" in refused.reason and "--api-key is set by the node agent" in refused.reason
    )
    for update, field in (({"num_gpus": 9}, "num_gpus"), ({"max_batch_size": 0}, "max_batch_size")):
        assert refusal([], CreateDeployment(spec=SPEC.model_copy(update=update))).field == field
    upside_down = ScaleSettings(min_instances=3, max_instances=1)
    assert refusal([], CreateDeployment(spec=SPEC.model_copy(update={"settings": upside_down}))).field == "settings"
    assert refusal([CreateDeployment(spec=SPEC)], ScaleDeployment(settings=upside_down)).field == "settings"
    assert refusal([CreateDeployment(spec=SPEC)], CreateDeployment(spec=SPEC)).code is RejectionCode.CONFLICT
    assert refusal([], DeleteDeployment()).code is RejectionCode.NOT_FOUND
    assert (
        refusal([CreateDeployment(spec=SPEC), DeleteDeployment()], DeleteDeployment()).code is RejectionCode.NOT_FOUND
    )
    running_without_endpoint = ReportInstance(instance_id="d1-1", node_id="n", status=InstanceStatus.RUNNING)
    assert refusal([CreateDeployment(spec=SPEC)], running_without_endpoint).field == "endpoint"


def fold(state: AgentState, aggregate_id: str, payloads: list[Payload]) -> None:
    for payload in payloads:
        current = state.get(payload_type(payload), aggregate_id)
        event = envelope_for(
            payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=current.version + 1
        )
        state.apply(event)


def payload_type(payload: Payload) -> str:
    return registry.type_of(payload).aggregate_type


def test_reconcile_asks_for_what_the_cluster_lacks() -> None:
    state = AgentState({"deployment": DEPLOYMENTS, "cluster": CLUSTER})
    fold(state, "a", [DeploymentCreated(spec=SPEC)])
    fold(state, "b", [DeploymentCreated(spec=SPEC), DeploymentDeleted()])
    fold(state, "c", [DeploymentCreated(spec=SPEC)])
    # the cluster already holds c's instance (pending); a and b's requests were lost in a crash
    cluster = state.get("cluster", CLUSTER_ID).value
    decided = CLUSTER.decide(cluster, command(RequestInstances(deploy_id="c", count=1, gpu_type=SPEC.gpu, num_gpus=1)))
    fold(state, CLUSTER_ID, list(decided))
    assert reconcile(state) == [RequestInstances(deploy_id="a", count=1, gpu_type=SPEC.gpu, num_gpus=1)]
    fold(state, "c", [DeploymentDeleted()])
    assert reconcile(state)[1] == ReleaseInstances(deploy_id="c")


def test_liveness_judges_only_as_owner_and_only_after_a_full_timeout() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    liveness = NodeLiveness(timeout_s=30)
    assert liveness.check(["a", "b"], t0 + timedelta(hours=1)) is None  # not the owner: never judges
    liveness.ownership(True, t0)
    heartbeat = envelope_for(NodeHeartbeat(node_id="a"), aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR)
    liveness.heard_message(encode(heartbeat), headers_for(heartbeat), t0 + timedelta(seconds=20))
    other = command(DeleteDeployment())
    liveness.heard_message(encode(other), headers_for(other), t0 + timedelta(seconds=25))  # ignored
    assert liveness.check(["a", "b"], t0 + timedelta(seconds=30)) is None  # b counts from t0: not silent long enough
    # c registers later: its registration counts as seen, so it is not judged on the owner's start
    joined = envelope_for(_register("c"), aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR)
    liveness.heard_message(encode(joined), [], t0 + timedelta(seconds=40))  # no type header: decoded to find out
    check = liveness.check(["a", "b", "c"], t0 + timedelta(seconds=45))
    assert isinstance(check, CheckNodes)
    assert check.last_seen == {"a": t0 + timedelta(seconds=20), "b": t0, "c": t0 + timedelta(seconds=40)}
    # the cluster decides on it: b is lost, a is not
    cluster = CLUSTER.decide(None, command(_register("a"), CLUSTER_ID))
    state = None
    for version, payload in enumerate([*cluster, *CLUSTER.decide(None, command(_register("b"), CLUSTER_ID))], 1):
        state = CLUSTER.evolve(
            state, envelope_for(payload, aggregate_id=CLUSTER_ID, actor=SYSTEM_ACTOR, aggregate_version=version)
        )
    lost = CLUSTER.decide(state, command(check, CLUSTER_ID))
    assert [getattr(e, "node_id", None) for e in lost] == ["b"]
    liveness.ownership(False, t0 + timedelta(seconds=50))
    assert liveness.check(["a", "b"], t0 + timedelta(hours=1)) is None
    assert 0 <= cluster_partition(COMMANDS.partitions) < COMMANDS.partitions


def _register(node_id: str) -> Payload:
    return RegisterNode(node_id=node_id, devices=(DeviceInfo(index=0, gpu_type=DeployGpu.H100_80GB, memory_mb=1),))
