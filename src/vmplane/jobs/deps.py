"""What job handlers work with: the typed collaborators the composition root (runtime.py)
hands the engine when it starts, so a handler names exactly what it uses (`ctx.deps.store`,
`ctx.deps.capacity`, ...) instead of reaching through a locator.

Handlers run tasks that services queued: the services exist before the engine runs a task,
and the engine only needs these once it starts (`JobEngine.start(deps)`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..backupstore import BackupStore
    from ..config import Settings
    from ..drivers.registry import NodeRegistry
    from ..outbound import Outbound
    from ..services.billing import Billing
    from ..services.capacity import Capacity
    from ..services.guest import GuestService
    from ..services.imports import ImportService
    from ..services.networks import NetworkService
    from ..services.vms import VmService
    from ..services.vsphere import VsphereService
    from ..store import Store


class NodeHome(Protocol):
    """Which nodes this process serves (replicas.Replicas)."""

    def runs_here(self, node_id: str) -> bool: ...


@dataclass(frozen=True)
class HandlerDeps:
    store: Store
    settings: Settings
    registry: NodeRegistry
    """the drivers of the nodes this process serves"""
    home: NodeHome
    capacity: Capacity
    billing: Billing
    networks: NetworkService
    """a VM's NICs and firewall as the driver needs them"""
    guest: GuestService
    """SSH access prepared on a new VM"""
    imports: ImportService
    """an import's request, sealed secrets and allowed local files"""
    vsphere: VsphereService
    vms: VmService
    """recording the VM an import brings"""
    outbound: Outbound
    backup_store: BackupStore
    data_dir: Path
    images_dir: Path
