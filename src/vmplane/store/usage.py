"""SQL for usage metering: spans of time each VM held a shape, and reading them per period."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import vm_usage


async def open_spans(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(vm_usage), rows)


async def close_span(conn: AsyncConnection, vm_id: str, at: float, facts: dict[str, Any] | None = None) -> None:
    """End the VM's open span at `at`, writing `facts` (what the span keeps of its VM) over
    what it held; a fact that is None leaves the span's value."""
    known = {k: v for k, v in (facts or {}).items() if v is not None}
    await conn.execute(update(vm_usage).where(vm_usage.c.vm_id == vm_id, vm_usage.c.end.is_(None)).values(end=at, **known))


async def spans(conn: AsyncConnection, org_id: str, start: float, end: float, team_id: str | None) -> Sequence[Row[*tuple[Any, ...]]]:
    """Spans overlapping [start, end) for an organization (or one of its teams)."""
    q = select(vm_usage).where(
        vm_usage.c.org_id == org_id, vm_usage.c.start < end, or_(vm_usage.c.end.is_(None), vm_usage.c.end > start)
    )
    if team_id is not None:
        q = q.where(vm_usage.c.team_id == team_id)
    return (await conn.execute(q.order_by(vm_usage.c.seq))).all()


async def lifetimes(conn: AsyncConnection, vm_ids: Sequence[str]) -> dict[str, tuple[float, float | None]]:
    """Per VM id, (start of its first span, end of its last): when a deleted VM was created
    and deleted, whatever period a report covers."""
    if not vm_ids:
        return {}
    q = select(vm_usage.c.vm_id, func.min(vm_usage.c.start), func.max(vm_usage.c.end)).where(vm_usage.c.vm_id.in_(list(vm_ids)))
    return {r[0]: (r[1], r[2]) for r in (await conn.execute(q.group_by(vm_usage.c.vm_id))).all()}
