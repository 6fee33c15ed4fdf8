"""SQL for networks, IPAM (one owner per address), VM firewalls and PCI device assignments."""

from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import Row, delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import ip_addresses, networks, pci_assignments, vm_firewalls


async def insert_network(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(networks), [row])


async def get_network(conn: AsyncConnection, network_id: str) -> Row[*tuple[Any, ...]] | None:
    """By id, whoever owns it (the caller checks who may see it)."""
    return (await conn.execute(select(networks).where(networks.c.id == network_id))).first()


async def find_network(conn: AsyncConnection, ref: str, org_id: str | None) -> Row[*tuple[Any, ...]] | None:
    """The network `ref` (id or name) as organization `org_id` sees it: its own and the
    shared ones only; a name is looked up among its own first, then the shared ones (such as
    `user`). org_id None: the shared ones only."""
    visible = or_(networks.c.org_id.is_(None), networks.c.org_id == org_id) if org_id is not None else networks.c.org_id.is_(None)
    q = select(networks).where(visible, or_(networks.c.id == ref, networks.c.name == ref))
    q = q.order_by(networks.c.id != ref, networks.c.org_id.is_(None)).limit(1)
    return (await conn.execute(q)).first()


async def name_taken(conn: AsyncConnection, name: str, org_id: str | None) -> bool:
    """Whether namespace `org_id` (None: the shared one) holds a network named `name`."""
    owner = networks.c.org_id.is_(None) if org_id is None else networks.c.org_id == org_id
    return (await conn.execute(select(networks.c.id).where(owner, networks.c.name == name))).first() is not None


async def get_networks(conn: AsyncConnection, network_ids: Iterable[str]) -> dict[str, Row[*tuple[Any, ...]]]:
    ids = list(set(network_ids))
    if not ids:
        return {}
    return {r.id: r for r in (await conn.execute(select(networks).where(networks.c.id.in_(ids)))).all()}


async def list_networks(conn: AsyncConnection, org_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    """Every network, or those an organization sees (its own and the shared ones)."""
    q = select(networks)
    if org_id is not None:
        q = q.where(or_(networks.c.org_id == org_id, networks.c.org_id.is_(None)))
    return (await conn.execute(q.order_by(networks.c.seq))).all()


async def delete_network(conn: AsyncConnection, network_id: str) -> None:
    await conn.execute(delete(networks).where(networks.c.id == network_id))


async def addresses_in_use(conn: AsyncConnection, network_id: str) -> int:
    return (await conn.execute(select(func.count()).select_from(ip_addresses).where(ip_addresses.c.network_id == network_id))).scalar_one()


async def max_addr(conn: AsyncConnection, network_id: str) -> int | None:
    return cast(int | None, (await conn.execute(select(func.max(ip_addresses.c.addr)).where(ip_addresses.c.network_id == network_id))).scalar())


async def taken_addrs(conn: AsyncConnection, network_id: str) -> set[int]:
    return set((await conn.execute(select(ip_addresses.c.addr).where(ip_addresses.c.network_id == network_id))).scalars())


async def insert_addresses(conn: AsyncConnection, rows: list[dict[str, Any]]) -> bool:
    """Record address owners; False (nothing recorded) if one of them is taken already."""
    if not rows:
        return True
    try:
        async with conn.begin_nested():
            await conn.execute(insert(ip_addresses), rows)
    except IntegrityError:
        return False
    return True


async def addresses_of(conn: AsyncConnection, vm_ids: Iterable[str]) -> dict[str, list[Row[*tuple[Any, ...]]]]:
    """The addresses of each VM, by NIC then primary first then allocation order."""
    ids = list(set(vm_ids))
    out: dict[str, list[Row[*tuple[Any, ...]]]] = {i: [] for i in ids}
    if not ids:
        return out
    q = (
        select(ip_addresses)
        .where(ip_addresses.c.vm_id.in_(ids))
        .order_by(ip_addresses.c.nic, ip_addresses.c.is_primary.desc(), ip_addresses.c.created_at, ip_addresses.c.addr)
    )
    for r in (await conn.execute(q)).all():
        out[r.vm_id].append(r)
    return out


async def release_address(conn: AsyncConnection, vm_id: str, network_id: str, addr: int) -> None:
    await conn.execute(
        delete(ip_addresses).where(ip_addresses.c.vm_id == vm_id, ip_addresses.c.network_id == network_id, ip_addresses.c.addr == addr)
    )


async def release_vm(conn: AsyncConnection, vm_id: str) -> None:
    """Everything a VM held: its addresses, its firewall, its PCI devices."""
    await conn.execute(delete(ip_addresses).where(ip_addresses.c.vm_id == vm_id))
    await conn.execute(delete(vm_firewalls).where(vm_firewalls.c.vm_id == vm_id))
    await conn.execute(delete(pci_assignments).where(pci_assignments.c.vm_id == vm_id))


async def get_firewall(conn: AsyncConnection, vm_id: str) -> dict[str, Any] | None:
    return (await conn.execute(select(vm_firewalls.c.firewall).where(vm_firewalls.c.vm_id == vm_id))).scalar()


async def set_firewall(conn: AsyncConnection, vm_id: str, firewall: dict[str, Any], now: float) -> None:
    await conn.execute(delete(vm_firewalls).where(vm_firewalls.c.vm_id == vm_id))
    await conn.execute(insert(vm_firewalls), [{"vm_id": vm_id, "firewall": firewall, "updated_at": now}])


async def assigned_devices(conn: AsyncConnection, node_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(pci_assignments)
    if node_id is not None:
        q = q.where(pci_assignments.c.node_id == node_id)
    return (await conn.execute(q)).all()


async def devices_of(conn: AsyncConnection, vm_id: str) -> list[str]:
    q = select(pci_assignments.c.address).where(pci_assignments.c.vm_id == vm_id).order_by(pci_assignments.c.address)
    return list((await conn.execute(q)).scalars())


async def assign_devices(conn: AsyncConnection, node_id: str, vm_id: str, addresses: Sequence[str]) -> bool:
    """Give devices to a VM; False (nothing assigned) if one is taken already."""
    if not addresses:
        return True
    try:
        async with conn.begin_nested():
            await conn.execute(insert(pci_assignments), [{"node_id": node_id, "address": a, "vm_id": vm_id} for a in addresses])
    except IntegrityError:
        return False
    return True


async def release_devices(conn: AsyncConnection, vm_id: str) -> None:
    await conn.execute(delete(pci_assignments).where(pci_assignments.c.vm_id == vm_id))
