"""SQL for backups."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import backups, tasks


async def insert_backup(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(backups), [row])


async def get_backup(conn: AsyncConnection, backup_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(backups).where(backups.c.id == backup_id))).first()


async def list_backups(conn: AsyncConnection, org_id: str, team_id: str | None, vm_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    """Newest first."""
    q = select(backups).where(backups.c.org_id == org_id)
    if team_id is not None:
        q = q.where(backups.c.team_id == team_id)
    if vm_id is not None:
        q = q.where(backups.c.vm_id == vm_id)
    return (await conn.execute(q.order_by(backups.c.seq.desc()))).all()


async def set_backup(conn: AsyncConnection, backup_id: str, **values: Any) -> None:
    await conn.execute(update(backups).where(backups.c.id == backup_id).values(**values))


async def delete_backup(conn: AsyncConnection, backup_id: str) -> None:
    await conn.execute(delete(backups).where(backups.c.id == backup_id))


async def busy(conn: AsyncConnection, vm_id: str) -> set[str]:
    """Which of backup-create / vm-restore are queued or running on a VM."""
    q = select(tasks.c.type).where(
        tasks.c.resource_id == vm_id, tasks.c.type.in_(["backup-create", "vm-restore"]), tasks.c.state.in_(["queued", "running"])
    )
    return {r[0] for r in (await conn.execute(q)).all()}
