"""SQL for deployments and for versioned VM configs."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import Vm
from .jobs import ACTIVE
from .tables import deployments, tasks, vm_configs, vms


async def insert_deployment(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(deployments), [row])


async def get_deployment(conn: AsyncConnection, name: str, org_id: str) -> Row[*tuple[Any, ...]] | None:
    """Organization `org_id`'s deployment named `name` (names are unique per organization)."""
    return (await conn.execute(select(deployments).where(deployments.c.org_id == org_id, deployments.c.name == name))).first()


async def list_deployments(conn: AsyncConnection, org_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(deployments)
    if org_id is not None:
        q = q.where(deployments.c.org_id == org_id)
    return (await conn.execute(q.order_by(deployments.c.seq))).all()


async def set_deployment(conn: AsyncConnection, dep_id: str, **values: Any) -> None:
    await conn.execute(update(deployments).where(deployments.c.id == dep_id).values(**values))


async def delete_deployment(conn: AsyncConnection, dep_id: str) -> None:
    await conn.execute(delete(deployments).where(deployments.c.id == dep_id))


async def vms_named_like(conn: AsyncConnection, prefix: str, org_id: str) -> list[Vm]:
    """Organization `org_id`'s VMs whose name starts with `prefix` (the caller checks the rest
    of the name): a deployment's replica names are names in its own organization only."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    q = select(vms).where(vms.c.org_id == org_id, vms.c.name.like(escaped + "%", escape="\\"))
    return [Vm.from_row(r) for r in (await conn.execute(q)).all()]


async def active_work(conn: AsyncConnection, vm_ids: Sequence[str]) -> dict[str, set[str]]:
    """The task types queued or running on each of these VMs."""
    out: dict[str, set[str]] = {}
    if vm_ids:
        q = select(tasks.c.resource_id, tasks.c.type).where(tasks.c.resource_id.in_(vm_ids), tasks.c.state.in_(ACTIVE))
        for vm_id, type_ in (await conn.execute(q)).all():
            out.setdefault(vm_id, set()).add(type_)
    return out


# -- VM configs ----------------------------------------------------------------------------


async def latest_config(conn: AsyncConnection, vm_id: str) -> Row[*tuple[Any, ...]] | None:
    q = select(vm_configs).where(vm_configs.c.vm_id == vm_id).order_by(vm_configs.c.version.desc()).limit(1)
    return (await conn.execute(q)).first()


async def config_history(conn: AsyncConnection, vm_id: str, limit: int) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(vm_configs).where(vm_configs.c.vm_id == vm_id).order_by(vm_configs.c.version.desc()).limit(limit)
    return (await conn.execute(q)).all()


async def add_config(conn: AsyncConnection, vm_id: str, version: int, config: dict[str, Any], now: float) -> int:
    """Record a version; the unique (vm_id, version) key makes two writers of one version
    collide (IntegrityError) instead of both winning."""
    res = await conn.execute(insert(vm_configs).values(vm_id=vm_id, version=version, config=config, created_at=now).returning(vm_configs.c.seq))
    return int(res.scalar_one())


async def forget_configs(conn: AsyncConnection, vm_ids: Sequence[str]) -> None:
    if vm_ids:
        await conn.execute(delete(vm_configs).where(vm_configs.c.vm_id.in_(vm_ids)))


async def orphan_config_vms(conn: AsyncConnection) -> list[str]:
    """VM ids that have config versions but no longer exist."""
    q = select(func.distinct(vm_configs.c.vm_id)).where(vm_configs.c.vm_id.not_in(select(vms.c.id)))
    return [r[0] for r in (await conn.execute(q)).all()]
