"""SQL for plugins and the health of their VMs' workloads."""

from typing import Any, Sequence

from sqlalchemy import Row, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import plugin_health, plugins


async def insert_plugin(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(plugins), [row])


async def get_plugin(conn: AsyncConnection, ref: str) -> Row | None:
    """A plugin by name or by runtime."""
    q = select(plugins).where(or_(plugins.c.name == ref, plugins.c.runtime == ref)).order_by(plugins.c.name != ref)
    return (await conn.execute(q)).first()


async def list_plugins(conn: AsyncConnection, org_id: str | None) -> Sequence[Row]:
    """Shared plugins (no organization) plus `org_id`'s own, by name."""
    q = select(plugins)
    if org_id is not None:
        q = q.where(or_(plugins.c.org_id.is_(None), plugins.c.org_id == org_id))
    return (await conn.execute(q.order_by(plugins.c.name))).all()


async def set_plugin(conn: AsyncConnection, name: str, **values: Any) -> None:
    await conn.execute(update(plugins).where(plugins.c.name == name).values(**values))


async def delete_plugin(conn: AsyncConnection, name: str) -> None:
    await conn.execute(delete(plugins).where(plugins.c.name == name))


async def get_health(conn: AsyncConnection, vm_id: str) -> Row | None:
    return (await conn.execute(select(plugin_health).where(plugin_health.c.vm_id == vm_id))).first()


async def set_health(conn: AsyncConnection, vm_id: str, status: str, detail: str | None, now: float, changed: bool) -> None:
    values: dict[str, Any] = {"status": status, "detail": detail, "checked_at": now}
    if changed:
        values["changed_at"] = now
    done = await conn.execute(update(plugin_health).where(plugin_health.c.vm_id == vm_id).values(**values))
    if done.rowcount == 0:
        await conn.execute(insert(plugin_health), [{"vm_id": vm_id, "changed_at": now, **values}])


async def forget_health(conn: AsyncConnection, vm_ids: Sequence[str]) -> None:
    if vm_ids:
        await conn.execute(delete(plugin_health).where(plugin_health.c.vm_id.in_(list(vm_ids))))
