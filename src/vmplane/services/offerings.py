"""Instance types and regions: what an operator sells, and where there is room for it now.

An instance type is a fixed shape (vCPUs, GiB of RAM, GB of disk) with a price, optionally
with GPUs: host PCI devices of one model passed through. A region is a set of nodes: those
whose `region` label names it (nodes without the label belong to the first region). A node's
host name for users is its `host_id` label, else its id.

Operators describe both in `<data dir>/offerings.toml` (see docs/bluelobster.md); without
that file the defaults below apply. Where there is room is computed from the nodes' real
capacity by the same placement function creates use, so "available" means a create would be
placed now (the claim made by the create still decides).
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from ..domain import NodeStatus
from ..errors import InvalidRequest, NoCapacity, NotFound
from ..pci import PciDevice
from ..placement import Demand, choose_node
from ..store import networks as net_q
from ..store import nodes as node_q
from .capacity import usage_of

if TYPE_CHECKING:
    from ..store import Store
    from .capacity import Capacity


@dataclass(frozen=True, slots=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: int
    storage_gib: int
    price_cents_per_hour: int
    description: str = "CPU Only Instance"
    gpus: int = 0
    gpu_model: str | None = None
    """the GPU's name for users (A4000)"""
    gpu_pci_model: str | None = None
    """the PCI vendor:device id of that GPU (10de:24b0): what passthrough asks a node for"""
    gpu_description: str = "N/A - CPU Only"

    @property
    def pci(self) -> tuple[str, ...]:
        return (self.gpu_pci_model,) * self.gpus if self.gpu_pci_model and self.gpus else ()

    def demand(self, node_id: str | None = None) -> Demand:
        return Demand(cpu=self.vcpus, ram_mb=self.memory_gib * 1024, disk_gb=self.storage_gib, node_id=node_id, pci=self.pci)


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    description: str = ""
    city: str = ""
    state: str = ""
    country: str = ""


DEFAULT_TYPES = (
    InstanceType("v1_cpu_small", 2, 8, 80, 3),
    InstanceType("v1_cpu_medium", 4, 16, 250, 6),
    InstanceType("v1_cpu_large", 8, 32, 500, 12),
    InstanceType("gpu_1x_a4000", 8, 32, 250, 45, "Single GPU Instance", 1, "A4000", "10de:24b0", "NVIDIA RTX A4000 (16GB VRAM)"),
    InstanceType("gpu_1x_a5000", 8, 32, 250, 55, "Single GPU Instance", 1, "A5000", "10de:2231", "NVIDIA RTX A5000 (24GB VRAM)"),
    InstanceType("gpu_2x_a5000", 16, 64, 500, 110, "Multi GPU Instance", 2, "A5000", "10de:2231", "2x NVIDIA RTX A5000 (24GB VRAM)"),
)
DEFAULT_REGIONS = (Region("local", "this vmplane installation"),)


@dataclass(frozen=True, slots=True)
class Catalog:
    types: tuple[InstanceType, ...] = DEFAULT_TYPES
    regions: tuple[Region, ...] = DEFAULT_REGIONS
    by_name: dict[str, InstanceType] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_name.update({t.name: t for t in self.types})


def load_catalog(path: Path) -> Catalog:
    """The operator's catalogue from a TOML file (`[[instance_types]]`, `[[regions]]`); what
    the file leaves out keeps its default. A malformed file is refused (ValueError)."""
    if not path.exists():
        return Catalog()
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"instance_types", "regions"}
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}")
    try:
        types = tuple(InstanceType(**t) for t in data["instance_types"]) if "instance_types" in data else DEFAULT_TYPES
        regions = tuple(Region(**r) for r in data["regions"]) if "regions" in data else DEFAULT_REGIONS
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not regions:
        raise ValueError(f"{path}: name at least one region")
    for t in types:
        if min(t.vcpus, t.memory_gib, t.storage_gib) < 1 or t.gpus < 0 or (t.gpus and not t.gpu_pci_model):
            raise ValueError(f"{path}: instance type {t.name!r} needs positive sizes, and gpu_pci_model when it has GPUs")
    return Catalog(types, regions)


class Offerings:
    """The catalogue, and which nodes (hosts, regions) have room for what."""

    def __init__(self, *, store: Store, capacity: Capacity, data_dir: Path, catalog: Catalog | None = None) -> None:
        self.store = store
        self.capacity = capacity
        self.catalog = catalog if catalog is not None else load_catalog(data_dir / "offerings.toml")

    def instance_type(self, name: str) -> InstanceType:
        try:
            return self.catalog.by_name[name]
        except KeyError:
            raise InvalidRequest(
                f"instance type {name!r} does not exist; known: {', '.join(self.catalog.by_name)}", field="instance_type"
            ) from None

    def region_named(self, name: str) -> Region:
        for r in self.catalog.regions:
            if r.name == name:
                return r
        raise InvalidRequest(f"region {name!r} does not exist; known: {', '.join(r.name for r in self.catalog.regions)}", field="region")

    def region_of(self, node: Row[Any] | None) -> str | None:
        """The region a node belongs to (its `region` label, else the first region)."""
        if node is None:
            return None
        return (node.labels or {}).get("region") or self.catalog.regions[0].name

    @staticmethod
    def host_of(node: Row[Any] | None) -> str | None:
        """The name users know a node by: its `host_id` label, else its id."""
        if node is None:
            return None
        host: str = (node.labels or {}).get("host_id") or node.id
        return host

    async def nodes(self) -> Sequence[Row[Any]]:
        async with self.store.read() as conn:
            return await node_q.list_nodes(conn)

    async def node_of_host(self, host: str) -> Row[Any]:
        for n in await self.nodes():
            if self.host_of(n) == host:
                return n
        raise NotFound(f"host {host!r} does not exist", field="host")

    async def _usage(self) -> tuple[Sequence[Row[Any]], dict[str, Any]]:
        async with self.store.read() as conn:
            rows = await node_q.list_nodes(conn)
            taken = {(a.node_id, a.address) for a in await net_q.assigned_devices(conn)}
        return rows, {r.id: usage_of(r, taken) for r in rows}

    def _fits(self, demand: Demand, usage: list[Any]) -> Any:
        try:
            return choose_node(demand, usage, self.capacity.policy)
        except (NoCapacity, NotFound):
            return None

    async def available(self) -> list[tuple[InstanceType, list[Region]]]:
        """Every instance type with the regions where a node has room for it right now."""
        rows, usage = await self._usage()
        out = []
        for t in self.catalog.types:
            regions = []
            for region in self.catalog.regions:
                members = [usage[r.id] for r in rows if self.region_of(r) == region.name and r.status == NodeStatus.ONLINE.value]
                if members and self._fits(t.demand(), members) is not None:
                    regions.append(region)
            out.append((t, regions))
        return out

    async def place(self, demand: Demand, region: str) -> str:
        """The node of `region` a VM of `demand` should go to now (placement's choice among
        the region's nodes); NoCapacity when none has room."""
        self.region_named(region)
        rows, usage = await self._usage()
        members = [usage[r.id] for r in rows if self.region_of(r) == region]
        if not members:
            raise NoCapacity(f"region {region} has no nodes")
        return choose_node(demand, members, self.capacity.policy).id

    def gpu_model_on(self, node: Row[Any]) -> str | None:
        """The PCI model of the catalogue's GPUs that `node` offers (the first one it has)."""
        offered = {PciDevice.from_wire(d).model for d in node.pci_devices or ()}
        for t in self.catalog.types:
            if t.gpu_pci_model and t.gpu_pci_model in offered:
                return t.gpu_pci_model
        return None
