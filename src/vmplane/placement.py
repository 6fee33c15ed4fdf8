"""Placement: a pure function choosing a node for a VM from (demand, nodes, policy).

Filters first (node online and not cordoned, explicit node, capacity under the overcommit ratios), then a
weigher: `spread` puts the VM where the most capacity stays free, `pack` where the least
does. Ties go to the lowest node id, so the result is deterministic.
"""

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .errors import NoCapacity, NotFound
from .pci import PciDevice, group_closure


@dataclass(frozen=True, slots=True)
class NodeUsage:
    id: str
    online: bool
    cpu_total: int
    ram_mb_total: int
    disk_gb_total: int
    cpu_used: int
    ram_mb_used: int
    disk_gb_used: int
    devices: tuple[PciDevice, ...] = ()
    """free host PCI devices for passthrough (an IOMMU group is wholly free or wholly taken)"""
    network_types: frozenset[str] = frozenset({"user"})
    """network types the node can attach VMs to"""
    cordoned: bool = False
    """no new VMs go to a cordoned node (its own VMs may still grow)"""
    cdrom: bool = False
    """its VMs may have a CD-ROM with an ISO, a boot order and a firmware choice
    (`Capabilities.cdrom`)"""


@dataclass(frozen=True, slots=True)
class Demand:
    cpu: int
    ram_mb: int
    disk_gb: int
    node_id: str | None = None
    pci: tuple[str, ...] = ()
    """PCI devices wanted: addresses (0000:01:00.0) or models (10de:2204)"""
    network_types: frozenset[str] = frozenset()
    """network types of the VM's NICs"""
    exclude: frozenset[str] = frozenset()
    """nodes the VM must not go to (the node it moves away from)"""
    cdrom: bool = False
    """the VM has an ISO in its CD-ROM, a boot order or a firmware choice: a node with `cdrom`"""


SETTINGS = ("VMPLANE_CPU_OVERCOMMIT", "VMPLANE_RAM_OVERCOMMIT", "VMPLANE_DISK_OVERCOMMIT")
"""the settings behind the ratios, as an operator sets them (named in refusals)"""


@dataclass(frozen=True, slots=True)
class Policy:
    cpu_ratio: float = 1.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    strategy: Literal["spread", "pack"] = "spread"

    def limits(self, node: NodeUsage) -> tuple[int, int, int]:
        """The most a node may hand out of each resource."""
        return (
            int(node.cpu_total * self.cpu_ratio),
            int(node.ram_mb_total * self.ram_ratio),
            int(node.disk_gb_total * self.disk_ratio),
        )


def fits(demand: Demand, node: NodeUsage, policy: Policy) -> bool:
    cpu_max, ram_max, disk_max = policy.limits(node)
    return (
        node.cpu_used + demand.cpu <= cpu_max
        and node.ram_mb_used + demand.ram_mb <= ram_max
        and node.disk_gb_used + demand.disk_gb <= disk_max
    )


def pick_devices(wants: tuple[str, ...], free: tuple[PciDevice, ...]) -> list[str] | None:
    """Host addresses for the wanted devices (addresses first, then models), with the rest of
    their IOMMU groups (VFIO gives a VM whole groups); None if they are not all free."""
    left = list(free)
    out: list[str] = []
    for want in sorted(wants, key=lambda w: len(w) != 12):  # addresses (12 characters) first
        hit = next((d for d in left if d.address == want or d.model == want), None)
        if hit is None:
            return None
        left.remove(hit)
        out.append(hit.address)
    return group_closure(free, out)


def choose_node(demand: Demand, nodes: Iterable[NodeUsage], policy: Policy) -> NodeUsage:
    """The node the VM should go to; raises NoCapacity (or NotFound for a bad nodeId)."""
    best: NodeUsage | None = None
    best_score = 0.0
    seen = online = cordoned = 0
    short_cpu = short_ram = short_disk = short_pci = short_net = short_cdrom = 0
    roomiest: list[NodeUsage | None] = [None, None, None]  # of the nodes short of cpu, ram, disk: the one with most room
    room = [0, 0, 0]
    want_pci, want_net, want_cdrom = demand.pci, demand.network_types, demand.cdrom
    sign = -1.0 if policy.strategy == "pack" else 1.0
    rc, rr, rd = policy.cpu_ratio, policy.ram_ratio, policy.disk_ratio
    want_cpu, want_ram, want_disk, only = demand.cpu, demand.ram_mb, demand.disk_gb, demand.node_id
    exclude = demand.exclude
    for node in nodes:  # a hot loop (1,000s of nodes per VM): locals only, no calls
        if only is not None and node.id != only:
            continue
        seen += 1
        if exclude and node.id in exclude:
            continue
        if not node.online:
            continue
        if node.cordoned:
            cordoned += 1
            continue
        online += 1
        cpu_max = int(node.cpu_total * rc)
        ram_max = int(node.ram_mb_total * rr)
        cpu_free = cpu_max - node.cpu_used - want_cpu
        ram_free = ram_max - node.ram_mb_used - want_ram
        disk_free = int(node.disk_gb_total * rd) - node.disk_gb_used - want_disk
        if cpu_free < 0 or ram_free < 0 or disk_free < 0:
            short_cpu += cpu_free < 0
            short_ram += ram_free < 0
            short_disk += disk_free < 0
            # the node the refusal names for each resource: of those short of it, the one with most room
            if cpu_free < 0 and (roomiest[0] is None or cpu_free + want_cpu > room[0]):
                roomiest[0], room[0] = node, cpu_free + want_cpu
            if ram_free < 0 and (roomiest[1] is None or ram_free + want_ram > room[1]):
                roomiest[1], room[1] = node, ram_free + want_ram
            if disk_free < 0 and (roomiest[2] is None or disk_free + want_disk > room[2]):
                roomiest[2], room[2] = node, disk_free + want_disk
            continue
        if want_net and not want_net <= node.network_types:
            short_net += 1
            continue
        if want_cdrom and not node.cdrom:
            short_cdrom += 1
            continue
        if want_pci and pick_devices(want_pci, node.devices) is None:
            short_pci += 1
            continue
        score = sign * (ram_free / ram_max + cpu_free / cpu_max)
        if best is None or score > best_score or (score == best_score and node.id < best.id):
            best, best_score = node, score
    if best is not None:
        return best
    if demand.node_id is not None and seen == 0:
        raise NotFound(f"node {demand.node_id} does not exist", field="nodeId")
    where = f"node {demand.node_id}" if demand.node_id is not None else "no node"
    if online == 0:
        if demand.node_id is not None and demand.node_id in demand.exclude:
            raise NoCapacity(f"node {demand.node_id} cannot take this VM")
        if demand.exclude and demand.node_id is None:
            raise NoCapacity("no other node is online and not cordoned")
        if demand.node_id is not None:
            raise NoCapacity(f"node {demand.node_id} is {'cordoned' if cordoned else 'not online'}")
        raise NoCapacity("every online node is cordoned" if cordoned else "no node is online")
    if short_net == online:
        kinds = ", ".join(sorted(want_net))
        raise NoCapacity(f"{'node ' + demand.node_id if demand.node_id else 'no online node'} can attach VMs to {kinds} networks"
                         + (" (bridges need CAP_NET_ADMIN, ip, dnsmasq and nft on the node)" if "bridge" in want_net else ""))
    if short_cdrom and short_cdrom + short_net == online:
        raise NoCapacity(f"{'node ' + demand.node_id + ' cannot' if demand.node_id else 'no online node can'} give VMs a CD-ROM, a boot "
                         "order or a firmware choice (nodes of other hosts cannot: ISOs stay on the control plane's host)")
    wants = []
    if want_pci and short_pci and short_pci + short_cpu + short_ram + short_disk >= online:
        wants.append(f"the PCI devices {', '.join(want_pci)} free")
    why = []
    for i, (short, want) in enumerate(((short_cpu, f"{demand.cpu} free vCPU{'' if demand.cpu == 1 else 's'}"),
                                       (short_ram, f"{demand.ram_mb} MB of free RAM"), (short_disk, f"{demand.disk_gb} GB of free disk"))):  # fmt: skip
        example = roomiest[i]
        if short == online and example is not None:
            wants.append(want)
            why.append(claimed(example, policy, i, several=online > 1))
    if not wants:  # each node lacks something different
        wants.append(f"{demand.cpu} free vCPUs, {demand.ram_mb} MB of RAM and {demand.disk_gb} GB of disk at once")
    verb = "does not have" if demand.node_id is not None else "has"
    raise NoCapacity(
        f"{where} {verb} {' and '.join(wants)}" + (f" ({'; '.join(why)})" if why else ""),
        cpu=demand.cpu, ramMb=demand.ram_mb, diskGb=demand.disk_gb,
    )  # fmt: skip


class Ranking:
    """The node `choose_node` would pick for `demand` (one with no node, PCI devices or
    exclusions of its own), kept as usage changes instead of found by a pass over every node:
    a bulk create places thousands of alike VMs, and that pass was a quarter of its CPU.

    `update(node)` after each change of a node's usage (a claim, a release); `best()` is then
    the id of the node with the highest score, the lowest id among equals, as `choose_node`
    orders them, or None when none fits (`choose_node` then says why).
    """

    def __init__(self, demand: Demand, nodes: Iterable[NodeUsage], policy: Policy) -> None:
        assert demand.node_id is None and not demand.pci and not demand.exclude, demand
        self.demand, self.policy = demand, policy
        self._scores: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []  # (-score, id); an entry is stale once its score is not the node's
        for node in nodes:
            self.update(node)

    def update(self, node: NodeUsage) -> None:
        score = _score(self.demand, node, self.policy)
        if score is None:
            self._scores.pop(node.id, None)
        elif self._scores.get(node.id) != score:
            self._scores[node.id] = score
            heapq.heappush(self._heap, (-score, node.id))

    def best(self) -> str | None:
        while self._heap:
            neg, node_id = self._heap[0]
            if self._scores.get(node_id) == -neg:
                return node_id
            heapq.heappop(self._heap)
        return None


def _score(demand: Demand, node: NodeUsage, policy: Policy) -> float | None:
    """`node`'s score for `demand` in choose_node, None if choose_node would filter it out
    (the same arithmetic, kept beside it: tests/unit/test_placement.py compares the two)."""
    if not node.online or node.cordoned:
        return None
    cpu_max = int(node.cpu_total * policy.cpu_ratio)
    ram_max = int(node.ram_mb_total * policy.ram_ratio)
    cpu_free = cpu_max - node.cpu_used - demand.cpu
    ram_free = ram_max - node.ram_mb_used - demand.ram_mb
    disk_free = int(node.disk_gb_total * policy.disk_ratio) - node.disk_gb_used - demand.disk_gb
    if cpu_free < 0 or ram_free < 0 or disk_free < 0:
        return None
    if demand.network_types and not demand.network_types <= node.network_types:
        return None
    if demand.cdrom and not node.cdrom:
        return None
    sign = -1.0 if policy.strategy == "pack" else 1.0
    return sign * (ram_free / ram_max + cpu_free / cpu_max)


UNITS = ("vCPUs", "MB of RAM", "GB of disk")


def claimed(node: NodeUsage, policy: Policy, i: int, several: bool = False) -> str:
    """How much of resource `i` (0 cpu, 1 ram, 2 disk) `node` has handed out, and under which
    setting: `node-1: 8 of 8 vCPUs claimed at VMPLANE_CPU_OVERCOMMIT=4.0` (the least full
    node, so named, when `several` nodes are short)."""
    used = (node.cpu_used, node.ram_mb_used, node.disk_gb_used)[i]
    ratio = float((policy.cpu_ratio, policy.ram_ratio, policy.disk_ratio)[i])
    limit = policy.limits(node)[i]
    return f"{'the least full, ' if several else ''}{node.id}: {used} of {limit} {UNITS[i]} claimed at {SETTINGS[i]}={ratio}"
