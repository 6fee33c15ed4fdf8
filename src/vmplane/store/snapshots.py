"""SQL for snapshots."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import snapshots, vms


async def insert_snapshot(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(snapshots), [row])


async def get_snapshot(conn: AsyncConnection, ref: str) -> Row[*tuple[Any, ...]] | None:
    """A snapshot by id or uuid."""
    return (await conn.execute(select(snapshots).where(or_(snapshots.c.id == ref, snapshots.c.uuid == ref)))).first()


async def list_snapshots(conn: AsyncConnection, org_id: str, team_id: str | None, vm_id: str | None) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(snapshots).where(snapshots.c.org_id == org_id)
    if team_id is not None:
        q = q.where(snapshots.c.team_id == team_id)
    if vm_id is not None:
        q = q.where(snapshots.c.vm_id == vm_id)
    return (await conn.execute(q.order_by(snapshots.c.seq))).all()


async def set_snapshot(conn: AsyncConnection, snapshot_id: str, **values: Any) -> None:
    await conn.execute(update(snapshots).where(snapshots.c.id == snapshot_id).values(**values))


async def delete_snapshot(conn: AsyncConnection, snapshot_id: str) -> None:
    await conn.execute(delete(snapshots).where(snapshots.c.id == snapshot_id))


async def dependents(conn: AsyncConnection, snapshot_id: str) -> int:
    """VMs whose disks are copy-on-write clones of the snapshot."""
    return (await conn.execute(select(func.count()).select_from(vms).where(vms.c.snapshot_id == snapshot_id))).scalar_one()


async def using_template(conn: AsyncConnection, template_id: str) -> int:
    q = select(func.count()).select_from(snapshots).where(snapshots.c.template_id == template_id)
    return (await conn.execute(q)).scalar_one()


async def count_for_org(conn: AsyncConnection, org_id: str) -> int:
    return (await conn.execute(select(func.count()).select_from(snapshots).where(snapshots.c.org_id == org_id))).scalar_one()
