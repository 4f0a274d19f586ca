"""Reads of deployments, their instances and the cluster's nodes, against the read model only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api.readmodel.tables import cluster_nodes, deployment_instances, deployments

Row = dict[str, Any]


async def _instances(conn: AsyncConnection, deploy_ids: Sequence[str]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {deploy_id: [] for deploy_id in deploy_ids}
    if deploy_ids:
        rows = await conn.execute(
            select(deployment_instances)
            .where(deployment_instances.c.deploy_id.in_(list(deploy_ids)))
            .order_by(deployment_instances.c.requested_seq)
        )
        for row in rows.mappings():
            out[row["deploy_id"]].append(dict(row))
    return out


async def get_deployment(engine: AsyncEngine, deploy_id: str) -> tuple[Row, list[Row]] | None:
    """The deployment (deleted ones too) and its instances, oldest first; None when it never existed."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(deployments).where(deployments.c.deploy_id == deploy_id))).mappings().first()
        if row is None:
            return None
        return dict(row), (await _instances(conn, [deploy_id]))[deploy_id]


async def list_deployments(engine: AsyncEngine) -> list[tuple[Row, list[Row]]]:
    """Every deployment not deleted, oldest first, with its instances."""
    async with engine.connect() as conn:
        rows = [
            dict(r)
            for r in (
                await conn.execute(
                    select(deployments)
                    .where(deployments.c.deleted.is_(False))
                    .order_by(deployments.c.created_at, deployments.c.deploy_id)
                )
            ).mappings()
        ]
        instances = await _instances(conn, [r["deploy_id"] for r in rows])
        return [(r, instances[r["deploy_id"]]) for r in rows]


async def list_nodes(engine: AsyncEngine) -> list[tuple[Row, list[Row]]]:
    """Every registered node, by id, with the instances placed on it."""
    async with engine.connect() as conn:
        statement = select(cluster_nodes).order_by(cluster_nodes.c.node_id)
        nodes = [dict(r) for r in (await conn.execute(statement)).mappings()]
        placed = await conn.execute(select(deployment_instances).where(deployment_instances.c.node_id.is_not(None)))
        by_node: dict[str, list[Row]] = {}
        for row in placed.mappings():
            by_node.setdefault(row["node_id"], []).append(dict(row))
        return [(node, by_node.get(node["node_id"], [])) for node in nodes]
