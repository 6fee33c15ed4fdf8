"""The node registry: which driver serves which node, and building drivers from settings."""

import logging
import shutil
from pathlib import Path

from ..config import Settings
from ..errors import DriverError, NotFound
from .base import HypervisorDriver
from .qemu import QemuDriver
from .sim import SimDriver, SimFaults

log = logging.getLogger("vmplane.nodes")


class NodeRegistry:
    def __init__(self) -> None:
        self._drivers: dict[str, HypervisorDriver] = {}
        self.images_on: dict[str, dict[str, tuple[str, dict[str, str] | None]]] = {}
        """templates known to be usable on each node, with their image and boot files as the
        node sees them (a cache; drivers are idempotent)."""

    def add(self, node_id: str, driver: HypervisorDriver) -> None:
        self._drivers[node_id] = driver
        self.images_on[node_id] = {}

    def driver(self, node_id: str) -> HypervisorDriver:
        try:
            return self._drivers[node_id]
        except KeyError:
            raise NotFound(f"node {node_id} has no driver in this process") from None

    def items(self) -> list[tuple[str, HypervisorDriver]]:
        return list(self._drivers.items())

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._drivers

    async def open_all(self) -> None:
        for node_id, driver in self._drivers.items():
            try:
                await driver.open()
            except Exception as exc:
                raise DriverError(f"driver of node {node_id} failed to open: {exc}") from exc

    async def close_all(self) -> None:
        for driver in self._drivers.values():
            await driver.close()


def pick_driver_kind(settings: Settings) -> tuple[str, str]:
    """Which driver `--driver` means here, and why."""
    if settings.driver != "auto":
        return settings.driver, f"--driver {settings.driver}"
    if shutil.which("qemu-system-x86_64"):
        return "qemu", "qemu-system-x86_64 found"
    return "sim", "qemu-system-x86_64 not found: VMs are SIMULATED, nothing really boots"


def build_sim_nodes(settings: Settings, state_dir: Path | None) -> list[tuple[str, HypervisorDriver]]:
    faults = SimFaults(
        name_pattern=settings.sim_fail_pattern, fraction=settings.sim_fail_fraction, seed=settings.sim_fail_seed
    )
    ratios = (settings.cpu_overcommit, settings.ram_overcommit, settings.disk_overcommit)
    return [
        (
            f"node-{i}",
            SimDriver(
                hostname=f"node-{i}",
                cpu=settings.sim_node_cpu,
                ram_mb=settings.sim_node_ram_mb,
                disk_gb=settings.sim_node_disk_gb,
                latency=settings.sim_latency_ms / 1000,
                faults=faults,
                overcommit=ratios,
                state_dir=state_dir,
                sysfs_root=settings.sysfs_root if settings.pci_allowlist else None,
                pci_allowlist=tuple(settings.pci_allowlist),
                call_log=settings.sim_call_log,
            ),
        )
        for i in range(1, settings.sim_nodes + 1)
    ]


def build_qemu_driver(
    settings: Settings, state_dir: Path, hostname: str, accel: str, migration_address: str = "127.0.0.1"
) -> HypervisorDriver:
    """The qemu driver of this host, with the settings it takes (PCI passthrough among them);
    live migrations into it listen on `migration_address`."""
    return QemuDriver(
        state_dir=state_dir,
        hostname=hostname,
        accel=accel,
        sysfs_root=settings.sysfs_root,
        pci_allowlist=tuple(settings.pci_allowlist),
        nat=settings.bridge_nat,
        transit_pool=settings.tenant_transit_pool,
        migration_address=migration_address,
        max_image_bytes=settings.max_image_virtual_gb << 30,
    )
