"""SQL for plugins and the health of their VMs' workloads."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import plugin_health, plugins


async def insert_plugin(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(plugins), [row])


async def find_plugin(conn: AsyncConnection, ref: str, org_id: str | None) -> Row[*tuple[Any, ...]] | None:
    """The plugin named `ref`, or with runtime `ref`, as organization `org_id` sees it: its
    own first (by name, then by runtime), then the shared ones (installed by the operators);
    another organization's is never found. org_id None: the shared ones only."""
    visible = or_(plugins.c.org_id.is_(None), plugins.c.org_id == org_id) if org_id is not None else plugins.c.org_id.is_(None)
    q = select(plugins).where(visible, or_(plugins.c.name == ref, plugins.c.runtime == ref))
    q = q.order_by(plugins.c.org_id.is_(None), plugins.c.name != ref).limit(1)
    return (await conn.execute(q)).first()


async def plugin_in(conn: AsyncConnection, name: str, org_id: str | None) -> Row[*tuple[Any, ...]] | None:
    """The plugin named `name` of exactly namespace `org_id` (None: the shared plugins)."""
    owner = plugins.c.org_id.is_(None) if org_id is None else plugins.c.org_id == org_id
    return (await conn.execute(select(plugins).where(owner, plugins.c.name == name))).first()


async def taken(conn: AsyncConnection, refs: Sequence[str], org_id: str | None) -> str | None:
    """The first of `refs` that is already a name or a runtime in namespace `org_id` (None:
    the shared plugins), or None."""
    owner = plugins.c.org_id.is_(None) if org_id is None else plugins.c.org_id == org_id
    q = select(plugins.c.name, plugins.c.runtime).where(owner, or_(plugins.c.name.in_(refs), plugins.c.runtime.in_(refs)))
    held = {v for r in (await conn.execute(q)).all() for v in r}
    return next((r for r in refs if r in held), None)


async def list_plugins(conn: AsyncConnection, org_id: str | None) -> Sequence[Row[*tuple[Any, ...]]]:
    """Shared plugins (no organization) plus `org_id`'s own, by name."""
    q = select(plugins)
    if org_id is not None:
        q = q.where(or_(plugins.c.org_id.is_(None), plugins.c.org_id == org_id))
    return (await conn.execute(q.order_by(plugins.c.name))).all()


async def set_plugin(conn: AsyncConnection, seq: int, **values: Any) -> None:
    await conn.execute(update(plugins).where(plugins.c.seq == seq).values(**values))


async def delete_plugin(conn: AsyncConnection, seq: int) -> None:
    await conn.execute(delete(plugins).where(plugins.c.seq == seq))


async def get_health(conn: AsyncConnection, vm_id: str) -> Row[*tuple[Any, ...]] | None:
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
