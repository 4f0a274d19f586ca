"""The gateway's routing state and decisions, as pure functions over events (no broker, no engine)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

import streams.catalog  # noqa: F401 - registers every message type
from api.gateway.models import model_cards
from api.gateway.routing import (
    AdapterTarget,
    BaseTarget,
    Candidate,
    NotFound,
    Route,
    attached_to,
    on_demand_name,
    parse_model,
    pin,
    plan_loads,
    rank,
    resolve,
    routes_for,
)
from api.gateway.state import RoutingState
from streams import adapters as registry
from streams import cluster
from streams import deployments as dep
from streams.api_keys import ApiKeyCreated, ApiKeyRevoked, Role
from streams.artifacts import Analysis, Artifact, Provenance, StoredFile
from streams.envelope import SYSTEM_ACTOR, Actor, ActorType, Payload
from streams.outcomes import CommandRejected, RejectionCode
from streams.serialization import envelope_for

BASE = "org/base-model"
SHA = {n: f"{n:x}" * 64 for n in range(1, 10)}


def apply(state: RoutingState, aggregate_id: str, *payloads: Payload, command_id: str | None = None) -> None:
    for payload in payloads:
        version = state.applied + 1
        state.apply(
            envelope_for(
                payload,
                aggregate_id=aggregate_id,
                actor=SYSTEM_ACTOR,
                aggregate_version=version,
                command_id=command_id,
                aggregate_type=None if not isinstance(payload, CommandRejected) else "deployment",
            )
        )


def artifact(n: int) -> Artifact:
    sha = SHA[n]
    return Artifact(
        bucket="b",
        files=(StoredFile(path="adapter_model.safetensors", key=f"blobs/{sha}", sha256=sha, size=1),),
        sha256=sha,
        size=1,
        total_size=1,
    )


def analysis(base: str | None = BASE, fmt: str = "peft_llm") -> Analysis:
    return Analysis(container="safetensors", format=fmt, rank=8, target_modules=("q_proj",), base_model=base)


def store_adapter(
    state: RoutingState, name: str, n: int, *, version: int = 1, workspace: str = "default", fmt: str = "peft_llm"
) -> None:
    spec = registry.AdapterSpec(
        workspace=workspace,
        name=name,
        source=registry.HfSource(repo_id=f"org/{name}"),
        api=registry.AdapterApi.EMPOWER,
    )
    apply(
        state,
        registry.adapter_id(workspace, name),
        registry.AdapterRequested(version=version, spec=spec),
        registry.AdapterStored(
            version=version, artifact=artifact(n), analysis=analysis(fmt=fmt), provenance=Provenance()
        ),
    )


def deploy(state: RoutingState, deploy_id: str, model: str = "base", *, max_loras: int = 2, repo: str = BASE) -> None:
    spec = dep.DeploymentSpec(
        model_name=model,
        gpu=dep.DeployGpu.CPU,
        weights=dep.Weights(repo=repo),
        lora=dep.LoraSettings(max_loras=max_loras, max_lora_rank=8),
    )
    apply(state, deploy_id, dep.DeploymentCreated(spec=spec))


def run_instance(state: RoutingState, deploy_id: str, instance_id: str, node: str = "n1") -> None:
    spec = cluster.InstanceSpec(
        deploy_id=deploy_id, instance_id=instance_id, gpu_type=dep.DeployGpu.CPU, num_gpus=1, requested_seq=1
    )
    apply(state, cluster.CLUSTER_ID, cluster.InstancePlaced(instance=spec, node_id=node, device_indexes=(0,)))
    apply(
        state,
        deploy_id,
        dep.InstanceStarted(
            instance_id=instance_id, node_id=node, endpoint=f"http://{instance_id}", sealed_api_key="k"
        ),
    )


def attach(state: RoutingState, deploy_id: str, name: str, adapter: str, n: int, *, on_demand: bool = False) -> None:
    served = dep.DeployedAdapter(
        name=name, adapter_id=f"default/{adapter}", version=1, artifact=artifact(n), analysis=analysis()
    )
    apply(state, deploy_id, dep.AdapterAttached(adapter=served, on_demand=on_demand))


def loaded(state: RoutingState, deploy_id: str, instance_id: str, name: str, n: int, node: str = "n1") -> None:
    apply(state, deploy_id, dep.AdapterLoaded(instance_id=instance_id, node_id=node, name=name, sha256=SHA[n]))


@pytest.fixture()
def state() -> RoutingState:
    state = RoutingState()
    deploy(state, "d1")
    run_instance(state, "d1", "d1-1")
    run_instance(state, "d1", "d1-2")
    store_adapter(state, "lora-a", 1)
    store_adapter(state, "lora-b", 2)
    return state


def test_model_names_with_a_version() -> None:
    assert parse_model("org/lora@v3") == parse_model("org/lora@v3")
    assert parse_model("org/lora@v3").name == "org/lora" and parse_model("org/lora@v3").version == 3
    assert parse_model("lora@v0").version is None and parse_model("lora@v0").name == "lora@v0"
    assert parse_model("a@b@v12").name == "a@b" and parse_model("a@b@v12").version == 12


def test_resolve_finds_deployments_and_adapters_by_any_registry_name(state: RoutingState) -> None:
    assert resolve(state, "base") == BaseTarget("base", ("d1",))
    found = resolve(state, "lora-a")
    assert isinstance(found, AdapterTarget) and found.adapter.adapter_id == "default/lora-a" and found.version is None
    assert isinstance(resolve(state, "default/lora-a"), AdapterTarget)
    store_adapter(state, "tuned", 3, workspace="team-a")
    nemo = resolve(state, "team-a/tuned@v1")
    assert isinstance(nemo, AdapterTarget) and nemo.version == 1
    assert isinstance(resolve(state, "team-a/tuned@v2"), NotFound)
    assert isinstance(resolve(state, "nothing"), NotFound)
    apply(state, "default/lora-b", registry.AdapterDeleted(workspace="default", name="lora-b"))
    assert isinstance(resolve(state, "lora-b"), NotFound)


def test_routes_prefer_holders_then_the_fewest_in_flight(state: RoutingState) -> None:
    attach(state, "d1", "lora-a", "lora-a", 1)
    target = resolve(state, "lora-a")
    assert isinstance(target, AdapterTarget)
    assert routes_for(state, target, {}) == []  # attached, not loaded yet
    loaded(state, "d1", "d1-2", "lora-a", 1)
    [route] = routes_for(state, target, {})
    assert route == Route("d1-2", "d1", "http://d1-2", "lora-a", "k")
    base = resolve(state, "base")
    assert isinstance(base, BaseTarget)
    assert [r.instance_id for r in routes_for(state, base, {})] == ["d1-1", "d1-2"]
    assert [r.instance_id for r in routes_for(state, base, {"d1-1": 3, "d1-2": 1})] == ["d1-2", "d1-1"]


def test_the_lora_affinity_scorer_orders_holds_free_slot_full_then_in_flight() -> None:
    def candidate(iid: str, holds: bool, free: int, busy: int) -> Candidate:
        return Candidate(Route(iid, "d", "e", "m", None), holds, free, busy)

    ranked = rank(
        [
            candidate("full", False, 0, 0),
            candidate("free-busy", False, 1, 5),
            candidate("holds-busy", True, 0, 9),
            candidate("free-idle", False, 2, 0),
            candidate("holds-idle", True, 0, 1),
        ]
    )
    assert [c.route.instance_id for c in ranked] == ["holds-idle", "holds-busy", "free-idle", "free-busy", "full"]


def test_only_running_instances_of_their_placed_node_route(state: RoutingState) -> None:
    base = resolve(state, "base")
    assert isinstance(base, BaseTarget)
    apply(state, "d1", dep.InstanceFailed(instance_id="d1-1", node_id="n1", fail_reason="boom"))
    assert [r.instance_id for r in routes_for(state, base, {})] == ["d1-2"]
    # The node of d1-2 is dropped: until it is placed again and runs there, nothing routes to it.
    apply(state, cluster.CLUSTER_ID, cluster.NodeDropped(node_id="n1", reason="silent"))
    assert routes_for(state, base, {}) == []
    # A late report from the old node changes nothing; the new node's does.
    apply(state, "d1", dep.InstanceStarted(instance_id="d1-2", node_id="n1", endpoint="http://old"))
    assert routes_for(state, base, {}) == []
    run_instance(state, "d1", "d1-2", node="n2")
    assert [r.endpoint for r in routes_for(state, base, {})] == ["http://d1-2"]
    apply(state, cluster.CLUSTER_ID, cluster.InstanceReleased(deploy_id="d1", instance_id="d1-2", node_id="n2"))
    assert routes_for(state, base, {}) == []
    # Released is for good, whatever arrives later from the deployment's partition.
    apply(state, "d1", dep.InstanceStarted(instance_id="d1-2", node_id="n2", endpoint="http://late"))
    assert routes_for(state, base, {}) == []


def test_reports_folded_before_their_placement_count_once_it_arrives() -> None:
    """A replay may read a deployment's partition before the cluster's."""
    state = RoutingState()
    apply(state, "d1", dep.InstanceStarted(instance_id="d1-1", node_id="n1", endpoint="http://e"))
    deploy(state, "d1")
    base = resolve(state, "base")
    assert isinstance(base, BaseTarget) and routes_for(state, base, {}) == []
    spec = cluster.InstanceSpec(
        deploy_id="d1", instance_id="d1-1", gpu_type=dep.DeployGpu.CPU, num_gpus=1, requested_seq=1
    )
    apply(state, cluster.CLUSTER_ID, cluster.InstancePlaced(instance=spec, node_id="n1", device_indexes=(0,)))
    assert [r.endpoint for r in routes_for(state, base, {})] == ["http://e"]


def test_unversioned_names_route_to_the_newest_served_version(state: RoutingState) -> None:
    store_adapter(state, "lora-a", 3, version=2)
    attach(state, "d1", "lora-a", "lora-a", 1)  # version 1, pinned
    loaded(state, "d1", "d1-1", "lora-a", 1)
    v2 = dep.DeployedAdapter(
        name="lora-a@v2", adapter_id="default/lora-a", version=2, artifact=artifact(3), analysis=analysis()
    )
    apply(state, "d1", dep.AdapterAttached(adapter=v2, on_demand=True))
    loaded(state, "d1", "d1-2", "lora-a@v2", 3)
    any_version = resolve(state, "lora-a")
    assert isinstance(any_version, AdapterTarget)
    assert [r.served_name for r in routes_for(state, any_version, {})] == ["lora-a@v2"]
    first = resolve(state, "lora-a@v1")
    assert isinstance(first, AdapterTarget)
    assert [r.served_name for r in routes_for(state, first, {})] == ["lora-a"]


def test_load_plans_free_slot_first_then_evict_the_least_recently_used_on_demand(state: RoutingState) -> None:
    deploy(state, "d2")
    run_instance(state, "d2", "d2-1")
    attach(state, "d1", "pinned", "p", 4)
    attach(state, "d1", "old@v1", "old", 5, on_demand=True)
    attach(state, "d1", "new@v1", "new", 6, on_demand=True)
    attach(state, "d1", "busy@v1", "busy", 7, on_demand=True)
    target = resolve(state, "lora-a")
    assert isinstance(target, AdapterTarget)
    version = target.wanted()
    assert version is not None
    used = {("d1", "old@v1"): 10.0, ("d1", "new@v1"): 20.0, ("d1", "busy@v1"): 1.0}
    choice = plan_loads(state, version, {}, {("d1", "busy@v1"): 1}, used, served_name="lora-a@v1")
    # d2 has a free slot; d1 (2 instances x 2 slots, 4 attached) must evict one: `old`, not the busier `busy`.
    assert [p.deploy_id for p in choice.plans] == ["d2", "d1"]
    assert choice.plans[0].evict == ()
    [eviction] = choice.plans[1].evict
    assert eviction.name == "old@v1" and "least recently used" in eviction.reason
    # With only pinned and busy adapters, a full deployment is passed over with the reason.
    apply(state, "d1", dep.AdapterDetached(name="old@v1"), dep.AdapterDetached(name="new@v1"))
    attach(state, "d1", "pinned2", "p2", 8)
    attach(state, "d1", "pinned3", "p3", 9)
    choice = plan_loads(state, version, {}, {("d1", "busy@v1"): 1}, used, served_name="lora-a@v1")
    assert [p.deploy_id for p in choice.plans] == ["d2"]
    assert choice.skipped == ("d1: all 4 adapter slots hold pinned adapters or adapters in use",)


def test_load_plans_skip_deployments_without_a_running_instance_or_slots() -> None:
    state = RoutingState()
    deploy(state, "idle")
    deploy(state, "no-slots", max_loras=0)
    run_instance(state, "no-slots", "ns-1")
    deploy(state, "other", model="other")
    store_adapter(state, "lora-a", 1)
    target = resolve(state, "lora-a")
    assert isinstance(target, AdapterTarget) and target.wanted() is not None
    choice = plan_loads(state, target.wanted(), {}, {}, {}, served_name="x")  # type: ignore[arg-type]
    assert choice.plans == () and choice.deployments_of_base == 3
    assert set(choice.skipped) == {
        "idle: no instance runs",
        "no-slots: started with 0 adapter slots",
        "other: no instance runs",
    }


def test_attached_to_finds_an_adapter_being_loaded(state: RoutingState) -> None:
    target = resolve(state, "lora-a")
    assert isinstance(target, AdapterTarget)
    assert attached_to(state, target) == []
    attach(state, "d1", on_demand_name(target.adapter, 1), "lora-a", 1, on_demand=True)
    assert attached_to(state, target) == [("d1", "lora-a@v1")]


def test_a_request_pinned_to_a_deployment_routes_and_loads_there_only(state: RoutingState) -> None:
    deploy(state, "d2")
    run_instance(state, "d2", "d2-1")
    # lora-a is served and loaded on d1: unpinned, d1 answers it and no load is needed.
    attach(state, "d1", "lora-a", "lora-a", 1)
    loaded(state, "d1", "d1-1", "lora-a", 1)
    target = resolve(state, "lora-a")
    assert isinstance(target, AdapterTarget)
    assert [r.deploy_id for r in routes_for(state, target, {})] == ["d1"]

    # Pinned to d2, it has no route until it is loaded there, and the load is planned on d2 alone.
    on_d2 = pin(state, target, "d2")
    assert isinstance(on_d2, AdapterTarget) and on_d2.deploy_id == "d2"
    assert routes_for(state, on_d2, {}) == [] and attached_to(state, on_d2) == []
    version = on_d2.wanted()
    assert version is not None
    choice = plan_loads(state, version, {"d2-1": 9}, {}, {}, served_name="lora-a@v1", only=on_d2.deploy_id)
    assert [p.deploy_id for p in choice.plans] == ["d2"]  # however busy d2 is, and d1 has free slots too
    attach(state, "d2", "lora-a@v1", "lora-a", 1, on_demand=True)
    assert attached_to(state, on_d2) == [("d2", "lora-a@v1")]
    loaded(state, "d2", "d2-1", "lora-a@v1", 1)
    assert [(r.deploy_id, r.served_name) for r in routes_for(state, on_d2, {})] == [("d2", "lora-a@v1")]
    pinned_d1 = pin(state, target, "d1")
    assert isinstance(pinned_d1, AdapterTarget)
    assert [(r.deploy_id, r.served_name) for r in routes_for(state, pinned_d1, {})] == [("d1", "lora-a")]

    # A base model pinned: only the named deployment of that model_name answers.
    base = resolve(state, "base")
    assert isinstance(base, BaseTarget) and set(base.deploy_ids) == {"d1", "d2"}
    assert pin(state, base, "d2") == BaseTarget("base", ("d2",))
    assert [r.instance_id for r in routes_for(state, BaseTarget("base", ("d2",)), {})] == ["d2-1"]


def test_a_pin_the_caller_cannot_use_is_not_found(state: RoutingState) -> None:
    deploy(state, "elsewhere", model="other", repo="org/another-model")
    deploy(state, "same-base", model="base-too")
    lora = resolve(state, "lora-a")
    base = resolve(state, "base")
    assert isinstance(lora, AdapterTarget) and isinstance(base, BaseTarget)

    refused = pin(state, lora, "nowhere")
    assert isinstance(refused, NotFound) and "does not exist" in refused.reason
    refused = pin(state, lora, "elsewhere")
    assert isinstance(refused, NotFound) and "org/another-model" in refused.reason and BASE in refused.reason
    # Another deployment of the same base model is not the model the request names.
    refused = pin(state, base, "same-base")
    assert isinstance(refused, NotFound) and "it serves 'base-too'" in refused.reason
    # ... but may load the adapter; a deployment that runs no instance yet is pinned (it answers 503, not 404).
    assert isinstance(pin(state, lora, "same-base"), AdapterTarget)
    apply(state, "d1", dep.DeploymentDeleted())
    assert isinstance(pin(state, lora, "d1"), NotFound)

    # Another team's deployment does not exist for a team; a shared one does.
    red = Actor(type=ActorType.API_KEY, id="key-red", name="red", team="red")
    spec = dep.DeploymentSpec(model_name="red-base", gpu=dep.DeployGpu.CPU, weights=dep.Weights(repo=BASE))
    state.apply(envelope_for(dep.DeploymentCreated(spec=spec), aggregate_id="d-red", actor=red, aggregate_version=99))
    as_blue = AdapterTarget("lora-a", lora.adapter, None, viewer="blue")
    assert isinstance(pin(state, as_blue, "d-red"), NotFound)
    assert isinstance(pin(state, AdapterTarget("lora-a", lora.adapter, None, viewer="red"), "d-red"), AdapterTarget)
    state.deployments["d-red"].shared = True
    assert isinstance(pin(state, as_blue, "d-red"), AdapterTarget)


def test_keys_and_watched_commands_are_folded() -> None:
    state = RoutingState()
    apply(state, "k1", ApiKeyCreated(key_id="k1", name="ci", role=Role.USER, key_hash="0" * 64, team="team-a"))
    assert state.keys["k1"].role is Role.USER and state.keys["k1"].team == "team-a" and not state.keys["k1"].revoked
    apply(state, "k1", ApiKeyRevoked(key_id="k1"))
    assert state.keys["k1"].revoked
    state.watch("c1")
    rejection = CommandRejected(command_type="deployment.attach_adapter", code=RejectionCode.INVALID, reason="no")
    apply(state, "d1", rejection, command_id="c1")
    apply(state, "d1", rejection, command_id="c2")
    assert state.watched == {"c1": [rejection]}


def test_models_list_deployments_and_the_adapters_they_can_serve(state: RoutingState) -> None:
    store_adapter(state, "image", 3, fmt="kohya_image")
    attach(state, "d1", "lora-a", "lora-a", 1)
    loaded(state, "d1", "d1-1", "lora-a", 1)
    cards = {c["id"]: c for c in model_cards(state)}
    assert set(cards) == {"base", "lora-a", "lora-b"}  # an image LoRA is not callable
    assert cards["base"]["parent"] is None and cards["base"]["loaded"] is True and cards["base"]["root"] == BASE
    assert cards["lora-a"]["parent"] == "base" and cards["lora-a"]["loaded"] is True
    assert cards["lora-b"]["loaded"] is False and cards["lora-b"]["version"] == 1
    assert all(c["object"] == "model" and c["owned_by"] == "loraplane" for c in cards.values())


def test_created_times_come_from_the_events() -> None:
    state = RoutingState()
    deploy(state, "d1")
    assert abs(state.deployments["d1"].created - datetime.now(UTC).timestamp()) < 60


def test_until_the_log_is_read_a_gateway_answers_503_not_401(tmp_path: Path) -> None:
    import asyncio

    from api.gateway.errors import Unavailable
    from api.gateway.service import Gateway
    from infra.settings import Settings

    gateway = Gateway(Settings(data_dir=tmp_path, kafka_bootstrap_servers="127.0.0.1:1"))
    with pytest.raises(Unavailable) as starting:
        asyncio.run(gateway.authenticate("Bearer lp_0000000000000000_x"))
    assert starting.value.code == "gateway_starting" and starting.value.retry_after_s


def test_a_team_calls_its_own_adapters_and_deployments_and_shared_ones_only() -> None:
    state = RoutingState()

    def as_team(team: str, aggregate_id: str, payload: Payload) -> None:
        actor = Actor(type=ActorType.API_KEY, id=f"key-{team}", name=team, team=team)
        state.apply(envelope_for(payload, aggregate_id=aggregate_id, actor=actor, aggregate_version=state.applied + 1))

    spec = dep.DeploymentSpec(model_name="red-base", gpu=dep.DeployGpu.CPU, weights=dep.Weights(repo=BASE))
    as_team("red", "d-red", dep.DeploymentCreated(spec=spec))
    as_team("red", "d-everyone", dep.DeploymentCreated(spec=spec.model_copy(update={"model_name": "all"}), shared=True))
    adapter_spec = registry.AdapterSpec(
        workspace="default", name="red-lora", source=registry.HfSource(repo_id="org/x"), api=registry.AdapterApi.EMPOWER
    )
    as_team("red", "default/red-lora", registry.AdapterRequested(version=1, spec=adapter_spec))
    apply(
        state,
        "default/red-lora",
        registry.AdapterStored(version=1, artifact=artifact(1), analysis=analysis(), provenance=Provenance()),
    )
    for model in ("red-base", "red-lora", "default/red-lora", "red-lora@v1"):
        assert isinstance(resolve(state, model, "blue"), NotFound), model
        assert not isinstance(resolve(state, model, "red"), NotFound), model
        assert not isinstance(resolve(state, model, None), NotFound), model  # an admin
    assert resolve(state, "all", "blue") == BaseTarget("all", ("d-everyone",), "blue")
    assert {c["id"] for c in model_cards(state, "blue")} == {"all"}
    assert {c["id"] for c in model_cards(state, "red")} == {"red-base", "all", "red-lora"}
    # red's LoRA served on the shared deployment stays red's: blue neither sees nor calls it there
    attach(state, "d-everyone", "red-lora", "red-lora", 1)
    assert {c["id"] for c in model_cards(state, "blue")} == {"all"}
    version = state.adapters["default/red-lora"].newest()
    assert version is not None
    blue_loads = plan_loads(state, version, {}, {}, {}, served_name="x", team="blue")
    assert blue_loads.deployments_of_base == 1  # the shared one only, never red's own
