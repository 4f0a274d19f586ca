"""Reads of deployments, their instances and the cluster's nodes, against the read model only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.readmodel.queries import owned_by
from api.readmodel.tables import (
    adapter_checks,
    cluster_nodes,
    deployment_adapters,
    deployment_instances,
    deployments,
    instance_adapters,
    instance_reports,
)

Row = dict[str, Any]

# An instance as the API shows it: where the cluster placed it, and what the node agent it is placed on last reported,
# if it reported after that placement (the cluster may place an instance on a node again, which restarts it).
# Occurred-at times decide, not the order the two streams were projected in: a replay reads them side by side.
_REPORT_OF_PLACEMENT = and_(
    instance_reports.c.instance_id == deployment_instances.c.instance_id,
    instance_reports.c.node_id == deployment_instances.c.node_id,
    instance_reports.c.updated_at >= deployment_instances.c.updated_at,
)
_REPORTED = instance_reports.c.state.is_not(None)
_INSTANCES = select(
    deployment_instances.c.instance_id,
    deployment_instances.c.deploy_id,
    deployment_instances.c.node_id,
    deployment_instances.c.device_indexes,
    deployment_instances.c.requested_seq,
    func.coalesce(instance_reports.c.state, deployment_instances.c.state).label("state"),
    case((_REPORTED, instance_reports.c.reason), else_=deployment_instances.c.reason).label("reason"),
    instance_reports.c.endpoint,
    func.coalesce(instance_reports.c.updated_at, deployment_instances.c.updated_at).label("updated_at"),
).select_from(deployment_instances.outerjoin(instance_reports, _REPORT_OF_PLACEMENT))


async def _instances(conn: AsyncConnection, deploy_ids: Sequence[str]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {deploy_id: [] for deploy_id in deploy_ids}
    if deploy_ids:
        rows = await conn.execute(
            _INSTANCES.where(deployment_instances.c.deploy_id.in_(list(deploy_ids))).order_by(
                deployment_instances.c.requested_seq
            )
        )
        by_instance: dict[str, list[Row]] = {}
        held = await conn.execute(
            select(instance_adapters)
            .where(instance_adapters.c.deploy_id.in_(list(deploy_ids)))
            .order_by(instance_adapters.c.name)
        )
        for adapter in held.mappings():
            by_instance.setdefault(adapter["instance_id"], []).append(dict(adapter))
        for row in rows.mappings():
            out[row["deploy_id"]].append({**row, "adapters": by_instance.get(row["instance_id"], [])})
    return out


async def _with_adapters(conn: AsyncConnection, rows: list[Row]) -> list[Row]:
    """Each deployment row with `adapters`: the adapters it serves, by name."""
    served: dict[str, list[Row]] = {row["deploy_id"]: [] for row in rows}
    if served:
        found = await conn.execute(
            select(deployment_adapters)
            .where(deployment_adapters.c.deploy_id.in_(list(served)))
            .order_by(deployment_adapters.c.name)
        )
        for adapter in found.mappings():
            served[adapter["deploy_id"]].append(dict(adapter))
    return [{**row, "adapters": served[row["deploy_id"]]} for row in rows]


async def _serving(engine: AsyncEngine, adapter_ids: Sequence[str]) -> list[Row]:
    """Every adapter row (`deployment_adapters`, with the deployment's `spec`) of a live deployment serving one of
    `adapter_ids`, the longest served first."""
    if not adapter_ids:
        return []
    async with engine.connect() as conn:
        found = await conn.execute(
            select(deployment_adapters, deployments.c.spec)
            .join(deployments, deployments.c.deploy_id == deployment_adapters.c.deploy_id)
            .where(deployment_adapters.c.adapter_id.in_(list(adapter_ids)), deployments.c.deleted.is_(False))
            .order_by(deployment_adapters.c.attached_at, deployment_adapters.c.deploy_id)
        )
        return [dict(r) for r in found.mappings()]


async def deployments_serving(engine: AsyncEngine, adapter_id: str) -> list[Row]:
    """The live deployments that serve a version of the adapter (`deploy_id`, the served `name`, ...)."""
    return await _serving(engine, [adapter_id])


async def get_deployment(engine: AsyncEngine, deploy_id: str) -> tuple[Row, list[Row]] | None:
    """The deployment (deleted ones too) and its instances, oldest first; None when it never existed."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(deployments).where(deployments.c.deploy_id == deploy_id))).mappings().first()
        if row is None:
            return None
        (with_adapters,) = await _with_adapters(conn, [dict(row)])
        return with_adapters, (await _instances(conn, [deploy_id]))[deploy_id]


async def list_deployments(engine: AsyncEngine, team: str | None = None) -> list[tuple[Row, list[Row]]]:
    """Every deployment not deleted (that `team` owns or any team shares; None: any team's), oldest first, with its
    instances."""
    async with engine.connect() as conn:
        rows = [
            dict(r)
            for r in (
                await conn.execute(
                    select(deployments)
                    .where(
                        deployments.c.deleted.is_(False),
                        owned_by("deployment", deployments.c.deploy_id, team, shared_too=True),
                    )
                    .order_by(deployments.c.created_at, deployments.c.deploy_id)
                )
            ).mappings()
        ]
        rows = await _with_adapters(conn, rows)
        instances = await _instances(conn, [r["deploy_id"] for r in rows])
        return [(r, instances[r["deploy_id"]]) for r in rows]


async def list_nodes(engine: AsyncEngine) -> list[tuple[Row, list[Row]]]:
    """Every registered node, by id, with the instances placed on it."""
    async with engine.connect() as conn:
        statement = select(cluster_nodes).order_by(cluster_nodes.c.node_id)
        nodes = [dict(r) for r in (await conn.execute(statement)).mappings()]
        placed = await conn.execute(_INSTANCES.where(deployment_instances.c.node_id.is_not(None)))
        by_node: dict[str, list[Row]] = {}
        for row in placed.mappings():
            by_node.setdefault(row["node_id"], []).append(dict(row))
        return [(node, by_node.get(node["node_id"], [])) for node in nodes]


async def served_versions(engine: AsyncEngine, adapter_ids: Sequence[str]) -> dict[str, Row]:
    """For each adapter a live deployment serves: the first such deployment's row (`deploy_id`, `version`,
    `attached_at`, and the deployment's `spec`)."""
    out: dict[str, Row] = {}
    for row in await _serving(engine, adapter_ids):
        out.setdefault(row["adapter_id"], row)
    return out


async def adapter_check(engine: AsyncEngine, command_id: str) -> Row | None:
    """The pre-flight verdict a `deployment.check_adapter` command got, once projected."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(adapter_checks).where(adapter_checks.c.command_id == command_id))).first()
        return dict(row._mapping) if row else None
