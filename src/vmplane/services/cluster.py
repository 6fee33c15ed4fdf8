"""Nodes and the cluster as a whole."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from .. import __version__, clock
from ..auth import Principal
from ..domain import NodeStatus
from ..errors import Forbidden, NotFound
from ..store import events as ev_q
from ..store import meta as meta_q
from ..store import networks as net_q
from ..store import nodes as node_q
from ..store import vms as vm_q
from . import pages
from .vms import visible

if TYPE_CHECKING:
    from ..config import Settings
    from ..drivers.base import HypervisorDriver
    from ..store import Store
    from .capacity import Capacity


class ClusterService:
    def __init__(self, *, store: Store, settings: Settings, capacity: Capacity) -> None:
        self.store = store
        self.settings = settings
        self.capacity = capacity

    async def register_node(self, node_id: str, driver: HypervisorDriver) -> None:
        """Record a node this process now serves (capacity, labels) and announce it."""
        now = clock.now()
        info = await driver.node_info()
        row = {
            "id": node_id,
            "hostname": info.hostname,
            "driver": driver.capabilities.kind,
            "status": NodeStatus.ONLINE.value,
            "cpu_total": info.cpu,
            "ram_mb_total": info.ram_mb,
            "disk_gb_total": info.disk_gb,
            "labels": {
                **info.labels, "networkTypes": ",".join(sorted(driver.capabilities.network_types)),
                **({"cdrom": "true"} if driver.capabilities.cdrom else {}),  # placement's filter (placement.NodeUsage.cdrom)
            },  # fmt: skip
            "pci_devices": [d.to_wire() for d in info.pci_devices],
            "created_at": now,
            "updated_at": now,
            "heartbeat_at": now,
        }
        async with self.store.write() as conn:
            await node_q.upsert_node(conn, row)
            await ev_q.emit(conn, "node.online", node_id, {"id": node_id, "hostname": row["hostname"], "driver": row["driver"]}, None)
        self.capacity.invalidate()

    async def heartbeat(self, node_ids: Collection[str]) -> None:
        """Say that the nodes this process serves are alive: their `heartbeat_at` is now (a
        remote node's agent beats through AgentService.heartbeat instead)."""
        if node_ids:
            async with self.store.write() as conn:
                await node_q.beat(conn, sorted(node_ids), clock.now())

    async def node(self, node_id: str) -> Row[Any]:
        async with self.store.read() as conn:
            row = await node_q.get_node(conn, node_id)
        if row is None:
            raise NotFound(f"node {node_id} does not exist")
        return row

    async def nodes(self, *, limit: int, page_token: str | None) -> tuple[Sequence[Row[Any]], str | None]:
        after = pages.decode("nodes", page_token)
        async with self.store.read() as conn:
            rows = await node_q.list_nodes(conn, after_seq=after, limit=limit + 1)
        token = pages.encode("nodes", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token

    async def set_cordon(self, who: Principal, node_id: str, cordoned: bool) -> Row[Any]:
        """Cordon a node (no new VM is placed there; its VMs stay) or uncordon it. Idempotent."""
        if not who.operator:
            raise Forbidden("only operators (owners and admins of the bootstrap organization) cordon nodes")
        async with self.store.write() as conn:
            if await node_q.get_node(conn, node_id) is None:
                raise NotFound(f"node {node_id} does not exist")
            await node_q.set_cordoned(conn, node_id, cordoned, clock.now())
        self.capacity.invalidate()
        return await self.node(node_id)

    async def devices(self, node_id: str, who: Principal) -> list[dict[str, Any]]:
        """The PCI devices a node offers for passthrough, whether each is given to a VM, and
        which VM when `who` may see it (operators: every VM; others: their own)."""
        row = await self.node(node_id)
        async with self.store.read() as conn:
            owners = {a.address: a.vm_id for a in await net_q.assigned_devices(conn, node_id)}
            vms = {v.id: v for v in await vm_q.get_vms(conn, list(set(owners.values())))} if owners and not who.operator else {}

        def shown(vm_id: str | None) -> str | None:
            if vm_id is None or who.operator:
                return vm_id
            vm = vms.get(vm_id)
            return vm_id if vm is not None and visible(vm, who) else None

        return [{**d, "assigned": d["address"] in owners, "vmId": shown(owners.get(d["address"]))} for d in row.pci_devices or ()]

    async def totals(self) -> Row[Any]:
        async with self.store.read() as conn:
            return await node_q.cluster_totals(conn)

    async def details(self) -> dict[str, Any]:
        async with self.store.read() as conn:
            cluster_id = await meta_q.get(conn, "cluster_id")
            created = await meta_q.get(conn, "created_at")
            rows = await node_q.list_nodes(conn)
        online = sum(1 for r in rows if r.status == NodeStatus.ONLINE.value)
        status = "healthy" if rows and online == len(rows) else ("degraded" if online else "unavailable")
        return {
            "id": cluster_id,
            "name": self.settings.cluster_name,
            "version": __version__,
            "status": status,
            "nodes": len(rows),
            "createdAt": float(created) if created else None,
        }
