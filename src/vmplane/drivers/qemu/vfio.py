"""Host PCI devices given to qemu VMs (VFIO passthrough), for the qemu driver.

A VM's devices are checked when it is defined and again at each start, moved to vfio-pci
just before its QEMU starts, and given back to their host drivers when it is deleted. The
devices the driver moved (and only those: devices with vfio-pci before, e.g. by
`vfio-pci.ids=`, stay there) are recorded in the VM's `pci.json`, so a retry after a crash
knows what to give back.
"""

import asyncio
import json
import logging
from collections.abc import Sequence

from ... import pci
from ...errors import DriverError
from .layout import VmPaths, write_json_atomic
from .machines import Machines, QemuHost, QemuVm

log = logging.getLogger("vmplane.drivers.qemu")


class Vfio:
    """PCI passthrough of one node; `enabled` is the driver's `capabilities.pci_passthrough`."""

    def __init__(self, host: QemuHost, machines: Machines, enabled: bool) -> None:
        self.host = host
        self.machines = machines
        self.enabled = enabled

    async def check(self, vm_id: str, addresses: Sequence[str]) -> list[pci.PciDevice]:
        """The devices a VM asks for, checked against the host: offered here (allowlist, IOMMU,
        whole groups, see pci.plan_passthrough) and given to no other VM of this node."""
        if not addresses:
            return []
        if not self.enabled:
            raise DriverError(
                f"{self.host.hostname} offers no PCI passthrough (no IOMMU, or an empty PCI allowlist)", vm_id=vm_id
            )
        devices = await asyncio.to_thread(pci.plan_passthrough, self.host.sysfs_root, addresses, self.host.pci_allowlist)
        wanted = {d.address for d in devices}
        for other in list(self.machines.vms.values()):
            taken = wanted & set(other.config.pci_devices) if other.id != vm_id else set()
            if taken:
                raise DriverError(f"PCI device {', '.join(sorted(taken))} is given to VM {other.id} already", vm_id=vm_id)
        return devices

    async def bind(self, vm: QemuVm) -> list[str]:
        """Before QEMU starts: move the VM's devices to vfio-pci and check what QEMU will open
        (/dev/vfio/<group>, the locked-memory limit). Returns the devices moved now, which a
        failed start gives back; on failure here, gives them back itself."""
        if not vm.config.pci_devices:
            return []
        devices = await self.check(vm.id, vm.config.pci_devices)
        pci.check_memlock(vm.config.resources.ram_mb << 20)
        moved: list[str] = []
        try:
            for d in devices:
                if await asyncio.to_thread(pci.bind_vfio, self.host.sysfs_root, d.address):
                    moved.append(d.address)
                    _write_bound(vm.paths, _read_bound(vm.paths) | {d.address})
            for group in sorted({d.iommu_group for d in devices if d.iommu_group is not None}):
                pci.check_vfio_group(group, self.host.dev_root)
        except BaseException:
            await self.unbind(vm.paths, moved, strict=False)
            raise
        return moved

    async def unbind(self, paths: VmPaths, addresses: Sequence[str], *, strict: bool) -> None:
        """Give `addresses` back to their host drivers. Not strict: failures are logged (a start
        that failed keeps its own error)."""
        for address in addresses:
            try:
                await asyncio.to_thread(pci.unbind_vfio, self.host.sysfs_root, address)
            except DriverError as exc:
                if strict:
                    raise
                log.error("giving PCI device %s back to the host failed: %s", address, exc.message)
                continue
            if paths.dir.exists():
                _write_bound(paths, _read_bound(paths) - {address})

    async def give_back(self, paths: VmPaths) -> None:
        """Give back every device the driver moved to vfio-pci for this VM (devices that were
        with vfio-pci before, e.g. by vfio-pci.ids=, stay there)."""
        bound = _read_bound(paths)
        if bound:
            await self.unbind(paths, sorted(bound), strict=True)


def _read_bound(paths: VmPaths) -> set[str]:
    """Addresses in the VM's pci.json (each checked: they become sysfs paths)."""
    try:
        data = json.loads(paths.pci_bound.read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        raise DriverError(f"{paths.pci_bound} is unreadable: {exc}", vm_id=paths.dir.name) from exc
    if not isinstance(data, dict) or not isinstance(data.get("bound"), list):
        raise DriverError(f"{paths.pci_bound} has no list of bound devices", vm_id=paths.dir.name)
    return {pci.check_address(a) for a in data["bound"]}


def _write_bound(paths: VmPaths, bound: set[str]) -> None:
    if bound:
        write_json_atomic(paths.pci_bound, {"bound": sorted(bound)})
    else:
        paths.pci_bound.unlink(missing_ok=True)
