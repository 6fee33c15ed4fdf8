"""SQL for vSphere connection profiles (their secrets stay sealed here)."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import vsphere_profiles


async def insert_profile(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(vsphere_profiles), [row])


async def get_profile(conn: AsyncConnection, org_id: str, name: str) -> Row[*tuple[Any, ...]] | None:
    q = select(vsphere_profiles).where(vsphere_profiles.c.org_id == org_id, vsphere_profiles.c.name == name)
    return (await conn.execute(q)).first()


async def list_profiles(conn: AsyncConnection, org_id: str) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(vsphere_profiles).where(vsphere_profiles.c.org_id == org_id).order_by(vsphere_profiles.c.name)
    return (await conn.execute(q)).all()


async def delete_profile(conn: AsyncConnection, org_id: str, name: str) -> bool:
    q = delete(vsphere_profiles).where(vsphere_profiles.c.org_id == org_id, vsphere_profiles.c.name == name)
    return bool((await conn.execute(q)).rowcount)
