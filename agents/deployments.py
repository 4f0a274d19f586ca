"""Deployment decisions (seed 003): the spec is checked (ranges, extra_args against vLLM's allowlist), settings
scale it, delete ends it, and node agents' reports on its instances are recorded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from agents.aggregate import Aggregate, Rejected
from agents.node.vllm_args import check_extra_args
from streams.deployments import (
    AGGREGATE,
    MAX_BATCH_SIZE,
    MAX_NUM_GPUS,
    CreateDeployment,
    DeleteDeployment,
    DeploymentCreated,
    DeploymentDeleted,
    DeploymentScaled,
    DeploymentSpec,
    InstanceFailed,
    InstanceLaunched,
    InstanceStarted,
    InstanceStatus,
    ReportInstance,
    ScaleDeployment,
    ScaleSettings,
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

    @property
    def desired_instances(self) -> int:
        return 0 if self.deleted else self.settings.min_instances


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
    return problems


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
        return [DeploymentCreated(spec=payload.spec)]
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
    raise Rejected(RejectionCode.INVALID, f"deployments do not handle {command.type}")


def _report(report: ReportInstance) -> Payload:
    if report.status is InstanceStatus.STARTING:
        return InstanceLaunched(instance_id=report.instance_id, node_id=report.node_id)
    if report.status is InstanceStatus.RUNNING:
        if not report.endpoint:
            raise Rejected(RejectionCode.INVALID, "a running instance reports its endpoint", field="endpoint")
        return InstanceStarted(instance_id=report.instance_id, node_id=report.node_id, endpoint=report.endpoint)
    reason = report.fail_reason or "the instance failed without a reason"
    return InstanceFailed(instance_id=report.instance_id, node_id=report.node_id, fail_reason=reason)


def evolve(current: Deployment | None, event: Envelope) -> Deployment | None:
    payload = event.payload
    if isinstance(payload, DeploymentCreated):
        return Deployment(event.aggregate_id, payload.spec, payload.spec.settings)
    if current is None:
        return None
    if isinstance(payload, DeploymentScaled):
        return replace(current, settings=payload.settings)
    if isinstance(payload, DeploymentDeleted):
        return replace(current, deleted=True)
    if isinstance(payload, InstanceLaunched | InstanceStarted | InstanceFailed):
        status = _STATUS_OF[type(payload)]
        return replace(current, instances={**current.instances, payload.instance_id: status})
    return current


_STATUS_OF: Mapping[type[Payload], InstanceStatus] = {
    InstanceLaunched: InstanceStatus.STARTING,
    InstanceStarted: InstanceStatus.RUNNING,
    InstanceFailed: InstanceStatus.FAILED,
}

DEPLOYMENTS = Aggregate(AGGREGATE, decide, evolve)
