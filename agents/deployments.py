"""Deployment decisions (seed 003): the spec is checked (ranges, extra_args against vLLM's allowlist), settings
scale it, delete ends it, and node agents' reports on its instances are recorded.

Adapters: attaching one says the deployment serves it (after the pre-flight check, refused with every reason);
which instance holds it is derived from this state by `agents.node.adapter_slots`, and node agents report what
each instance loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from agents.aggregate import Aggregate, Rejected
from agents.node.lora_preflight import deployment_facts, facts_of, preflight
from agents.node.vllm_args import check_extra_args
from streams.deployments import (
    AGGREGATE,
    MAX_BATCH_SIZE,
    MAX_NUM_GPUS,
    VLLM_LORA_RANKS,
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
    DeleteDeployment,
    DeployedAdapter,
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentSpec,
    DetachAdapter,
    InstanceFailed,
    InstanceLaunched,
    InstanceStarted,
    InstanceStatus,
    ReportAdapter,
    ReportInstance,
    ScaleDeployment,
    ScaleSettings,
)
from streams.deployments import (
    adapter_slots as lora_slots,
)
from streams.envelope import Envelope, Payload
from streams.outcomes import RejectionCode


@dataclass(frozen=True)
class Deployment:
    deploy_id: str
    spec: DeploymentSpec
    settings: ScaleSettings
    deleted: bool = False
    # As node agents reported them: instance_id -> status.
    instances: Mapping[str, InstanceStatus] = field(default_factory=dict)
    # The weights' architecture, as the first instance to read them reported it.
    architecture: str | None = None
    # The adapters it serves: name -> the stored version.
    adapters: Mapping[str, DeployedAdapter] = field(default_factory=dict)
    # As node agents reported them: instance_id -> {adapter name: sha256 loaded}.
    loaded: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # The adapters the inference gateway loaded for requests (evictable); the others are pinned.
    on_demand: frozenset[str] = frozenset()
    # Every team may call it and serve its own adapters on it (agents.ownership); only its owner changes it.
    shared: bool = False

    @property
    def desired_instances(self) -> int:
        return 0 if self.deleted else self.settings.min_instances


def adapter_slots(deployment: Deployment) -> int:
    """How many adapters the deployment holds at once: `max_loras` on each running or starting instance (on the one
    it will start, before any has)."""
    live = sum(1 for s in deployment.instances.values() if s in (InstanceStatus.RUNNING, InstanceStatus.STARTING))
    return lora_slots(deployment.spec.lora, live)


def spec_problems(spec: DeploymentSpec) -> list[tuple[str, str]]:
    """(field, problem) for every problem of a spec; empty when it may be deployed."""
    problems: list[tuple[str, str]] = []
    if not 1 <= spec.num_gpus <= MAX_NUM_GPUS:
        problems.append(("num_gpus", f"num_gpus {spec.num_gpus} must be 1 to {MAX_NUM_GPUS}"))
    if not 1 <= spec.max_batch_size <= MAX_BATCH_SIZE:
        problems.append(("max_batch_size", f"max_batch_size {spec.max_batch_size} must be 1 to {MAX_BATCH_SIZE}"))
    if problem := settings_problem(spec.settings):
        problems.append(("settings", problem))
    if extra := check_extra_args(spec.extra_args):
        problems.append(("extra_args", "; ".join(extra)))
    if spec.lora.max_lora_rank not in VLLM_LORA_RANKS:
        allowed = ", ".join(map(str, VLLM_LORA_RANKS))
        problems.append(("lora", f"max_lora_rank {spec.lora.max_lora_rank} is not one vLLM accepts ({allowed})"))
    return problems


def adapter_problems(deployment: Deployment, adapter: DeployedAdapter) -> tuple[str, ...]:
    """Why the deployment's instances cannot serve `adapter` (empty when they can): the pre-flight check."""
    return preflight(facts_of(adapter), deployment_facts(deployment.spec, deployment.architecture)).reasons


def settings_problem(settings: ScaleSettings) -> str | None:
    if settings.min_instances > settings.max_instances:
        return f"min_instances {settings.min_instances} is above max_instances {settings.max_instances}"
    return None


def decide(current: Deployment | None, command: Envelope) -> Sequence[Payload]:
    payload = command.payload
    if isinstance(payload, CreateDeployment):
        if current is not None:
            raise Rejected(RejectionCode.CONFLICT, f"deployment {command.aggregate_id!r} exists already")
        if problems := spec_problems(payload.spec):
            field_name, reason = problems[0]
            raise Rejected(RejectionCode.INVALID, reason, field=field_name)
        return [DeploymentCreated(spec=payload.spec, shared=payload.shared)]
    if current is None or current.deleted:
        raise Rejected(RejectionCode.NOT_FOUND, f"deployment {command.aggregate_id!r} does not exist")
    if isinstance(payload, ScaleDeployment):
        if problem := settings_problem(payload.settings):
            raise Rejected(RejectionCode.INVALID, problem, field="settings")
        return [DeploymentScaled(settings=payload.settings)]
    if isinstance(payload, DeleteDeployment):
        return [DeploymentDeleted()]
    if isinstance(payload, ReportInstance):
        return [_report(payload)]
    if isinstance(payload, AttachAdapter):
        return _attach(current, payload)
    if isinstance(payload, CheckAdapter):
        checked = payload.adapter
        reasons = adapter_problems(current, checked)
        return [
            AdapterChecked(
                name=checked.name,
                adapter_id=checked.adapter_id,
                version=checked.version,
                compatible=not reasons,
                reasons=reasons,
            )
        ]
    if isinstance(payload, DetachAdapter):
        if payload.name not in current.adapters:
            raise Rejected(RejectionCode.NOT_FOUND, f"{current.deploy_id} does not serve {payload.name!r}")
        return [AdapterDetached(name=payload.name)]
    if isinstance(payload, ReportAdapter):
        return [_adapter_report(payload)]
    raise Rejected(RejectionCode.INVALID, f"deployments do not handle {command.type}")


def _attach(current: Deployment, command: AttachAdapter) -> Sequence[Payload]:
    """Serve an adapter: refused with the pre-flight's reasons; an on-demand attach keeps a pinned adapter pinned and
    may evict on-demand adapters first (never a pinned one: then the whole command is refused)."""
    adapter = command.adapter
    if reasons := adapter_problems(current, adapter):
        raise Rejected(
            RejectionCode.INVALID,
            f"{adapter.name} cannot be served by {current.deploy_id}: " + "; ".join(reasons),
            field="lora_name",
        )
    pinned = [e.name for e in command.evict if e.name in current.adapters and e.name not in current.on_demand]
    if pinned:
        raise Rejected(
            RejectionCode.CONFLICT,
            f"{', '.join(sorted(pinned))} served explicitly on {current.deploy_id} (pinned): never evicted",
            field="evict",
        )
    held = current.adapters.get(adapter.name)
    if command.on_demand and held is not None:
        if held.artifact.sha256 != adapter.artifact.sha256 and adapter.name not in current.on_demand:
            raise Rejected(
                RejectionCode.CONFLICT,
                f"{current.deploy_id} serves other content (version {held.version}) as {adapter.name!r}, pinned",
                field="lora_name",
            )
        if held.artifact.sha256 == adapter.artifact.sha256:
            # Asked again (another gateway, a retry): it stays as it is, pinned or not, and nothing is evicted.
            return [AdapterAttached(adapter=held, on_demand=adapter.name in current.on_demand)]
    evicted = [
        AdapterEvicted(name=e.name, reason=e.reason)
        for e in command.evict
        if e.name in current.adapters and e.name != adapter.name
    ]
    # An on-demand adapter only takes a free slot: held beyond the slots it would wait for one nothing frees (the
    # node never evicts). Its sender (a gateway, a process manager) decided on an older state; it may ask again.
    held_after = len(current.adapters) - len(evicted) + (adapter.name not in current.adapters)
    if command.on_demand and held_after > (slots := adapter_slots(current)):
        raise Rejected(
            RejectionCode.CONFLICT,
            f"{current.deploy_id} has no free adapter slot for {adapter.name}: its {slots} are held",
            field="evict",
        )
    return [*evicted, AdapterAttached(adapter=adapter, on_demand=command.on_demand)]


def _report(report: ReportInstance) -> Payload:
    if report.status is InstanceStatus.STARTING:
        return InstanceLaunched(instance_id=report.instance_id, node_id=report.node_id)
    if report.status is InstanceStatus.RUNNING:
        if not report.endpoint:
            raise Rejected(RejectionCode.INVALID, "a running instance reports its endpoint", field="endpoint")
        return InstanceStarted(
            instance_id=report.instance_id,
            node_id=report.node_id,
            endpoint=report.endpoint,
            architecture=report.architecture,
            sealed_api_key=report.sealed_api_key,
        )
    reason = report.fail_reason or "the instance failed without a reason"
    return InstanceFailed(instance_id=report.instance_id, node_id=report.node_id, fail_reason=reason)


def _adapter_report(report: ReportAdapter) -> Payload:
    where = {"instance_id": report.instance_id, "node_id": report.node_id, "name": report.name}
    if report.status is AdapterLoadStatus.LOADED:
        if not report.sha256:
            raise Rejected(RejectionCode.INVALID, "a loaded adapter reports its sha256", field="sha256")
        return AdapterLoaded(**where, sha256=report.sha256)
    if report.status is AdapterLoadStatus.UNLOADED:
        return AdapterUnloaded(**where, reason=report.reason or "unloaded")
    return AdapterLoadFailed(**where, reason=report.reason or "the load failed without a reason")


def evolve(current: Deployment | None, event: Envelope) -> Deployment | None:
    payload = event.payload
    if isinstance(payload, DeploymentCreated):
        return Deployment(event.aggregate_id, payload.spec, payload.spec.settings, shared=payload.shared)
    if current is None:
        return None
    if isinstance(payload, DeploymentScaled):
        return replace(current, settings=payload.settings)
    if isinstance(payload, DeploymentDeleted):
        return replace(current, deleted=True)
    if isinstance(payload, InstanceLaunched | InstanceStarted | InstanceFailed):
        status = _STATUS_OF[type(payload)]
        current = replace(current, instances={**current.instances, payload.instance_id: status})
        if isinstance(payload, InstanceStarted) and payload.architecture:
            current = replace(current, architecture=payload.architecture)
        if not isinstance(payload, InstanceStarted):
            # A (re)starting or failed vLLM holds no runtime-loaded adapter.
            current = replace(current, loaded=_without(current.loaded, payload.instance_id))
        return current
    if isinstance(payload, AdapterAttached):
        name = payload.adapter.name
        on_demand = current.on_demand | {name} if payload.on_demand else current.on_demand - {name}
        return replace(current, adapters={**current.adapters, name: payload.adapter}, on_demand=on_demand)
    if isinstance(payload, AdapterDetached | AdapterEvicted):
        adapters = {k: v for k, v in current.adapters.items() if k != payload.name}
        return replace(current, adapters=adapters, on_demand=current.on_demand - {payload.name})
    if isinstance(payload, AdapterLoaded):
        held = {**current.loaded.get(payload.instance_id, {}), payload.name: payload.sha256}
        return replace(current, loaded={**current.loaded, payload.instance_id: held})
    if isinstance(payload, AdapterUnloaded | AdapterLoadFailed):
        held = {k: v for k, v in current.loaded.get(payload.instance_id, {}).items() if k != payload.name}
        return replace(current, loaded={**current.loaded, payload.instance_id: held})
    return current


def _without(loaded: Mapping[str, Mapping[str, str]], instance_id: str) -> Mapping[str, Mapping[str, str]]:
    return {k: v for k, v in loaded.items() if k != instance_id}


_STATUS_OF: Mapping[type[Payload], InstanceStatus] = {
    InstanceLaunched: InstanceStatus.STARTING,
    InstanceStarted: InstanceStatus.RUNNING,
    InstanceFailed: InstanceStatus.FAILED,
}

DEPLOYMENTS = Aggregate(AGGREGATE, decide, evolve, Deployment, state_version=2)  # 2: shared
