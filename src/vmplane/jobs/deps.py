"""What job handlers work with: the typed collaborators the composition root (runtime.py)
hands the engine when it starts, so a handler names exactly what it uses (`ctx.deps.store`,
`ctx.deps.capacity`, ...) instead of reaching through a locator.

Handlers run tasks that services queued, and a few call back into services (claim capacity,
record a VM an import brings, prepare SSH on a new VM). Those are named here as narrow
Protocols, each with only the calls handlers make, so the jobs layer states what it needs of
the layer above instead of importing it; the services satisfy them. The services exist
before the engine runs a task: the engine gets these once it starts (`JobEngine.start`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Row
    from sqlalchemy.ext.asyncio import AsyncConnection

    from ..auth import Principal
    from ..backupstore import BackupStore
    from ..config import Settings
    from ..domain import ImportRequest, NewVm, Vm
    from ..domain.network import Firewall, Nic
    from ..domain.vsphere import BytesProgress, Connection, ExportedDisk, VsphereVmInfo
    from ..drivers.base import HypervisorDriver
    from ..drivers.registry import NodeRegistry
    from ..outbound import Outbound
    from ..placement import Demand
    from ..store import Store


class NodeHome(Protocol):
    """Which nodes this process serves (replicas.Replicas)."""

    home: str
    """the identity of this process's data dir (replicas sharing one data dir share it)"""

    def runs_here(self, node_id: str) -> bool: ...


class Claims(Protocol):
    """Node capacity claimed and released inside the caller's transaction (services.capacity)."""

    async def place_and_claim(self, conn: AsyncConnection, demand: Demand, vm_id: str | None = None) -> str: ...

    async def claim_on(self, conn: AsyncConnection, node_id: str, cpu: int, ram_mb: int, disk_gb: int) -> None: ...

    async def release(self, conn: AsyncConnection, node_id: str, cpu: int, ram_mb: int, disk_gb: int) -> None: ...


class Metering(Protocol):
    """Billing spans of a VM (services.billing)."""

    async def released(self, conn: AsyncConnection, vm_id: str) -> None: ...

    async def reshaped(self, conn: AsyncConnection, vm: dict[str, Any]) -> None: ...


class VmNetworking(Protocol):
    """A VM's NICs and firewall as its driver needs them (services.networks)."""

    async def nics(self, conn: AsyncConnection, vm: Vm) -> tuple[Nic, ...]: ...

    async def firewall_of(self, conn: AsyncConnection, vm_id: str) -> Firewall: ...


class GuestAccess(Protocol):
    """SSH access set up on a VM just defined, forwarded ports kept usable at each start (services.guest)."""

    async def prepare_ssh(self, vm_id: str, driver: HypervisorDriver) -> str | None: ...

    async def ensure_ports(self, vm_id: str, driver: HypervisorDriver) -> list[str]: ...


class ImportSource(Protocol):
    """An import's request, sealed secrets and allowed local files (services.imports)."""

    def request_of(self, row: Row[Any]) -> ImportRequest: ...

    def local_file(self, path: str, where: str) -> Path: ...

    def secrets_of(self, payload: dict[str, Any]) -> dict[str, Any]: ...


class Vsphere(Protocol):
    """A vCenter's VM read, tidied and exported (services.vsphere)."""

    async def connection(
        self, who: Principal, *, profile: str | None = None, url: str | None = None, username: str | None = None,
        password: str | None = None, insecure: bool | None = None,
    ) -> Connection: ...  # fmt: skip

    def unseal(self, token: str) -> Connection: ...

    async def vm_info(self, c: Connection, vm_path: str) -> VsphereVmInfo: ...

    async def remove_cdroms(self, c: Connection, vm_path: str) -> int: ...

    async def export_disks(
        self, c: Connection, vm_path: str, dest: Path, progress: BytesProgress, method: str = "auto"
    ) -> tuple[VsphereVmInfo, list[ExportedDisk]]: ...


class VmRecords(Protocol):
    """Recording a VM that an import defines itself (services.vms)."""

    async def record(self, conn: AsyncConnection, spec: NewVm, who: Principal) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HandlerDeps:
    store: Store
    settings: Settings
    registry: NodeRegistry
    """the drivers of the nodes this process serves"""
    home: NodeHome
    capacity: Claims
    billing: Metering
    networks: VmNetworking
    guest: GuestAccess
    imports: ImportSource
    vsphere: Vsphere
    vms: VmRecords
    outbound: Outbound
    backup_store: BackupStore
    data_dir: Path
    images_dir: Path
