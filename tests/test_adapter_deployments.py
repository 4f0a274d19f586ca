"""Which deployments serve a newly stored Empower LoRA at once (agents.adapter_deployments.attachments): those of its
base model with a free adapter slot, or serving that name already; a full one leaves it to the gateway, which loads
it on demand at its first request and evicts the least recently used to make room."""

from __future__ import annotations

import streams.catalog  # noqa: F401 - registers every message type
from agents.adapter_deployments import attachments
from agents.adapters import ADAPTERS
from agents.deployments import DEPLOYMENTS, Deployment, adapter_slots
from agents.state import AgentState
from streams.adapters import AdapterApi, AdapterRequested, AdapterSpec, AdapterStored, HfSource
from streams.artifacts import Provenance
from streams.deployments import AdapterAttached, DeploymentCreated, InstanceStarted, LoraSettings
from streams.envelope import SYSTEM_ACTOR, Envelope, Payload
from streams.registry import type_of
from streams.serialization import envelope_for
from tests.test_deployment_adapters_decisions import SPEC, adapter


def _fold(state: AgentState, payload: Payload, aggregate_id: str) -> None:
    current = state.get(type_of(payload).aggregate_type, aggregate_id)
    state.apply(
        envelope_for(payload, aggregate_id=aggregate_id, actor=SYSTEM_ACTOR, aggregate_version=current.version + 1)
    )


def _stored(state: AgentState, name: str, version: int = 1) -> Envelope:
    """`name` requested (at `version`) and stored; the `adapter.stored` event."""
    spec = AdapterSpec(workspace="default", name=name, api=AdapterApi.EMPOWER, source=HfSource(repo_id=f"org/{name}"))
    _fold(state, AdapterRequested(version=version, spec=spec), f"default/{name}")
    served = adapter(name)
    stored = AdapterStored(version=version, artifact=served.artifact, analysis=served.analysis, provenance=Provenance())
    _fold(state, stored, f"default/{name}")
    current = state.get(type_of(stored).aggregate_type, f"default/{name}")
    return envelope_for(stored, aggregate_id=f"default/{name}", actor=SYSTEM_ACTOR, aggregate_version=current.version)


def test_a_new_lora_goes_only_to_the_deployments_with_a_free_slot_or_serving_its_name() -> None:
    state = AgentState({a.name: a for a in (DEPLOYMENTS, ADAPTERS)})
    for deploy_id in ("full", "free", "serves-it"):
        _fold(state, DeploymentCreated(spec=SPEC), deploy_id)  # one adapter slot each
    _fold(state, AdapterAttached(adapter=adapter("other"), on_demand=True), "full")
    _fold(state, AdapterAttached(adapter=adapter("new")), "serves-it")  # its slot holds the name: a new version
    event = _stored(state, "new")
    assert sorted(deploy_id for deploy_id, _, _ in attachments(state, event)) == ["free", "serves-it"]


def test_a_deployment_has_max_loras_slots_on_each_live_instance() -> None:
    state = AgentState({a.name: a for a in (DEPLOYMENTS,)})
    spec = SPEC.model_copy(update={"lora": LoraSettings(max_loras=3, max_lora_rank=8)})
    _fold(state, DeploymentCreated(spec=spec), "d")
    deployment = state.get(DEPLOYMENTS.name, "d").value
    assert isinstance(deployment, Deployment) and adapter_slots(deployment) == 3  # before any instance
    for instance in ("d-0", "d-1"):
        _fold(state, InstanceStarted(instance_id=instance, node_id="n", endpoint="http://127.0.0.1:1"), "d")
    deployment = state.get(DEPLOYMENTS.name, "d").value
    assert isinstance(deployment, Deployment) and adapter_slots(deployment) == 6
