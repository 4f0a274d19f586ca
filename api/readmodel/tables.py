"""Read-model tables (SQLAlchemy Core). SQLite by default, PostgreSQL by URL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, DateTime, Dialect, Integer, MetaData, String, Table, Text
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores datetimes without their zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

# The tables' shape, recorded with them: a read model made by another shape is dropped and rebuilt from the log
# (api.readmodel.database.create_schema), as it is disposable.
schema_fingerprints = Table(
    "schema_fingerprints",
    metadata,
    Column("fingerprint", String(64), primary_key=True),
)

# The next offset to apply per partition, written in the same transaction as the rows it changed.
projection_offsets = Table(
    "projection_offsets",
    metadata,
    Column("topic", String(255), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", Integer, nullable=False),
)

workspaces = Table(
    "workspaces",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("description", Text),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("creator_type", String(16), nullable=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("name", String(255), nullable=False),
    Column("role", String(16), nullable=False),
    Column("team", String(255), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)

# The team that owns each aggregate, folded by the rule the agents use (streams.ownership): what api.teams checks.
owners = Table(
    "owners",
    metadata,
    Column("aggregate_type", String(64), primary_key=True),
    Column("aggregate_id", String(600), primary_key=True),
    Column("team", String(255), nullable=False, index=True),
    # A shared deployment: every team may call it and serve its adapters on it (streams.deployments.CreateDeployment)
    Column("shared", Boolean, nullable=False, default=False),
)

# What became of each command: the answer to `?wait=` and to GET /v2/commands/{id}.
command_outcomes = Table(
    "command_outcomes",
    metadata,
    Column("command_id", String(64), primary_key=True),
    Column("team", String(255), nullable=False),  # of the actor that sent it: only that team may ask
    Column("status", String(16), nullable=False),  # succeeded | rejected
    Column("event_type", String(128), nullable=False),
    Column("aggregate_type", String(64), nullable=False),
    Column("aggregate_id", String(512), nullable=False),
    Column("code", String(32)),
    Column("reason", Text),
    Column("field", String(128)),
    Column("occurred_at", UTCDateTime(), nullable=False),
)

# --- the adapter registry ---------------------------------------------------------------------
# JSON columns hold the event's own value objects (streams.artifacts), dumped as JSON.

adapters = Table(
    "adapters",
    metadata,
    Column("workspace", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("latest_version", Integer, nullable=False),
    Column("api", String(16), nullable=False),
    Column("description", Text),
    Column("enabled", Boolean, nullable=False),
    Column("lora_config", JSON),
    Column("version", Integer, nullable=False),  # the aggregate's version: every event moves it
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("creator_type", String(16), nullable=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)

# The adapter's aggregate id (streams.adapters.adapter_id) as an SQL expression, to match it with `owners`.
ADAPTER_ID = adapters.c.workspace + "/" + adapters.c.name

adapter_versions = Table(
    "adapter_versions",
    metadata,
    Column("workspace", String(255), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("rejected_part", String(16)),  # streams.adapters.RejectedPart
    Column("spec", JSON, nullable=False),  # streams.adapters.AdapterSpec; an HF token only sealed
    Column("artifact", JSON),
    Column("analysis", JSON),
    Column("provenance", JSON),
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("bytes_total", BigInteger),
    Column("correlation_id", String(64), nullable=False, index=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("creator_type", String(16), nullable=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)

# Seed 004's files, by partial path; `status` validating | stored | rejected. A rejected row stays
# (so an uploader can read why) until the freed name is handed out again.
lora_files = Table(
    "lora_files",
    metadata,
    Column("partial_path", String(600), primary_key=True),
    Column("entity_type", String(32), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("original_filename", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("file_size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", String(1024)),
    Column("analysis", JSON),
    Column("correlation_id", String(64), nullable=False, index=True),
    Column("uploaded_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("uploader_id", String(255), nullable=False),
    Column("uploader_name", String(255), nullable=False),
    Column("team", String(255), nullable=False, index=True),  # the uploader's
)

lora_bin = Table(
    "lora_bin",
    metadata,
    Column("bin_path", String(600), primary_key=True),  # {entity_type}/{file}, unique in the bin
    Column("partial_path", String(600), nullable=False, index=True),
    Column("entity_type", String(32), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("file_size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", String(1024)),
    Column("analysis", JSON),
    Column("uploaded_at", UTCDateTime(), nullable=False),
    Column("binned_at", UTCDateTime(), nullable=False),
    Column("correlation_id", String(64), nullable=False, index=True),  # of the delete that binned it
    Column("team", String(255), nullable=False),  # the uploader's
)

fileset_files = Table(
    "fileset_files",
    metadata,
    Column("workspace", String(255), primary_key=True),
    Column("fileset", String(255), primary_key=True),
    Column("path", String(255), primary_key=True),
    Column("status", String(16), nullable=False),  # staged | stored
    Column("file_size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("blob_key", String(1024)),
    Column("correlation_id", String(64), nullable=False, index=True),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# --- deployments (seed 003) and the cluster they are placed on -----------------------------------------------------

deployments = Table(
    "deployments",
    metadata,
    Column("deploy_id", String(255), primary_key=True),
    Column("model_name", String(255), nullable=False),
    Column("spec", JSON, nullable=False),  # streams.deployments.DeploymentSpec; an HF token only sealed
    Column("min_instances", Integer, nullable=False),
    Column("max_instances", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("version", Integer, nullable=False),
    Column("correlation_id", String(64), nullable=False, index=True),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("creator_type", String(16), nullable=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)

# The adapters a deployment serves (deployment.adapter_attached), and what each instance holds, as its node reported.
deployment_adapters = Table(
    "deployment_adapters",
    metadata,
    Column("deploy_id", String(255), primary_key=True),
    Column("name", String(512), primary_key=True),
    Column("adapter_id", String(600), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("on_demand", Boolean, nullable=False, default=False),
    Column("attached_at", UTCDateTime(), nullable=False),
)

# Pre-flight verdicts (deployment.adapter_checked), by the command that asked.
adapter_checks = Table(
    "adapter_checks",
    metadata,
    Column("command_id", String(64), primary_key=True),
    Column("deploy_id", String(255), nullable=False),
    Column("name", String(512), nullable=False),
    Column("version", Integer, nullable=False),
    Column("compatible", Boolean, nullable=False),
    Column("reasons", JSON, nullable=False),
    Column("checked_at", UTCDateTime(), nullable=False),
)

instance_adapters = Table(
    "instance_adapters",
    metadata,
    Column("instance_id", String(600), primary_key=True),
    Column("name", String(512), primary_key=True),
    Column("deploy_id", String(255), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # loaded | failed
    Column("sha256", String(64)),
    Column("reason", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# One row per instance the cluster placed or queued; removed when released. Only the cluster's events write it.
deployment_instances = Table(
    "deployment_instances",
    metadata,
    Column("instance_id", String(600), primary_key=True),
    Column("deploy_id", String(255), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # pending | placed
    Column("reason", Text),  # why it is pending
    Column("node_id", String(255)),
    Column("device_indexes", JSON),
    Column("requested_seq", Integer, nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# The newest report of a node agent on an instance it runs, per node: only the deployment's events write it. The
# cluster's events sit on another partition than the deployment's, so a replay may project a report before the
# placement it follows; two tables, joined when read (deployment_queries), make the outcome independent of that order.
instance_reports = Table(
    "instance_reports",
    metadata,
    Column("instance_id", String(600), primary_key=True),
    Column("node_id", String(255), primary_key=True),
    Column("deploy_id", String(255), nullable=False, index=True),
    Column("state", String(16), nullable=False),  # starting | running | failed
    Column("reason", Text),  # why it failed
    Column("endpoint", Text),
    Column("updated_at", UTCDateTime(), nullable=False),
)

cluster_nodes = Table(
    "cluster_nodes",
    metadata,
    Column("node_id", String(255), primary_key=True),
    Column("devices", JSON, nullable=False),  # streams.cluster.DeviceInfo, as registered
    Column("lost", Boolean, nullable=False, default=False),
    Column("lost_reason", Text),
    Column("registered_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
)

# --- usage of the inference gateway -------------------------------------------------------------------------------

# One row per row of a `usage.recorded` event: tokens of one API key, one model, one UTC minute, from one batch.
usage_rows = Table(
    "usage_rows",
    metadata,
    Column("event_id", String(64), primary_key=True),
    Column("row", Integer, primary_key=True),
    Column("minute", UTCDateTime(), nullable=False, index=True),
    Column("api_key_id", String(64), nullable=False, index=True),
    Column("team", String(255), nullable=False, index=True),  # the key's team (the actor's on the event)
    Column("model", String(512), nullable=False),
    Column("base_model", String(255)),
    Column("requests", Integer, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("gateway_id", String(255), nullable=False),
)

# Evaluations (streams.evaluations): one row per run, its figures once completed.
evaluations = Table(
    "evaluations",
    metadata,
    Column("evaluation_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),  # running | completed | failed | cancelled
    Column("spec", JSON, nullable=False),  # streams.evaluations.EvaluationSpec, inline items included
    Column("items_done", Integer, nullable=False, default=0),
    Column("items_total", Integer, nullable=False),
    Column("results", JSON),  # streams.evaluations.MetricResult, one per metric
    Column("results_key", Text),
    Column("reason", Text),
    Column("version", Integer, nullable=False),
    Column("correlation_id", String(64), nullable=False, index=True),
    Column("created_at", UTCDateTime(), nullable=False, index=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("creator_id", String(255), nullable=False),
    Column("creator_name", String(255), nullable=False),
)
