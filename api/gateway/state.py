"""What the inference gateway knows, folded from `loraplane.events`: keys, stored adapters, deployments, instances.

Pure: `RoutingState.apply(event)` changes the state and nothing else; the follower (api.gateway.follower) feeds it.
The gateway keeps this in memory rather than reading the read model, so a gateway process runs on its own beside
the broker. Events arrive from several partitions in no order between them (a deployment's reports and the cluster's
placements), so what one partition says never undoes what another said later: a released instance stays released.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams import adapters as registry
from streams import cluster
from streams import deployments as dep
from streams.api_keys import ApiKeyCreated, ApiKeyRevoked, Role
from streams.artifacts import Analysis, Artifact
from streams.envelope import DEFAULT_TEAM, Envelope, Payload

RUNNING = "running"
STARTING = "starting"
FAILED = "failed"


# Whose view of the state a request has: a team's (a user key's), or None for an admin key's, which sees everything.
Viewer = str | None


def sees(team: Viewer, owner: str, shared: bool = False) -> bool:
    """Whether `team` may call something `owner` owns: its own, a shared deployment, or anything for an admin."""
    return team is None or owner == team or shared


@dataclass
class KeyRecord:
    key_id: str
    name: str
    role: Role
    key_hash: str
    revoked: bool = False
    team: str = DEFAULT_TEAM


@dataclass(frozen=True)
class StoredVersion:
    version: int
    artifact: Artifact
    analysis: Analysis
    base_model: str | None  # what its config or its registration named


@dataclass
class RegisteredAdapter:
    """One adapter aggregate (`workspace/name`) of the registry, with its stored versions."""

    workspace: str
    name: str
    created: int = 0  # Unix seconds of its first request
    team: str = DEFAULT_TEAM  # the team that owns it (streams.ownership): only that team (and admins) may call it
    api: registry.AdapterApi | None = None
    enabled: bool = True
    deleted: bool = False
    requested: dict[int, registry.AdapterSpec] = field(default_factory=dict)
    stored: dict[int, StoredVersion] = field(default_factory=dict)

    @property
    def adapter_id(self) -> str:
        return registry.adapter_id(self.workspace, self.name)

    @property
    def public_name(self) -> str:
        return registry.public_name(self.workspace, self.name)

    def newest(self) -> StoredVersion | None:
        return self.stored[max(self.stored)] if self.stored else None


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter a deployment serves, under `name` (the model id its engines know it by)."""

    name: str
    adapter_id: str
    version: int
    sha256: str
    on_demand: bool


@dataclass
class NodeReport:
    """What one node said of an instance, latest first: reports of each node arrive in order."""

    status: str = STARTING
    endpoint: str | None = None
    sealed_api_key: str | None = None
    loaded: dict[str, str] = field(default_factory=dict)  # served name -> sha256
    load_failures: dict[str, str] = field(default_factory=dict)  # served name -> the node's reason


@dataclass
class EngineInstance:
    """One instance: where the cluster placed it (its partition) and what each node reported (the deployment's).

    The two streams are read in no order between them, so each is kept as its own latest word and combined on read:
    the instance serves when the node it is placed on now says it runs."""

    instance_id: str
    deploy_id: str
    node_id: str | None = None  # None: not placed (pending, or its node was dropped)
    reports: dict[str, NodeReport] = field(default_factory=dict)

    @property
    def report(self) -> NodeReport | None:
        return self.reports.get(self.node_id) if self.node_id is not None else None

    @property
    def running(self) -> bool:
        report = self.report
        return report is not None and report.status == RUNNING and report.endpoint is not None

    @property
    def endpoint(self) -> str | None:
        return self.report.endpoint if self.running and self.report else None

    @property
    def sealed_api_key(self) -> str | None:
        return self.report.sealed_api_key if self.report else None

    @property
    def loaded(self) -> dict[str, str]:
        return self.report.loaded if self.running and self.report else {}

    @property
    def load_failures(self) -> dict[str, str]:
        return self.report.load_failures if self.report else {}


@dataclass
class DeploymentView:
    deploy_id: str
    spec: dep.DeploymentSpec
    created: int = 0  # Unix seconds
    deleted: bool = False
    team: str = DEFAULT_TEAM  # the team that owns it; only that team (and admins) may call it, unless shared
    shared: bool = False
    adapters: dict[str, ServedAdapter] = field(default_factory=dict)  # by served name
    instance_ids: set[str] = field(default_factory=set)

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    @property
    def base_model(self) -> str:
        return self.spec.base_model_name

    @property
    def max_loras(self) -> int:
        return self.spec.lora.max_loras


@dataclass
class RoutingState:
    keys: dict[str, KeyRecord] = field(default_factory=dict)
    adapters: dict[str, RegisteredAdapter] = field(default_factory=dict)  # by adapter id
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    instances: dict[str, EngineInstance] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    # The commands this gateway waits on: command id -> the events it caused so far (a rejection, or its decision).
    watched: dict[str, list[Payload]] = field(default_factory=dict)
    applied: int = 0

    # --- reads ----------------------------------------------------------------------------------------------------

    def live_deployments(self, team: Viewer = None) -> list[DeploymentView]:
        """The deployments not deleted that `team` may call (None: every one, for an admin)."""
        return [d for d in self.deployments.values() if not d.deleted and sees(team, d.team, d.shared)]

    def instances_of(self, deployment: DeploymentView) -> list[EngineInstance]:
        return [self.instances[i] for i in sorted(deployment.instance_ids) if i in self.instances]

    def running_instances(self, deployment: DeploymentView) -> list[EngineInstance]:
        return [i for i in self.instances_of(deployment) if i.running]

    def watch(self, command_id: str) -> None:
        self.watched.setdefault(command_id, [])

    # --- the fold -------------------------------------------------------------------------------------------------

    def apply(self, event: Envelope) -> None:
        self.applied += 1
        payload = event.payload
        if (caused := self.watched.get(event.command_id)) is not None:
            caused.append(payload)
        handler = _HANDLERS.get(type(payload))
        if handler is not None:
            handler(self, event)

    def _key_created(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, ApiKeyCreated)
        self.keys[p.key_id] = KeyRecord(p.key_id, p.name, p.role, p.key_hash, team=p.team)

    def _key_revoked(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, ApiKeyRevoked)
        if (key := self.keys.get(p.key_id)) is not None:
            key.revoked = True

    def _adapter(self, event: Envelope) -> RegisteredAdapter | None:
        return self.adapters.get(event.aggregate_id)

    def _adapter_requested(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, registry.AdapterRequested)
        adapter = self._adapter(event)
        if adapter is None or adapter.deleted:
            created = int(event.occurred_at.timestamp())
            adapter = self.adapters[event.aggregate_id] = RegisteredAdapter(
                p.spec.workspace, p.spec.name, created, team=event.actor.team
            )
        adapter.api = p.spec.api
        adapter.enabled = p.spec.enabled
        adapter.requested[p.version] = p.spec

    def _adapter_stored(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, registry.AdapterStored)
        adapter = self._adapter(event)
        if adapter is None or adapter.deleted:
            return
        spec = adapter.requested.get(p.version)
        base = p.analysis.base_model or (spec.base_model if spec else None)
        adapter.stored[p.version] = StoredVersion(p.version, p.artifact, p.analysis, base)

    def _adapter_updated(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, registry.AdapterUpdated)
        adapter = self._adapter(event)
        if adapter is not None and p.changes.enabled is not None:
            adapter.enabled = p.changes.enabled

    def _adapter_deleted(self, event: Envelope) -> None:
        if (adapter := self._adapter(event)) is not None:
            adapter.deleted = True

    def _deployment(self, event: Envelope) -> DeploymentView | None:
        return self.deployments.get(event.aggregate_id)

    def _deployment_created(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, dep.DeploymentCreated)
        mine = {i.instance_id for i in self.instances.values() if i.deploy_id == event.aggregate_id}
        created = int(event.occurred_at.timestamp())
        self.deployments[event.aggregate_id] = DeploymentView(
            event.aggregate_id, p.spec, created, team=event.actor.team, shared=p.shared, instance_ids=mine
        )

    def _deployment_deleted(self, event: Envelope) -> None:
        if (deployment := self._deployment(event)) is not None:
            deployment.deleted = True

    def _adapter_attached(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, dep.AdapterAttached)
        if (deployment := self._deployment(event)) is None:
            return
        a = p.adapter
        deployment.adapters[a.name] = ServedAdapter(a.name, a.adapter_id, a.version, a.artifact.sha256, p.on_demand)
        for instance in self.instances_of(deployment):
            for report in instance.reports.values():
                report.load_failures.pop(a.name, None)  # a new attach is a new try

    def _adapter_removed(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, dep.AdapterDetached | dep.AdapterEvicted)
        if (deployment := self._deployment(event)) is not None:
            deployment.adapters.pop(p.name, None)

    def _instance(self, instance_id: str, deploy_id: str) -> EngineInstance | None:
        """The instance an event is about (made on first sight); None once released, which is for good."""
        if instance_id in self.released:
            return None
        instance = self.instances.get(instance_id)
        if instance is None:
            instance = self.instances[instance_id] = EngineInstance(instance_id, deploy_id)
            if (deployment := self.deployments.get(deploy_id)) is not None:
                deployment.instance_ids.add(instance_id)
        return instance

    def _instance_placed(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, cluster.InstancePlaced)
        if (instance := self._instance(p.instance.instance_id, p.instance.deploy_id)) is not None:
            instance.node_id = p.node_id

    def _instance_queued(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, cluster.InstanceQueued)
        if (instance := self._instance(p.instance.instance_id, p.instance.deploy_id)) is not None:
            instance.node_id = None

    def _node_dropped(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, cluster.NodeDropped)
        for instance in self.instances.values():
            if instance.node_id == p.node_id:
                instance.node_id = None  # the events after it in the same decision place it again

    def _instance_released(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, cluster.InstanceReleased)
        self.released.add(p.instance_id)
        self.instances.pop(p.instance_id, None)
        if (deployment := self.deployments.get(p.deploy_id)) is not None:
            deployment.instance_ids.discard(p.instance_id)

    def _node_report(self, instance_id: str, deploy_id: str, node_id: str) -> NodeReport | None:
        instance = self._instance(instance_id, deploy_id)
        return None if instance is None else instance.reports.setdefault(node_id, NodeReport())

    def _instance_reported(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, dep.InstanceLaunched | dep.InstanceStarted | dep.InstanceFailed)
        if (report := self._node_report(p.instance_id, event.aggregate_id, p.node_id)) is None:
            return
        if isinstance(p, dep.InstanceStarted):
            report.status, report.endpoint, report.sealed_api_key = RUNNING, p.endpoint, p.sealed_api_key
            return
        report.status = STARTING if isinstance(p, dep.InstanceLaunched) else FAILED
        report.endpoint = None
        report.loaded.clear()  # a (re)starting or failed engine holds no runtime-loaded adapter

    def _adapter_reported(self, event: Envelope) -> None:
        p = event.payload
        assert isinstance(p, dep.AdapterLoaded | dep.AdapterUnloaded | dep.AdapterLoadFailed)
        if (report := self._node_report(p.instance_id, event.aggregate_id, p.node_id)) is None:
            return
        if isinstance(p, dep.AdapterLoaded):
            report.loaded[p.name] = p.sha256
            report.load_failures.pop(p.name, None)
            return
        report.loaded.pop(p.name, None)
        if isinstance(p, dep.AdapterLoadFailed):
            report.load_failures[p.name] = p.reason


_HANDLERS = {
    ApiKeyCreated: RoutingState._key_created,
    ApiKeyRevoked: RoutingState._key_revoked,
    registry.AdapterRequested: RoutingState._adapter_requested,
    registry.AdapterStored: RoutingState._adapter_stored,
    registry.AdapterUpdated: RoutingState._adapter_updated,
    registry.AdapterDeleted: RoutingState._adapter_deleted,
    dep.DeploymentCreated: RoutingState._deployment_created,
    dep.DeploymentDeleted: RoutingState._deployment_deleted,
    dep.AdapterAttached: RoutingState._adapter_attached,
    dep.AdapterDetached: RoutingState._adapter_removed,
    dep.AdapterEvicted: RoutingState._adapter_removed,
    dep.InstanceLaunched: RoutingState._instance_reported,
    dep.InstanceStarted: RoutingState._instance_reported,
    dep.InstanceFailed: RoutingState._instance_reported,
    dep.AdapterLoaded: RoutingState._adapter_reported,
    dep.AdapterUnloaded: RoutingState._adapter_reported,
    dep.AdapterLoadFailed: RoutingState._adapter_reported,
    cluster.InstancePlaced: RoutingState._instance_placed,
    cluster.InstanceQueued: RoutingState._instance_queued,
    cluster.NodeDropped: RoutingState._node_dropped,
    cluster.InstanceReleased: RoutingState._instance_released,
}
