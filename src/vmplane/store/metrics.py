"""SQL aggregates behind /metrics."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import jobs, nodes, vms, webhook_deliveries


async def jobs_by_type_state(conn: AsyncConnection, org_id: str | None = None, team_id: str | None = None) -> dict[tuple[str, str], int]:
    """Job counts by (type, state); of one organization with `org_id`, of one team with `team_id`."""
    q = select(jobs.c.type, jobs.c.state, func.count()).group_by(jobs.c.type, jobs.c.state)
    if org_id is not None:
        q = q.where(jobs.c.org_id == org_id)
    if team_id is not None:
        q = q.where(jobs.c.team_id == team_id)
    return {(r[0], r[1]): r[2] for r in (await conn.execute(q)).all()}


async def vms_by_status_node(conn: AsyncConnection) -> dict[tuple[str, str | None], int]:
    q = select(vms.c.status, vms.c.node_id, func.count()).group_by(vms.c.status, vms.c.node_id)
    return {(r[0], r[1]): r[2] for r in (await conn.execute(q)).all()}


async def node_rows(conn: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(nodes).order_by(nodes.c.seq))).all()


async def deliveries_by_status(conn: AsyncConnection) -> dict[str, int]:
    q = select(webhook_deliveries.c.status, func.count()).group_by(webhook_deliveries.c.status)
    return {r[0]: r[1] for r in (await conn.execute(q)).all()}
