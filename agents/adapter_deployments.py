"""The process manager that serves a newly stored Empower LoRA on the deployments of its base model (seed 000's
`active_deployment`): on `adapter.stored` it sends `deployment.attach_adapter` to every live deployment whose base
model is the adapter's and whose instances pass the pre-flight check. The processor runs it from the log
(agents.follow_ups), so a crash between the event and the command loses nothing; command ids derive from the
event, so running it twice attaches nothing twice.

Served this way, a LoRA is on demand (the gateway may evict it for another when slots run out): only an explicit
`POST /deploy/lora` pins one. A new version of a LoRA served pinned replaces it pinned. A deployment whose adapter
slots are all taken is passed over: attached there, the LoRA would wait for a slot nothing frees (the node never
evicts), while its first request through the gateway loads it on demand, evicting the least recently used.
"""

from __future__ import annotations

import logging

from agents.adapters import Adapter
from agents.deployments import Deployment, adapter_problems, adapter_slots
from agents.state import AgentState
from streams import deployments
from streams.adapters import AGGREGATE as ADAPTERS
from streams.adapters import AdapterApi, AdapterStored, public_name
from streams.deployments import AttachAdapter, DeployedAdapter, base_model_key
from streams.envelope import Envelope, derived_id
from streams.serialization import envelope_for

log = logging.getLogger(__name__)


def attachments(state: AgentState, event: Envelope) -> list[tuple[str, DeployedAdapter, bool]]:
    """(deploy_id, adapter, on demand) for each live deployment that should serve the Empower adapter `event`
    stored; on demand unless the deployment serves that name pinned already. Only the deployments of the adapter's
    own team, and shared ones: another team's deployment never serves it."""
    payload = event.payload
    if not isinstance(payload, AdapterStored):
        return []
    owned = state.get(ADAPTERS, event.aggregate_id)
    adapter, team = owned.value, owned.team
    if not isinstance(adapter, Adapter) or adapter.deleted:
        return []
    version = adapter.version(payload.version)
    if version is None or version.spec.api is not AdapterApi.EMPOWER:
        return []
    base = payload.analysis.base_model or version.spec.base_model
    if not base:
        return []
    served = DeployedAdapter(
        name=public_name(adapter.workspace, adapter.name),
        adapter_id=event.aggregate_id,
        version=payload.version,
        artifact=payload.artifact,
        analysis=payload.analysis,
    )
    out = []
    for (aggregate_type, deploy_id), entry in sorted(state.entries.items()):
        deployment = entry.value
        if aggregate_type != deployments.AGGREGATE or not isinstance(deployment, Deployment) or deployment.deleted:
            continue
        if base_model_key(deployment.spec.base_model_name) != base_model_key(base):
            continue
        if entry.team != team and not deployment.shared:
            continue
        if problems := adapter_problems(deployment, served):
            log.info("%s is not served on %s: %s", served.name, deploy_id, "; ".join(problems))
            continue
        if served.name not in deployment.adapters and len(deployment.adapters) >= adapter_slots(deployment):
            log.info(
                "%s is not served on %s now: its adapter slots are full (loaded on demand instead)",
                served.name,
                deploy_id,
            )
            continue
        pinned = served.name in deployment.adapters and served.name not in deployment.on_demand
        out.append((deploy_id, served, not pinned))
    return out


def follow_ups(state: AgentState, event: Envelope) -> list[Envelope]:
    """The `deployment.attach_adapter` commands `event` calls for (none unless it is an `adapter.stored`)."""
    return [
        envelope_for(
            AttachAdapter(adapter=adapter, on_demand=on_demand),
            aggregate_id=deploy_id,
            actor=event.actor,
            command_id=derived_id(event.id, f"attach:{deploy_id}"),
            correlation_id=event.correlation_id,
            causation_id=event.id,
            traceparent=event.traceparent,
        )
        for deploy_id, adapter, on_demand in attachments(state, event)
    ]
