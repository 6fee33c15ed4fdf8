"""Resource claims on nodes: placement over a cached view of usage, claims made atomic by
conditional updates in the store (so concurrent creates can never overcommit a node)."""

from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from itertools import groupby
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..config import Settings
from ..domain import NodeStatus
from ..errors import InvalidRequest, NoCapacity, NotFound, Reason
from ..pci import PciDevice
from ..placement import SETTINGS, UNITS, Demand, NodeUsage, Policy, Ranking, choose_node, pick_devices
from ..store import Store
from ..store import networks as net_q
from ..store import nodes as node_q


def usage_of(row: Row[Any], taken: Collection[tuple[str, str]] = ()) -> NodeUsage:
    devices = tuple(PciDevice.from_wire(d) for d in row.pci_devices or () if (row.id, d["address"]) not in taken)
    return NodeUsage(
        id=row.id,
        online=row.status == NodeStatus.ONLINE.value,
        cpu_total=row.cpu_total,
        ram_mb_total=row.ram_mb_total,
        disk_gb_total=row.disk_gb_total,
        cpu_used=row.cpu_used,
        ram_mb_used=row.ram_mb_used,
        disk_gb_used=row.disk_gb_used,
        devices=devices,
        network_types=frozenset(((row.labels or {}).get("networkTypes") or "user").split(",")),
        cordoned=bool(row.cordoned),
        cdrom=(row.labels or {}).get("cdrom") == "true",
    )


def _with_claim(n: NodeUsage, cpu: int, ram_mb: int, disk_gb: int, devices: list[str] | None = None) -> NodeUsage:
    """`n` once a claim (negative: a release) is made on it, the devices taken."""
    return replace(
        n, cpu_used=n.cpu_used + cpu, ram_mb_used=n.ram_mb_used + ram_mb, disk_gb_used=n.disk_gb_used + disk_gb,
        devices=tuple(d for d in n.devices if d.address not in devices) if devices else n.devices,
    )  # fmt: skip


class Capacity:
    """Chooses nodes and claims resources on them.

    The cache of node usage only steers placement; the store decides. A claim that the store
    refuses (another worker got there first) refreshes the cache and tries the next choice.
    """

    CACHE_SECONDS = 5.0
    RANKINGS = 8
    """demands (sizes, network types) whose ranking is kept at once"""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.policy = Policy(
            cpu_ratio=settings.cpu_overcommit,
            ram_ratio=settings.ram_overcommit,
            disk_ratio=settings.disk_overcommit,
            strategy=settings.placement_strategy,
        )
        self.ratios = (settings.cpu_overcommit, settings.ram_overcommit, settings.disk_overcommit)
        self._cache: dict[str, NodeUsage] = {}
        self._rankings: dict[Demand, Ranking] = {}
        """the cache ordered for the demands placed lately (kept by `_adjust`, dropped by `_refresh`)"""
        self._loaded_at = 0.0
        self.scope: Callable[[], tuple[set[str], set[str]]] | None = None
        """With several replicas: (nodes to avoid, nodes to avoid even when nothing else fits);
        see Replicas.placement_scope."""

    async def _refresh(self, conn: AsyncConnection) -> None:
        """Reload usage through the caller's connection (a second one could deadlock a full pool)."""
        taken = {(a.node_id, a.address) for a in await net_q.assigned_devices(conn)}
        self._cache = {r.id: usage_of(r, taken) for r in await node_q.list_nodes(conn)}
        self._rankings = {}
        self._loaded_at = clock.now()

    def invalidate(self) -> None:
        self._loaded_at = 0.0

    def _adjust(self, node_id: str, cpu: int, ram_mb: int, disk_gb: int, devices: list[str] | None = None) -> None:
        n = self._cache.get(node_id)
        if n is not None:
            self._cache[node_id] = n = _with_claim(n, cpu, ram_mb, disk_gb, devices)
            for ranking in self._rankings.values():
                ranking.update(n)

    async def place_and_claim(self, conn: AsyncConnection, demand: Demand, vm_id: str | None = None) -> str:
        """Choose a node and claim `demand` on it inside `conn`'s transaction; returns its id.
        PCI devices in the demand are assigned to `vm_id` on that node."""
        for attempt in range(5):
            fresh = attempt or clock.now() - self._loaded_at > self.CACHE_SECONDS
            if fresh:
                await self._refresh(conn)
            try:
                node = self._choose(demand)
            except NoCapacity:
                if fresh:
                    raise
                await self._refresh(conn)  # the cache may be behind (e.g. devices given back)
                node = self._choose(demand)
            if not await node_q.claim(conn, node.id, demand.cpu, demand.ram_mb, demand.disk_gb, self.ratios, clock.now()):
                continue
            devices = pick_devices(demand.pci, node.devices) if demand.pci else []
            if devices is None or (devices and (vm_id is None or not await net_q.assign_devices(conn, node.id, vm_id, devices))):
                await node_q.release(conn, node.id, demand.cpu, demand.ram_mb, demand.disk_gb, clock.now())
                continue
            self._adjust(node.id, demand.cpu, demand.ram_mb, demand.disk_gb, devices)
            return node.id
        raise NoCapacity("could not claim capacity: nodes keep filling up; try again")

    def _choose(self, demand: Demand) -> NodeUsage:
        """Placement over the nodes this process serves (and nodes no replica holds, such as
        remote ones); over those another replica serves only if nothing else fits."""
        avoid, last_resort = self.scope() if self.scope is not None else (set(), set())
        if not avoid and demand.node_id is None and not demand.pci and not demand.exclude:
            ranking = self._rankings.get(demand)
            if ranking is None:
                if len(self._rankings) >= self.RANKINGS:
                    del self._rankings[next(iter(self._rankings))]  # the oldest
                ranking = self._rankings[demand] = Ranking(demand, self._cache.values(), self.policy)
            best = ranking.best()
            if best is not None:
                return self._cache[best]
        if not avoid:
            return choose_node(demand, self._cache.values(), self.policy)  # a node named, or what is short said
        try:
            return choose_node(demand, [n for n in self._cache.values() if n.id not in avoid], self.policy)
        except (NoCapacity, NotFound):
            return choose_node(demand, [n for n in self._cache.values() if n.id not in last_resort], self.policy)

    async def check(self, demands: Sequence[Demand]) -> None:
        """Raise NoCapacity (naming what is short and the setting that bounds it) unless the
        nodes could take all of `demands` now, one after the other, or InvalidRequest naming
        the resource (`[i].` before it for several) if no node could ever hold that much of it.
        Only a check, made before a create records anything: the claim, made later, still
        decides. Works on the cached view of usage while it is fresh and reloads it before
        refusing (a create is a hot path: no query per request while nodes have room)."""
        if not demands:
            return
        reloaded = clock.now() - self._loaded_at > self.CACHE_SECONDS
        if reloaded:
            async with self.store.read() as conn:
                await self._refresh(conn)
        try:
            self._check(demands)
        except (NoCapacity, InvalidRequest):
            if reloaded:
                raise
            async with self.store.read() as conn:
                await self._refresh(conn)
            self._check(demands)

    def _check(self, demands: Sequence[Demand]) -> None:
        many = len(demands) > 1
        usage = dict(self._cache)
        online = [u for u in usage.values() if u.online]
        biggest = [min(online, key=lambda u: (-self.policy.limits(u)[i], u.id)) if online else None for i in range(3)]
        n = 0
        for demand, run in groupby(demands):  # a bulk create asks for many alike: check each kind once
            count = len(list(run))
            if demand.node_id is not None and demand.node_id not in usage:
                n += count
                continue  # the create names the unknown node (nodeId) as it records the VM
            self._within_any_node(demand, biggest, f"[{n}]." if many else "")
            # all but the last by counting room (no scoring, which only the claim needs), the
            # rest one by one: choose_node names what is short, at the index it is short for
            placed = 0 if demand.pci else self._fill(usage, demand, count - 1)
            for k in range(placed, count):
                try:
                    node = choose_node(demand, usage.values(), self.policy)
                except NoCapacity as exc:
                    if many:
                        i = n + k
                        after = f", once the {i} VM{'s' if i > 1 else ''} before it are placed" if i else ""
                        raise NoCapacity(f"[{i}]: {exc.message}{after}", field=f"[{i}].resources", **exc.details) from None
                    raise
                usage[node.id] = _with_claim(node, demand.cpu, demand.ram_mb, demand.disk_gb,
                                             pick_devices(demand.pci, node.devices) if demand.pci else None)  # fmt: skip
            n += count

    def _within_any_node(self, demand: Demand, biggest: list[NodeUsage | None], prefix: str) -> None:
        """InvalidRequest (BEYOND_ANY_NODE) naming the resource if no node (the node the
        demand names, else the biggest online one) could ever hold that much of it."""
        named = self._cache.get(demand.node_id) if demand.node_id is not None else None
        for i, (field, said, want) in enumerate(
            (("resources.cpu", "resources.cpu", demand.cpu), ("resources.ram_mb", "resources.ramMb", demand.ram_mb),
             ("resources.disk_gb", "resources.diskGb", demand.disk_gb))
        ):  # fmt: skip
            node = (named if named is not None and named.online else None) if demand.node_id is not None else biggest[i]
            if node is None:
                continue
            most = self.policy.limits(node)[i]
            if want > most:
                total = (node.cpu_total, node.ram_mb_total, node.disk_gb_total)[i]
                raise InvalidRequest(
                    f"{prefix}{said}: {want} {UNITS[i]} is more than any node can hold (at most {most}: "
                    f"{node.id}'s {total} {UNITS[i]} x {SETTINGS[i]}={float(self.ratios[i])})",
                    field=prefix + field, reason=Reason.BEYOND_ANY_NODE, maximum=most,
                )  # fmt: skip

    def _fill(self, usage: dict[str, NodeUsage], demand: Demand, count: int) -> int:
        """Place up to `count` VMs of `demand` (no PCI devices) in `usage` by counting how
        many fit on each node it may go to (the filters of choose_node); returns how many."""
        placed = 0
        want = (demand.cpu, demand.ram_mb, demand.disk_gb)
        for node in list(usage.values()):
            if placed >= count:
                break
            if (demand.node_id is not None and node.id != demand.node_id) or node.id in demand.exclude or not node.online or node.cordoned:
                continue
            if demand.network_types and not demand.network_types <= node.network_types:
                continue
            if demand.cdrom and not node.cdrom:
                continue
            free = [lim - used for lim, used in zip(self.policy.limits(node), (node.cpu_used, node.ram_mb_used, node.disk_gb_used))]
            fits = min((f // w if w > 0 else (count if f >= 0 else 0)) for f, w in zip(free, want))
            take = min(max(0, fits), count - placed)
            if take:
                usage[node.id] = _with_claim(node, demand.cpu * take, demand.ram_mb * take, demand.disk_gb * take)
                placed += take
        return placed

    async def claim_on(self, conn: AsyncConnection, node_id: str, cpu: int, ram_mb: int, disk_gb: int) -> None:
        """Claim more on a VM's own node (a resize); raises NoCapacity naming what is short."""
        if not await node_q.claim(conn, node_id, cpu, ram_mb, disk_gb, self.ratios, clock.now(), new_vm=False):
            self.invalidate()
            raise NoCapacity(f"node {node_id} does not have {cpu} more vCPUs, {ram_mb} MB RAM and {disk_gb} GB disk free")
        self._adjust(node_id, cpu, ram_mb, disk_gb)

    async def release(self, conn: AsyncConnection, node_id: str, cpu: int, ram_mb: int, disk_gb: int) -> None:
        await node_q.release(conn, node_id, cpu, ram_mb, disk_gb, clock.now())
        self._adjust(node_id, -cpu, -ram_mb, -disk_gb)
