"""Which engine answers a request: pure functions over the routing state (api.gateway.state).

- `parse_model` reads `name` or `name@vN` from a request's `model`.
- `resolve` finds what it names: a deployment's `model_name`, or a stored adapter by any name the registry knows it
  by (Empower and DeepInfra names live in the default workspace; NeMo's are `workspace/name`).
- `routes_for` ranks the running instances that can answer it, after the LoRA-affinity scorer of the Gateway API
  Inference Extension: an instance that holds the adapter (1.0), then one with a free adapter slot (0.8), then a
  full one (0), ties broken by the fewest requests this gateway has in flight on it, then by instance id.
- `pin` narrows a target to the one deployment a request names (the `X-Loraplane-Deployment` header): it must be
  one the caller may call, serving the model (a base model under its `model_name`) or its adapter's base model.
- `plan_loads` chooses, for a stored adapter no running instance holds, the deployments to load it on, best first,
  and the on-demand adapters to evict on each when its slots are full (least recently used, none in flight; pinned
  adapters never).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from api.gateway.state import DeploymentView, RegisteredAdapter, RoutingState, StoredVersion, Viewer, sees
from streams.adapters import DEFAULT_WORKSPACE, adapter_id
from streams.deployments import Eviction, base_model_key

_VERSIONED = re.compile(r"^(?P<name>.+)@v(?P<version>[1-9][0-9]{0,8})$")

HOLDS, FREE_SLOT, FULL = 1.0, 0.8, 0.0


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None


def parse_model(model: str) -> ModelRef:
    """`name@vN` names one stored version; anything else names the model as it is."""
    match = _VERSIONED.match(model)
    if match is None:
        return ModelRef(model)
    return ModelRef(match["name"], int(match["version"]))


@dataclass(frozen=True)
class BaseTarget:
    """The base model a deployment serves under its `model_name`."""

    model: str
    deploy_ids: tuple[str, ...]
    viewer: Viewer = None  # whose request: it is served only on deployments this team may call


@dataclass(frozen=True)
class AdapterTarget:
    """A stored adapter; `version` None: whichever version is served (the newest), else the newest stored."""

    model: str
    adapter: RegisteredAdapter
    version: int | None
    viewer: Viewer = None  # whose request: it is served only on deployments this team may call
    deploy_id: str | None = None  # pinned (`pin`): served and loaded on this deployment only

    def wanted(self) -> StoredVersion | None:
        """The version to load when none is served."""
        if self.version is None:
            return self.adapter.newest()
        return self.adapter.stored.get(self.version)


@dataclass(frozen=True)
class NotFound:
    reason: str


Target = BaseTarget | AdapterTarget


def resolve(state: RoutingState, model: str, team: Viewer = None) -> Target | NotFound:
    """What `model` names for `team` (None: an admin, who may call anything): another team's adapter or unshared
    deployment does not exist for it."""
    ref = parse_model(model)
    if ref.version is None:
        deployments = tuple(d.deploy_id for d in state.live_deployments(team) if d.model_name == model)
        if deployments:
            return BaseTarget(model, deployments, team)
    candidates = [adapter_id(DEFAULT_WORKSPACE, ref.name)]
    if "/" in ref.name:
        workspace, _, name = ref.name.partition("/")
        candidates.append(adapter_id(workspace, name))
    for candidate in candidates:
        adapter = state.adapters.get(candidate)
        if adapter is None or adapter.deleted or not sees(team, adapter.team):
            continue
        if not adapter.enabled:
            return NotFound(f"the adapter {ref.name!r} is disabled")
        if ref.version is not None and ref.version not in adapter.stored:
            return NotFound(f"the adapter {ref.name!r} has no stored version {ref.version}")
        if not adapter.stored:
            return NotFound(f"the adapter {ref.name!r} has no stored version yet (it may still be fetching)")
        return AdapterTarget(ref.name, adapter, ref.version, team)
    return NotFound(f"the model {model!r} does not exist")


def pin(state: RoutingState, target: Target, deploy_id: str) -> Target | NotFound:
    """`target` answered by deployment `deploy_id` only. NotFound when the caller may not call that deployment (or it
    does not exist, or was deleted), when a base model's request names a deployment with another `model_name`, or
    when an adapter's request names a deployment of another base model (unless it serves the adapter already). A
    pinned deployment with no running instance is not refused here: it answers 503 as an unpinned one does."""
    deployment = state.deployments.get(deploy_id)
    if deployment is None or deployment.deleted or not sees(target.viewer, deployment.team, deployment.shared):
        return NotFound(f"the deployment {deploy_id!r} does not exist")
    if isinstance(target, BaseTarget):
        if deploy_id not in target.deploy_ids:
            return NotFound(
                f"the deployment {deploy_id!r} does not serve {target.model!r}: it serves {deployment.model_name!r}"
            )
        return replace(target, deploy_ids=(deploy_id,))
    pinned = replace(target, deploy_id=deploy_id)
    if _served(state, pinned):
        return pinned
    wanted = target.wanted()
    base = wanted.base_model if wanted is not None else None
    if base is None or base_model_key(base) != base_model_key(deployment.base_model):
        return NotFound(
            f"the deployment {deploy_id!r} serves {deployment.base_model}, not {target.model!r}'s base model {base}"
        )
    return pinned


@dataclass(frozen=True)
class Route:
    """Where to send a request: the instance, its endpoint and key, and the model name its engine knows."""

    instance_id: str
    deploy_id: str
    endpoint: str
    served_name: str
    sealed_api_key: str | None


@dataclass(frozen=True)
class Candidate:
    route: Route
    holds: bool
    free_slots: int
    in_flight: int

    @property
    def affinity(self) -> float:
        return HOLDS if self.holds else FREE_SLOT if self.free_slots > 0 else FULL


def rank(candidates: list[Candidate]) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.affinity, c.in_flight, c.route.instance_id))


def routes_for(state: RoutingState, target: Target, in_flight: Mapping[str, int]) -> list[Route]:
    """The instances that can answer `target` now, best first; empty when none can (yet)."""
    candidates: list[Candidate] = []
    if isinstance(target, BaseTarget):
        for deploy_id in target.deploy_ids:
            deployment = state.deployments[deploy_id]
            for instance in state.running_instances(deployment):
                assert instance.endpoint is not None
                route = Route(instance.instance_id, deploy_id, instance.endpoint, target.model, instance.sealed_api_key)
                candidates.append(
                    Candidate(route, True, _free_slots(deployment, instance.loaded), _n(in_flight, route))
                )
        return [c.route for c in rank(candidates)]
    served = _served(state, target)
    if not served:
        return []
    newest = max(version for _, _, version in served)
    for deployment, name, version in served:
        if target.version is None and version != newest:
            continue
        sha256 = deployment.adapters[name].sha256
        for instance in state.running_instances(deployment):
            if instance.loaded.get(name) != sha256:
                continue
            assert instance.endpoint is not None
            route = Route(instance.instance_id, deployment.deploy_id, instance.endpoint, name, instance.sealed_api_key)
            candidates.append(Candidate(route, True, _free_slots(deployment, instance.loaded), _n(in_flight, route)))
    return [c.route for c in rank(candidates)]


def _served(state: RoutingState, target: AdapterTarget) -> list[tuple[DeploymentView, str, int]]:
    """(deployment, served name, version) wherever a live deployment serves the target's adapter."""
    out = []
    for deployment in state.live_deployments(target.viewer):
        if target.deploy_id is not None and deployment.deploy_id != target.deploy_id:
            continue
        for served in deployment.adapters.values():
            if served.adapter_id != target.adapter.adapter_id:
                continue
            if target.version is not None and served.version != target.version:
                continue
            out.append((deployment, served.name, served.version))
    return out


def attached_to(state: RoutingState, target: AdapterTarget) -> list[tuple[str, str]]:
    """(deploy id, served name) of live deployments that serve the version `target` wants, loaded or not yet."""
    wanted = target.wanted()
    if wanted is None:
        return []
    return [(d.deploy_id, name) for d, name, version in _served(state, target) if version == wanted.version]


def _n(in_flight: Mapping[str, int], route: Route) -> int:
    return in_flight.get(route.instance_id, 0)


def _free_slots(deployment: DeploymentView, loaded: Mapping[str, str]) -> int:
    return max(0, deployment.max_loras - len(loaded))


# --- loading on demand -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    deploy_id: str
    evict: tuple[Eviction, ...] = ()


@dataclass(frozen=True)
class LoadChoice:
    plans: tuple[LoadPlan, ...]  # best first; empty when no deployment can take the adapter now
    skipped: tuple[str, ...]  # why a deployment of the base model was passed over
    deployments_of_base: int  # live deployments of the adapter's base model, running or not


def on_demand_name(adapter: RegisteredAdapter, version: int) -> str:
    """The name an adapter loaded on demand is served under: unique per version, never a pinned adapter's."""
    return f"{adapter.public_name}@v{version}"


def plan_loads(
    state: RoutingState,
    version: StoredVersion,
    in_flight: Mapping[str, int],
    adapter_in_flight: Mapping[tuple[str, str], int],
    last_used: Mapping[tuple[str, str], float],
    served_name: str,
    team: Viewer = None,
    only: str | None = None,
) -> LoadChoice:
    """Where to load `version` of an adapter, best first: live deployments of its base model with a running instance
    and adapter slots; one with a free slot before a full one, then the fewest requests in flight. A full one evicts
    its least recently used on-demand adapters with nothing in flight (`adapter_in_flight` and `last_used` are keyed
    by (deploy id, served name)); one whose slots hold only pinned or busy adapters is skipped, with the reason.
    `only`: the one deployment a request is pinned to (`pin`)."""
    assert version.base_model is not None
    base = base_model_key(version.base_model)
    of_base = [
        d
        for d in state.live_deployments(team)
        if base_model_key(d.base_model) == base and (only is None or d.deploy_id == only)
    ]
    scored: list[tuple[tuple[float, int, str], LoadPlan]] = []
    skipped: list[str] = []
    for deployment in of_base:
        running = state.running_instances(deployment)
        if not running:
            skipped.append(f"{deployment.deploy_id}: no instance runs")
            continue
        if deployment.max_loras <= 0:
            skipped.append(f"{deployment.deploy_id}: started with 0 adapter slots")
            continue
        slots = deployment.max_loras * len(running)
        need = len(deployment.adapters) - slots + 1
        evict: tuple[Eviction, ...] = ()
        if need > 0:
            evictable = sorted(
                (
                    (last_used.get((deployment.deploy_id, s.name), 0.0), s.name)
                    for s in deployment.adapters.values()
                    if s.on_demand and adapter_in_flight.get((deployment.deploy_id, s.name), 0) == 0
                ),
            )
            if len(evictable) < need:
                skipped.append(
                    f"{deployment.deploy_id}: all {slots} adapter slots hold pinned adapters or adapters in use"
                )
                continue
            reason = (
                f"evicted to free a slot for {served_name}: the least recently used on-demand adapter "
                "with no request in flight"
            )
            evict = tuple(Eviction(name=name, reason=reason) for _, name in evictable[:need])
        busy = sum(in_flight.get(i.instance_id, 0) for i in running)
        affinity = FULL if evict else FREE_SLOT
        scored.append(((-affinity, busy, deployment.deploy_id), LoadPlan(deployment.deploy_id, evict)))
    plans = tuple(plan for _, plan in sorted(scored, key=lambda item: item[0]))
    return LoadChoice(plans, tuple(skipped), len(of_base))
