"""Stored stats samples of VMs and nodes (services/stats_history.py writes, the API reads)."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import node_samples, vm_samples

HISTORY_MAX = 5000
"""the most samples one history answer holds (an hour at 1 s is 3,600)"""


async def add_samples(conn: AsyncConnection, vm_rows: Sequence[dict[str, Any]], node_rows: Sequence[dict[str, Any]]) -> None:
    """One tick's samples: one batched INSERT per table (executemany)."""
    if vm_rows:
        await conn.execute(insert(vm_samples), list(vm_rows))
    if node_rows:
        await conn.execute(insert(node_samples), list(node_rows))


async def prune(conn: AsyncConnection, before: float) -> int:
    """Forget the samples taken before `before` (a range delete on the `at` indexes)."""
    n = (await conn.execute(delete(vm_samples).where(vm_samples.c.at < before))).rowcount or 0
    n += (await conn.execute(delete(node_samples).where(node_samples.c.at < before))).rowcount or 0
    return n


async def vm_history(conn: AsyncConnection, vm_id: str, since: float) -> list[Row[Any]]:
    """The VM's samples from `since` on, oldest first, with the one before `since` (if any) in
    front, so that the first sample's rates can be told."""
    c = vm_samples.c
    before = (
        await conn.execute(select(vm_samples).where(c.vm_id == vm_id, c.at < since).order_by(c.at.desc()).limit(1))
    ).first()
    rows = (
        await conn.execute(select(vm_samples).where(c.vm_id == vm_id, c.at >= since).order_by(c.at.desc()).limit(HISTORY_MAX))
    ).all()
    return ([before] if before is not None else []) + list(reversed(rows))


async def node_history(conn: AsyncConnection, node_id: str, since: float) -> list[Row[Any]]:
    c = node_samples.c
    rows = (
        await conn.execute(select(node_samples).where(c.node_id == node_id, c.at >= since).order_by(c.at.desc()).limit(HISTORY_MAX))
    ).all()
    return list(reversed(rows))


async def latest_of(conn: AsyncConnection, vm_ids: Sequence[str], since: float) -> dict[str, Row[Any]]:
    """The newest sample (taken from `since` on) of each of `vm_ids` that has one."""
    if not vm_ids:
        return {}
    c = vm_samples.c
    q = select(c.vm_id, c.at, c.cpu_percent, c.memory_mb, c.memory_total_mb, c.memory_source).where(
        c.vm_id.in_(list(vm_ids)), c.at >= since
    )
    latest: dict[str, Any] = {}
    for r in (await conn.execute(q)).all():
        if r.vm_id not in latest or r.at > latest[r.vm_id].at:
            latest[r.vm_id] = r
    return latest
