"""The `qemu` driver: one detached `qemu-system-x86_64` per VM, driven over QMP, with
qemu-guest-agent for exec and a serial console on a socket and a log file.

A VM is its directory `state_dir/vms/<vm_id>/` (see `layout`). Its power state is read from
the host, not remembered: a live QEMU whose command line names the directory means running;
`run.json` without such a process means it died while nobody asked (crashed) unless the
`stopping` marker says the driver was stopping it. So VMs outlive the driver, and a new
driver on the same state_dir re-attaches to them.

`QemuDriver` is the contract's face; the work is done by its parts, which share the node's
VMs and their locks (`machines.Machines`):

    power       QEMU processes: start, stop, power button, reset, re-attach
    disks       defining a VM's disk, resizing, reverting, restoring; template images
    snapshots   point-in-time copies: snapshots and the exports backups are made from
    migration   live migration, both sides
    network     bridges, taps, firewalls, forwarded ports; alias addresses in the guest
    vfio        host PCI devices given to VMs
    guest       exec, serial console, stats
    display     the graphical console (VNC on a unix socket) and screenshots
    readiness   when a guest is ready after a boot; the SSH host keys it printed
"""

import asyncio
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from ... import pci, procfs
from ...domain import BootSetup, Resources, VmSpec
from ...domain.network import Firewall, Nic
from ...errors import DriverError
from ...ids import looks_like_id
from ...net import host as nethost
from ..base import (
    Capabilities,
    ExecResult,
    GuestState,
    HypervisorDriver,
    ImageInfo,
    MigrationTarget,
    NodeInfo,
    Progress,
    VmRuntime,
    VmStats,
)
from .disks import Disks
from .display import Display
from .guest import Guest
from .layout import GIB, VmPaths, load_config, vm_paths
from .machines import Machines, QemuHost, QemuVm
from .media import Media
from .migration import Migration
from .network import Networking
from .power import Power
from .readiness import Readiness
from .snapshots import Snapshots
from .vfio import Vfio

log = logging.getLogger("vmplane.drivers.qemu")


class QemuDriver(HypervisorDriver):
    """Real VMs with QEMU on this host. See the module docstring for how state is kept."""

    def __init__(
        self,
        *,
        state_dir: Path,
        hostname: str,
        accel: str,
        cpu: int | None = None,
        ram_mb: int | None = None,
        disk_gb: int | None = None,
        qemu_binary: str = "qemu-system-x86_64",
        qemu_img: str = "qemu-img",
        forward_address: str = "127.0.0.1",
        sandbox: bool = True,
        start_timeout: float = 30.0,
        agent_timeout: float = 30.0,
        sysfs_root: Path = Path("/sys"),
        dev_root: Path = Path("/dev"),
        pci_allowlist: Sequence[str] = (),
        nat: bool = True,
        transit_pool: str = "100.64.0.0/10",
        migration_address: str = "127.0.0.1",
        max_image_bytes: int = 2048 * GIB,
    ) -> None:
        if accel not in ("kvm", "tcg"):
            raise ValueError(f"accel must be kvm or tcg, not {accel!r} (pick it with accel.pick_accel)")
        self.host = QemuHost(
            state_dir=Path(state_dir).resolve(), hostname=hostname, accel=accel, qemu_binary=qemu_binary,
            qemu_img=qemu_img, forward_address=forward_address, sandbox=sandbox, start_timeout=start_timeout,
            agent_timeout=agent_timeout, sysfs_root=Path(sysfs_root), dev_root=Path(dev_root),
            pci_allowlist=pci.Allowlist(pci_allowlist), migration_address=migration_address,
            max_image_bytes=max_image_bytes,
        )  # fmt: skip
        self.cpu = cpu
        self.ram_mb = ram_mb
        self.disk_gb = disk_gb
        self.net = nethost.NetworkHost(self.state_dir, nat=nat, transit_pool=transit_pool)
        """bridges, taps, dnsmasq and nftables of bridge networks (see vmplane.net.host)"""
        self.capabilities = Capabilities(
            kind="qemu", real_vms=True, live_resize_disk=True, console=True, display=True, exec=True, stats=True, disk_export=True,
            pci_passthrough=bool(self.host.pci_allowlist) and pci.iommu_available(self.host.sysfs_root),
            network_types=frozenset({"user", "bridge"} if self.net.available else {"user"}),
            firewall=True,  # forwarded ports of user-mode NICs; nftables on bridge NICs
            cdrom=True,
            live_migration=True,
        )  # fmt: skip
        self.machines = Machines(self.host)
        self.vfio = Vfio(self.host, self.machines, enabled=self.capabilities.pci_passthrough)
        self.network = Networking(self.host, self.machines, self.net)
        self.disks = Disks(self.host, self.machines)
        self.media = Media(self.machines)
        self.snapshots = Snapshots(self.host, self.machines, self.disks)
        self.power = Power(self.host, self.machines, self.disks, self.network, self.vfio)
        self.migration = Migration(self.host, self.machines, self.power, self.network)
        self.guest = Guest(self.host, self.machines)
        self.display = Display(self.machines)
        self.machines.on_guest_poweroff = self.power.finish_guest_poweroff
        self.readiness = Readiness(self.machines)
        self.machines.on_reset = self._after_reset

    def _after_reset(self, vm_id: str) -> None:
        """The guest reset (a reboot): a new boot to wait for; its alias addresses again."""
        self.readiness.reset(vm_id)
        self.network.after_reset(vm_id)

    @property
    def state_dir(self) -> Path:
        return self.host.state_dir

    @property
    def vms_dir(self) -> Path:
        return self.host.vms_dir

    @property
    def max_image_bytes(self) -> int:
        """the largest virtual size of an image taken from outside (`intake`)"""
        return self.host.max_image_bytes

    # -- lifecycle of the driver -----------------------------------------------------------

    async def open(self) -> None:
        await self.machines.release_connections()
        self.machines.vms.clear()
        self.vms_dir.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.vms_dir.iterdir()):
            if entry.name.startswith(".creating-"):  # a create interrupted by a crash
                shutil.rmtree(entry, ignore_errors=True)
                continue
            if not entry.is_dir() or not looks_like_id(entry.name):
                continue
            paths = VmPaths(entry)
            if not paths.config.exists():
                log.warning("%s has no vm.json: not a VM, left alone", entry)
                continue
            try:
                vm = QemuVm(load_config(paths), paths)
            except DriverError as exc:
                log.warning("skipping %s: %s", entry, exc.message)
                continue
            self.machines.vms[vm.id] = vm
            if self.machines.live_pid(vm) is not None:
                # a stop that a previous driver did not finish: the VM still runs
                vm.paths.stop_marker.unlink(missing_ok=True)
                self.machines.background(self.power.reattach(vm.id), f"reattach-{vm.id}")
        prefix = str(self.vms_dir) + os.sep
        for pid, argv in procfs.processes_mentioning(prefix):
            if not os.path.basename(argv[0]).startswith("qemu-system"):
                continue
            names = {a[len(prefix):].split(os.sep, 1)[0] for a in argv if a.startswith(prefix)}
            if not any(n in self.machines.vms for n in names):
                log.warning("QEMU process %d looks like a VM of %s but has no VM directory; not killing it", pid, self.vms_dir)
        await self.network.resume()

    async def close(self) -> None:
        await self.machines.cancel_background()
        await self.machines.release_connections()

    async def node_info(self) -> NodeInfo:
        cpu = self.cpu or os.cpu_count() or 1
        ram_mb = self.ram_mb or _mem_total_mb()
        if self.disk_gb is not None:
            disk_gb = self.disk_gb
        else:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            disk_gb = shutil.disk_usage(self.state_dir).free // GIB
        devices: tuple[pci.PciDevice, ...] = ()
        if self.capabilities.pci_passthrough:
            devices = tuple(await asyncio.to_thread(pci.offered, self.host.sysfs_root, self.host.pci_allowlist))
        return NodeInfo(
            hostname=self.host.hostname, cpu=cpu, ram_mb=ram_mb, disk_gb=max(1, disk_gb), labels={"accel": self.host.accel},
            pci_devices=devices,
        )  # fmt: skip

    # -- defining VMs ----------------------------------------------------------------------

    async def create_vm(self, spec: VmSpec) -> None:
        paths = vm_paths(self.state_dir, spec.id)
        async with self.machines.lock(spec.id):
            if paths.config.exists():
                if spec.id not in self.machines.vms:
                    self.machines.vms[spec.id] = QemuVm(load_config(paths), paths)
                return
            if paths.dir.exists():  # no vm.json: not a VM of ours (creates are atomic renames)
                raise DriverError(f"{paths.dir} exists but holds no VM", vm_id=spec.id)
            self.vms_dir.mkdir(parents=True, exist_ok=True)
            work = VmPaths(self.vms_dir / f".creating-{spec.id}-{uuid.uuid4().hex[:8]}")
            try:
                work.dir.mkdir()
                if spec.resources.cpu < 1 or spec.resources.ram_mb < 16 or spec.resources.disk_gb < 1:
                    raise DriverError(f"resources {spec.resources.to_wire()} are too small", vm_id=spec.id)
                self.network.check(spec.id, spec.nics)
                await self.vfio.check(spec.id, spec.pci_devices)
                config = await self.disks.define(spec, work)
                os.rename(work.dir, paths.dir)
            except BaseException:
                shutil.rmtree(work.dir, ignore_errors=True)
                raise
            self.machines.vms[spec.id] = QemuVm(config, paths)

    async def delete_vm(self, vm_id: str) -> None:
        paths = vm_paths(self.state_dir, vm_id)
        async with self.machines.lock(vm_id):
            vm = self.machines.vms.get(vm_id)
            if vm is None and paths.dir.exists():
                vm = QemuVm(load_config(paths), paths) if paths.config.exists() else None
            if vm is not None:
                await self.power.stop_locked(vm)
            elif paths.dir.exists():  # a directory without vm.json: kill what runs from it
                for pid, _argv in procfs.processes_mentioning(str(paths.dir) + os.sep):
                    procfs.kill(pid)
            if paths.dir.exists():
                await self.vfio.give_back(paths)  # QEMU is gone: the devices are free
                await asyncio.to_thread(shutil.rmtree, paths.dir)
            self.machines.vms.pop(vm_id, None)
            if vm is not None:
                await self.network.release(vm.config)
        self.machines.drop_lock(vm_id)
        self.display.forget(vm_id)

    async def resize_vm(self, vm_id: str, resources: Resources) -> None:
        await self.disks.resize(vm_id, resources)

    async def set_boot(self, vm_id: str, boot: BootSetup) -> None:
        await self.media.set_boot(vm_id, boot)

    # -- state -----------------------------------------------------------------------------

    def host_process(self, vm_id: str) -> tuple[int | None, str | None]:
        """The VM's QEMU process id (None when it is not running) and its serial console's
        unix socket on this host (None for a VM not defined here). Reads files only."""
        if not looks_like_id(vm_id):
            return None, None
        vm = self.machines.vms.get(vm_id)
        if vm is None:
            return None, None
        return self.machines.live_pid(vm), str(vm.paths.serial)

    def forward_host(self) -> str:
        return self.host.forward_address or "127.0.0.1"

    async def get_vm(self, vm_id: str) -> VmRuntime | None:
        if not looks_like_id(vm_id):
            return None
        vm = self.machines.vms.get(vm_id)
        if vm is None:
            paths = vm_paths(self.state_dir, vm_id)
            if not paths.config.exists():
                return None
            try:
                vm = self.machines.vms.setdefault(vm_id, QemuVm(load_config(paths), paths))
            except DriverError:
                return None
        return self.machines.runtime(vm)

    async def list_vms(self) -> list[VmRuntime]:
        return [self.machines.runtime(vm) for vm in list(self.machines.vms.values())]

    # -- power -----------------------------------------------------------------------------

    async def start_vm(self, vm_id: str) -> None:
        await self.power.start(vm_id)

    async def stop_vm(self, vm_id: str) -> None:
        await self.power.stop(vm_id)

    async def shutdown_vm(self, vm_id: str, timeout: float) -> bool:
        return await self.power.shutdown(vm_id, timeout)

    async def reboot_vm(self, vm_id: str) -> None:
        self.readiness.expect_reset(vm_id)  # the guest's own reboot takes a while: not ready from now on
        await self.power.reboot(vm_id)

    async def power_cycle_vm(self, vm_id: str) -> None:
        self.readiness.expect_reset(vm_id)
        await self.power.power_cycle(vm_id)

    # -- in the guest ----------------------------------------------------------------------

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        return await self.guest.exec(vm_id, argv, timeout, max_output)

    async def guest_state(self, vm_id: str, wait: float = 0.0) -> GuestState:
        return await self.readiness.state(vm_id, wait)

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.guest.open_console(vm_id)

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        return await self.guest.console_log(vm_id, max_bytes)

    async def stats_vm(self, vm_id: str) -> VmStats:
        return await self.guest.stats(vm_id)

    async def open_vnc(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.display.open_vnc(vm_id)

    async def screenshot(self, vm_id: str, max_bytes: int) -> bytes:
        return await self.display.screenshot(vm_id, max_bytes)

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        await self.network.set_network(vm_id, nics, firewall)

    async def move_ports(self, vm_id: str, moves: Mapping[tuple[str, int], int]) -> None:
        await self.network.move_ports(vm_id, moves)

    # -- disks, snapshots, images ----------------------------------------------------------

    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        return await self.snapshots.take(vm_id, snapshot_id)

    async def revert_vm(self, vm_id: str, snapshot_image: str) -> None:
        await self.disks.revert(vm_id, snapshot_image)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self.snapshots.delete(snapshot_id)

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        return await self.snapshots.export(vm_id, dest)

    async def import_disk(self, vm_id: str, source: Path) -> None:
        await self.disks.import_disk(vm_id, source)

    async def import_image(self, template_id: str, source: Path, progress: Progress) -> ImageInfo:
        return await self.disks.import_image(template_id, source, progress)

    async def delete_image(self, template_id: str) -> None:
        await self.disks.delete_image(template_id)

    # -- live migration --------------------------------------------------------------------

    async def migrate_prepare(self, spec: VmSpec) -> MigrationTarget:
        if spec.pci_devices:
            raise DriverError("VMs with host PCI devices cannot migrate", vm_id=spec.id)
        await self.create_vm(spec)
        try:
            return await self.migration.listen(spec.id)
        except BaseException:
            await self.delete_vm(spec.id)
            raise

    async def migrate_send(self, vm_id: str, target: MigrationTarget, progress: Progress) -> None:
        await self.migration.send(vm_id, target, progress)

    async def migrate_finish(self, vm_id: str) -> None:
        await self.migration.finish(vm_id)

    async def migrate_cancel(self, vm_id: str) -> None:
        await self.migration.cancel(vm_id)


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0
