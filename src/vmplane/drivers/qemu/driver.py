"""The `qemu` driver: one detached `qemu-system-x86_64` per VM, driven over QMP, with
qemu-guest-agent for exec and a serial console on a socket and a log file.

A VM is its directory `state_dir/vms/<vm_id>/` (see `layout`). Its power state is read from
the host, not remembered: a live QEMU whose command line names the directory means running;
`run.json` without such a process means it died while nobody asked (crashed) unless the
`stopping` marker says the driver was stopping it. So VMs outlive the driver, and a new
driver on the same state_dir re-attaches to them.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pycdlib.pycdlibexception

from ... import clock, pci, procfs
from ...domain import Resources, VmSpec
from ...errors import DriverError, InvalidState
from ...ids import looks_like_id
from ...net import host as nethost
from ...net import ipam
from ...net.nft import TapGuard
from ...net.model import Firewall, Nic, Network, tap_name
from ..base import (
    Capabilities,
    ExecResult,
    HypervisorDriver,
    ImageInfo,
    MigrationTarget,
    NodeInfo,
    PowerState,
    Progress,
    VmRuntime,
    VmStats,
)
from . import confine, images, intake
from .agent import AgentNotResponding, GuestAgent
from .cmdline import DISK_ID, active_forwards, build_argv, hostfwd_rule, user_netdev
from .images import SUPPORTED_FORMATS
from .layout import GIB, Forward, VmConfig, VmPaths, load_config, save_config, vm_paths, write_json_atomic
from .qmp import Monitor
from .seed import seed_files, write_seed_iso
from .unix import connect_unix

log = logging.getLogger("vmplane.drivers.qemu")

SERIAL_LOG_MAX = 8 << 20
"""serial.log is cut to its last SERIAL_LOG_KEEP bytes at start once it grows past this."""
SERIAL_LOG_KEEP = 1 << 20
POWER_BUTTON_REPEAT = 3.0
"""shutdown_vm presses the ACPI power button again this often (a guest still booting misses it)."""
FREEZE_TIMEOUT = 10.0
"""how long a guest-fsfreeze command may take"""
AGENT_RETRY_AFTER = 30.0
NET_CHECK_INTERVAL = 2.0
"""how often the driver checks that the dnsmasq of each bridge network still runs"""
ALIAS_AGENT_WAIT = 300.0
"""how long alias addresses wait for a guest agent (after a start or a change)"""
"""stats_vm does not wait for an agent that did not answer within this many seconds."""
MIGRATION_EXPORT = "migration-disk"
MIGRATION_BANDWIDTH = 1 << 30
"""bytes per second a live migration may use (QEMU's default, 128 MiB/s, is for shared links)"""
MIGRATION_DOWNTIME_MS = 300
"""the longest pause of the guest QEMU aims for when it switches over"""


@dataclass
class _Vm:
    config: VmConfig
    paths: VmPaths
    monitor: Monitor | None = None
    agent: GuestAgent | None = None
    transition: PowerState | None = None
    cpu_sample: tuple[int, float, float] | None = None
    """(pid, monotonic time, CPU seconds) at the previous stats_vm."""
    agent_down_until: float = 0.0
    incoming: bool = False
    """QEMU waits for the state of a live migration (target side, until migrate_finish)."""
    migrated: bool = False
    """the VM's state went to another node (source side): only delete_vm is left to do"""

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def marker(self) -> str:
        """What the command line of this VM's QEMU contains (and no other VM's does)."""
        return str(self.paths.dir) + os.sep


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
        self.state_dir = Path(state_dir).resolve()
        self.hostname = hostname
        self.accel = accel
        self.cpu = cpu
        self.ram_mb = ram_mb
        self.disk_gb = disk_gb
        self.qemu_binary = qemu_binary
        self.qemu_img = qemu_img
        self.forward_address = forward_address
        self.sandbox = sandbox
        self.start_timeout = start_timeout
        self.agent_timeout = agent_timeout
        self.sysfs_root = Path(sysfs_root)
        self.dev_root = Path(dev_root)
        self.pci_allowlist = pci.Allowlist(pci_allowlist)
        self.migration_address = migration_address
        """where live migrations into this node listen (QEMU's incoming stream, the NBD export)"""
        self.max_image_bytes = max_image_bytes
        """the largest virtual size of an image taken from outside (`intake`)"""
        self.net = nethost.NetworkHost(self.state_dir, nat=nat, transit_pool=transit_pool)
        """bridges, taps, dnsmasq and nftables of bridge networks (see vmplane.net.host)"""
        self.capabilities = Capabilities(
            kind="qemu", real_vms=True, live_resize_disk=True, console=True, exec=True, stats=True, disk_export=True,
            pci_passthrough=bool(self.pci_allowlist) and pci.iommu_available(self.sysfs_root),
            network_types=frozenset({"user", "bridge"} if self.net.available else {"user"}),
            firewall=True,  # forwarded ports of user-mode NICs; nftables on bridge NICs
            live_migration=True,
        )  # fmt: skip
        self._net_watch: asyncio.Task[None] | None = None
        self._vms: dict[str, _Vm] = {}
        self._base_infos: dict[tuple[str, int, int], images.DiskInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    def _runas(self) -> str | None:
        """The user QEMU drops to after start (confine.current()); None: it stays vmplane's.
        A confined QEMU opens nothing by path after its start (the data dir is 0700 root):
        files it needs later are handed to it as descriptors (`Monitor.pass_file`)."""
        user = confine.current()
        return user.name if user is not None else None

    # -- lifecycle of the driver -----------------------------------------------------------

    async def open(self) -> None:
        await self._release_connections()
        self._vms.clear()
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
                vm = _Vm(load_config(paths), paths)
            except DriverError as exc:
                log.warning("skipping %s: %s", entry, exc.message)
                continue
            self._vms[vm.id] = vm
            if self._live_pid(vm) is not None:
                # a stop that a previous driver did not finish: the VM still runs
                vm.paths.stop_marker.unlink(missing_ok=True)
                self._background(self._reattach(vm.id), f"reattach-{vm.id}")
        prefix = str(self.vms_dir) + os.sep
        for pid, argv in procfs.processes_mentioning(prefix):
            if not os.path.basename(argv[0]).startswith("qemu-system"):
                continue
            names = {a[len(prefix):].split(os.sep, 1)[0] for a in argv if a.startswith(prefix)}
            if not any(n in self._vms for n in names):
                log.warning("QEMU process %d looks like a VM of %s but has no VM directory; not killing it", pid, self.vms_dir)
        await self._network_resume()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._release_connections()

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
            devices = tuple(await asyncio.to_thread(pci.offered, self.sysfs_root, self.pci_allowlist))
        return NodeInfo(
            hostname=self.hostname, cpu=cpu, ram_mb=ram_mb, disk_gb=max(1, disk_gb), labels={"accel": self.accel},
            pci_devices=devices,
        )  # fmt: skip

    # -- defining VMs ----------------------------------------------------------------------

    async def create_vm(self, spec: VmSpec) -> None:
        paths = vm_paths(self.state_dir, spec.id)
        async with self._lock(spec.id):
            if paths.config.exists():
                if spec.id not in self._vms:
                    self._vms[spec.id] = _Vm(load_config(paths), paths)
                return
            if paths.dir.exists():  # no vm.json: not a VM of ours (creates are atomic renames)
                raise DriverError(f"{paths.dir} exists but holds no VM", vm_id=spec.id)
            self.vms_dir.mkdir(parents=True, exist_ok=True)
            work = VmPaths(self.vms_dir / f".creating-{spec.id}-{uuid.uuid4().hex[:8]}")
            try:
                work.dir.mkdir()
                config = await self._define(spec, work)
                os.rename(work.dir, paths.dir)
            except BaseException:
                shutil.rmtree(work.dir, ignore_errors=True)
                raise
            self._vms[spec.id] = _Vm(config, paths)

    async def _define(self, spec: VmSpec, work: VmPaths) -> VmConfig:
        """Write the disk, seed and vm.json of `spec` into `work.dir`."""
        if spec.resources.cpu < 1 or spec.resources.ram_mb < 16 or spec.resources.disk_gb < 1:
            raise DriverError(f"resources {spec.resources.to_wire()} are too small", vm_id=spec.id)
        self._check_nics(spec.id, spec.nics)
        await self._check_pci(spec.id, spec.pci_devices)
        base: Path | None = None
        if spec.template_image:
            base = Path(spec.template_image).absolute()
            if not base.is_file():
                raise DriverError(f"template image {base} does not exist on {self.hostname}", vm_id=spec.id)
        config = VmConfig.from_spec(spec, clock.now())
        if base is not None:
            config = dataclasses.replace(config, template_image=str(base))
        if config.boot is not None:
            for p in (config.boot.kernel, config.boot.initrd):
                if p and not Path(p).is_file():
                    raise DriverError(f"template boot file {p} does not exist on {self.hostname}", vm_id=spec.id)
        size = spec.resources.disk_gb * GIB
        if base is not None:
            info = await self._base_info(base, spec.id)
            if info.format not in SUPPORTED_FORMATS:
                raise DriverError(f"template image format {info.format} is not qcow2 or raw", vm_id=spec.id)
            await images.create_overlay(self.qemu_img, base, info.format, work.disk, max(size, info.virtual_size), vm_id=spec.id)
        elif spec.disk_image:
            await self._adopt_disk(Path(spec.disk_image), work.disk, size, spec.id)
        else:
            await images.create_blank(self.qemu_img, work.disk, size, vm_id=spec.id)
        files = seed_files(spec)
        try:
            await asyncio.to_thread(write_seed_iso, work.seed, files)
        except (pycdlib.pycdlibexception.PyCdlibException, OSError) as exc:
            raise DriverError(f"cannot write the cloud-init seed: {exc}", vm_id=spec.id) from exc
        save_config(work, config)
        return config

    async def _adopt_disk(self, image: Path, disk: Path, size: int, vm_id: str) -> None:
        """Make the qcow2 `image` (made by `intake.intake`) the VM's own disk at `disk`
        (moved, so it must not be used elsewhere), grown to `size` if smaller. Anything but a
        standalone qcow2 is refused."""
        if not image.is_file():
            raise DriverError(f"disk image {image} does not exist on {self.hostname}", vm_id=vm_id)
        info = await intake.check_standalone(self.qemu_img, image, max_virtual_size=self.max_image_bytes, vm_id=vm_id)
        try:
            os.replace(image, disk)
        except OSError:  # another file system: copy
            await asyncio.to_thread(shutil.copyfile, image, disk)
            image.unlink(missing_ok=True)
        if info.virtual_size < size:
            await images.grow(self.qemu_img, disk, size, vm_id=vm_id)

    async def _base_info(self, base: Path, vm_id: str) -> images.DiskInfo:
        """`qemu-img info` of a template's base image, asked once per version of the file
        (bases are read-only; a bulk create of N VMs would otherwise run it N times)."""
        st = base.stat()
        key = (str(base), st.st_mtime_ns, st.st_size)
        info = self._base_infos.get(key)
        if info is None:
            info = self._base_infos[key] = await images.disk_info(self.qemu_img, base, vm_id=vm_id)
        return info

    async def delete_vm(self, vm_id: str) -> None:
        paths = vm_paths(self.state_dir, vm_id)
        async with self._lock(vm_id):
            vm = self._vms.get(vm_id)
            if vm is None and paths.dir.exists():
                vm = _Vm(load_config(paths), paths) if paths.config.exists() else None
            if vm is not None:
                await self._stop_locked(vm)
            elif paths.dir.exists():  # a directory without vm.json: kill what runs from it
                for pid, _argv in procfs.processes_mentioning(str(paths.dir) + os.sep):
                    procfs.kill(pid)
            if paths.dir.exists():
                await self._give_back_pci(paths)  # QEMU is gone: the devices are free
                await asyncio.to_thread(shutil.rmtree, paths.dir)
            self._vms.pop(vm_id, None)
            if vm is not None:
                await self._release_networks(vm.config)
        self._locks.pop(vm_id, None)

    async def resize_vm(self, vm_id: str, resources: Resources) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            current = vm.config.resources
            if resources.disk_gb < current.disk_gb:
                raise DriverError(
                    f"disk of {vm_id} cannot shrink from {current.disk_gb} to {resources.disk_gb} GB", vm_id=vm_id
                )
            if resources.cpu < 1 or resources.ram_mb < 16:
                raise DriverError(f"resources {resources.to_wire()} are too small", vm_id=vm_id)
            target = resources.disk_gb * GIB
            info = await images.disk_info(self.qemu_img, vm.paths.disk, vm_id=vm_id)
            if target > info.virtual_size:
                if self._live_pid(vm) is not None:
                    await self._monitor(vm).execute("block_resize", {"device": DISK_ID, "size": target})
                else:
                    await images.grow(self.qemu_img, vm.paths.disk, target, vm_id=vm_id)
            if resources != current:
                vm.config = vm.config.with_resources(resources)
                save_config(vm.paths, vm.config)

    # -- snapshots -------------------------------------------------------------------------

    def _snapshot_path(self, snapshot_id: str) -> Path:
        if not looks_like_id(snapshot_id):
            raise DriverError(f"{snapshot_id!r} is not a snapshot id")
        return self.state_dir / "snapshots" / f"{snapshot_id}.qcow2"

    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        dest = self._snapshot_path(snapshot_id)
        async with self._lock(vm_id):
            if not dest.exists():
                vm = self._vm(vm_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_suffix(".part")
                part.unlink(missing_ok=True)
                try:
                    if self._live_pid(vm) is not None:
                        await self._backup_live(vm, part)
                    else:  # stopped: the overlay file is the disk, at rest
                        await asyncio.to_thread(shutil.copyfile, vm.paths.disk, part)
                    await images.check_qcow2(self.qemu_img, part, vm_id=vm_id)
                    await self._check_backing(vm, part)
                    os.replace(part, dest)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
        info = await images.disk_info(self.qemu_img, dest, vm_id=vm_id)
        return ImageInfo(path=dest, format="qcow2", virtual_size=info.virtual_size, actual_size=info.actual_size)

    async def _backup_live(self, vm: _Vm, target: Path) -> None:
        """A point-in-time copy of a running VM's disk (QMP blockdev-backup: copy-before-write, so
        guest writes during the copy do not leak into it). Only the top layer is copied; the
        copy keeps the same backing image."""
        info = await images.disk_info(self.qemu_img, vm.paths.disk, vm_id=vm.id)
        if info.backing_file:
            # the backing file is the one vmplane gave the disk, never a name read from it
            if Path(info.backing_file) not in self._backing_of(vm):
                raise DriverError(f"the disk of {vm.id} names a backing file vmplane did not give it", vm_id=vm.id)
            backing = await images.disk_info(self.qemu_img, Path(info.backing_file), vm_id=vm.id)
            await images.create_overlay(self.qemu_img, Path(info.backing_file), backing.format, target, info.virtual_size, vm_id=vm.id)
        else:
            await images.create_blank(self.qemu_img, target, info.virtual_size, vm_id=vm.id)
        job = f"snap-{uuid.uuid4().hex[:8]}"
        node = f"{job}-target"
        monitor = self._monitor(vm)
        # QEMU may no longer open files by path (confined, it runs as a user that cannot
        # enter the data dir): the copy's file is handed to it as a descriptor, and its
        # backing file stays closed (only the top layer is written; the header keeps the name)
        fd = os.open(target, os.O_RDWR)
        try:
            fdset = await monitor.pass_file(fd, f"{vm.id} snapshot")
        finally:
            os.close(fd)
        try:
            await monitor.execute(
                "blockdev-add",
                {"driver": "qcow2", "node-name": node, "backing": None, "discard": "unmap",
                 "file": {"driver": "file", "filename": f"/dev/fdset/{fdset}"}},  # fmt: skip
            )
            try:
                frozen = await self._freeze(vm)
                try:
                    # The copy is of the disk at the moment the job starts (copy-before-write), so
                    # the guest's file systems need to be frozen only that long.
                    await monitor.execute(
                        "blockdev-backup",
                        {"job-id": job, "device": DISK_ID, "target": node, "sync": "top" if info.backing_file else "full",
                         "auto-dismiss": False},  # fmt: skip
                    )
                finally:
                    if frozen:
                        await self._thaw(vm)
                try:
                    while True:
                        jobs = {j["id"]: j for j in await monitor.execute("query-jobs")}
                        state = jobs.get(job, {})
                        if state.get("status") == "concluded":
                            if state.get("error"):
                                raise DriverError(f"live snapshot failed: {state['error']}", vm_id=vm.id)
                            return
                        if not state:
                            raise DriverError("live snapshot job vanished", vm_id=vm.id)
                        await asyncio.sleep(0.05)
                finally:
                    with contextlib.suppress(Exception):
                        await monitor.execute("job-dismiss", {"id": job})
            finally:
                with contextlib.suppress(DriverError):
                    await monitor.execute("blockdev-del", {"node-name": node})
        finally:
            with contextlib.suppress(DriverError):
                await monitor.execute("remove-fd", {"fdset-id": fdset})

    async def _freeze(self, vm: _Vm) -> bool:
        """Freeze the guest's file systems through its agent, if it answers quickly. A guest
        without an agent gets a crash-consistent copy instead (as after a power cut)."""
        try:
            await self._agent(vm).execute("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT, ready_timeout=2.0)
            return True
        except DriverError as exc:
            log.warning("VM %s: no file system freeze for its snapshot (%s)", vm.id, exc.message)
            return False

    async def _thaw(self, vm: _Vm) -> None:
        try:
            await self._agent(vm).execute("guest-fsfreeze-thaw", timeout=FREEZE_TIMEOUT, ready_timeout=2.0)
        except DriverError as exc:  # the agent thaws by itself after its own timeout
            log.warning("VM %s: thawing its file systems failed: %s", vm.id, exc.message)

    async def revert_vm(self, vm_id: str, snapshot_image: str) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            if self._live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} must be stopped to revert", current="running", required="stopped")
            source = Path(snapshot_image)
            if not source.is_file():
                raise DriverError(f"snapshot image {source.name} is missing on {self.hostname}", vm_id=vm_id)
            part = vm.paths.disk.with_suffix(".revert")
            try:
                await asyncio.to_thread(shutil.copyfile, source, part)
                size = vm.config.resources.disk_gb * GIB
                if (await images.disk_info(self.qemu_img, part, vm_id=vm_id)).virtual_size < size:
                    await images.grow(self.qemu_img, part, size, vm_id=vm_id)
                os.replace(part, vm.paths.disk)
            finally:
                part.unlink(missing_ok=True)

    async def delete_snapshot(self, snapshot_id: str) -> None:
        self._snapshot_path(snapshot_id).unlink(missing_ok=True)

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        vm = self._vm(vm_id)
        if self._live_pid(vm) is not None:  # a point-in-time copy first, then flatten it
            temp_id = "snap-" + uuid.uuid4().hex[:12]
            info = await self.snapshot_vm(vm_id, temp_id)
            try:
                await images.to_raw(self.qemu_img, info.path, dest, await self._chain_of(vm), vm_id=vm_id)
            finally:
                await self.delete_snapshot(temp_id)
        else:
            async with self._lock(vm_id):
                await images.to_raw(self.qemu_img, vm.paths.disk, dest, await self._chain_of(vm), vm_id=vm_id)
        return dest.stat().st_size

    @staticmethod
    def _backing_of(vm: _Vm) -> tuple[Path, ...]:
        """The backing file vmplane gave the VM's disk (its template's image), if any."""
        return (Path(vm.config.template_image),) if vm.config.template_image else ()

    async def _check_backing(self, vm: _Vm, image: Path) -> None:
        """`image` (the VM's disk, or a copy of it) names as its backing file the one vmplane
        gave the disk, or none if it gave none. QEMU opens that name as root when the VM
        starts, and a guest's QEMU, which writes the disk, could have rewritten it."""
        named = (await images.disk_info(self.qemu_img, image, vm_id=vm.id)).backing_file
        if (Path(named) if named else None) != (Path(vm.config.template_image) if vm.config.template_image else None):
            raise DriverError(f"the disk of {vm.id} names a backing file vmplane did not give it ({named}); refused", vm_id=vm.id)

    async def _chain_of(self, vm: _Vm) -> tuple[Path, ...]:
        """The files that may back the VM's disk: its template's image and, for a clone of a
        snapshot, the image that snapshot (written by vmplane) is on."""
        chain = self._backing_of(vm)
        if chain and chain[0].parent == self.state_dir / "snapshots" and chain[0].is_file():
            below = (await images.disk_info(self.qemu_img, chain[0], vm_id=vm.id)).backing_file
            if below:
                chain += (Path(below),)
        return chain

    async def import_disk(self, vm_id: str, source: Path) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            if self._live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} must be stopped to restore its disk", current="running", required="stopped")
            size = vm.config.resources.disk_gb * GIB
            if source.stat().st_size > size:
                raise DriverError(f"the image ({source.stat().st_size} bytes) is larger than the VM's disk ({size} bytes)", vm_id=vm_id)
            part = vm.paths.disk.with_suffix(".import")
            try:
                base = Path(vm.config.template_image) if vm.config.template_image else None
                fmt = (await images.disk_info(self.qemu_img, base, vm_id=vm_id)).format if base else None
                await images.from_raw(self.qemu_img, source, part, base, fmt, vm_id=vm_id)
                if (await images.disk_info(self.qemu_img, part, vm_id=vm_id)).virtual_size < size:
                    await images.grow(self.qemu_img, part, size, vm_id=vm_id)
                os.replace(part, vm.paths.disk)
            finally:
                part.unlink(missing_ok=True)

    # -- live migration ----------------------------------------------------------------------
    # The target starts QEMU paused with -incoming and exports its (empty overlay) disk over
    # NBD; the source mirrors its disk into that export (drive-mirror: the top layer when both
    # sides have the template's base, all of it otherwise), then migrates RAM and devices; once
    # that completes (the source pauses) the mirror is completed (block-job-cancel on a ready
    # mirror leaves the target in sync), the target closes the export and resumes the guest.

    async def migrate_prepare(self, spec: VmSpec) -> MigrationTarget:
        if spec.pci_devices:
            raise DriverError("VMs with host PCI devices cannot migrate", vm_id=spec.id)
        await self.create_vm(spec)
        try:
            async with self._lock(spec.id):
                vm = self._vm(spec.id)
                if self._live_pid(vm) is not None:
                    raise InvalidState(f"VM {spec.id} already runs on {self.hostname}", current="running", required="stopped")
                await self._start_locked(vm, incoming=True)
                vm.incoming = True
                host = self.migration_address
                nbd_port, migrate_port = _free_port(host), _free_port(host)
                monitor = self._monitor(vm)
                node = next(b["inserted"]["node-name"] for b in await monitor.execute("query-block") if b.get("device") == DISK_ID)
                await monitor.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": host, "port": str(nbd_port)}}})
                await monitor.execute("block-export-add", {"type": "nbd", "id": MIGRATION_EXPORT, "node-name": node, "writable": True, "name": DISK_ID})
                await monitor.execute("migrate-incoming", {"uri": f"tcp:{_uri_host(host)}:{migrate_port}"})
        except BaseException:
            await self.delete_vm(spec.id)
            raise
        log.info("VM %s waits for its migration on %s:%d (disk on NBD %d)", spec.id, host, migrate_port, nbd_port)
        return MigrationTarget(host=host, migrate_port=migrate_port, nbd_port=nbd_port, export=DISK_ID)

    async def migrate_send(self, vm_id: str, target: MigrationTarget, progress: Progress) -> None:
        async with self._lock(vm_id):
            vm = self._running(vm_id)
            if vm.config.pci_devices:
                raise DriverError("VMs with host PCI devices cannot migrate", vm_id=vm_id)
            monitor = self._monitor(vm)
            base = vm.config.template_image
            on_template = base is not None and not Path(base).is_relative_to(self.state_dir / "snapshots")
            job = f"mig-{uuid.uuid4().hex[:8]}"
            host = _uri_host(target.host)
            t0 = time.monotonic()
            await monitor.execute(
                "drive-mirror",
                {"job-id": job, "device": DISK_ID, "target": f"nbd://{host}:{int(target.nbd_port)}/{target.export}",
                 "sync": "top" if on_template else "full", "mode": "existing", "format": "raw"},  # fmt: skip
            )
            try:
                while True:  # the disk first: until the mirror is in sync (then it follows every write)
                    jobs = {j["device"]: j for j in await monitor.execute("query-block-jobs")}
                    j = jobs.get(job)
                    if j is None:
                        raise DriverError("the disk mirror to the target stopped", vm_id=vm_id)
                    if j.get("ready"):
                        break
                    if j.get("len"):
                        await progress(int(j["offset"]) * 40 // int(j["len"]), f"disk: {j['offset']} of {j['len']} bytes")
                    await asyncio.sleep(0.05)
                await progress(40, f"disk in sync after {time.monotonic() - t0:.1f} s; moving memory")
                await monitor.execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH, "downtime-limit": MIGRATION_DOWNTIME_MS})
                await monitor.execute("migrate", {"uri": f"tcp:{host}:{int(target.migrate_port)}"})
                while True:
                    m = await monitor.execute("query-migrate")
                    status = m.get("status")
                    if status == "completed":
                        break
                    if status in ("failed", "cancelled"):
                        raise DriverError(f"migration {status}: {m.get('error-desc', 'see QEMU log')}", vm_id=vm_id)
                    ram = m.get("ram") or {}
                    if ram.get("total"):
                        await progress(40 + min(50, int(ram.get("transferred", 0)) * 50 // int(ram["total"])), f"memory: {ram.get('transferred')} bytes sent")
                    await asyncio.sleep(0.05)
                await monitor.execute("block-job-cancel", {"device": job})  # a ready mirror: completes in sync
                while any(j["device"] == job for j in await monitor.execute("query-block-jobs")):
                    await asyncio.sleep(0.02)
            except BaseException:
                await self._abort_migration(vm, job)
                raise
            vm.migrated = True
            await progress(100, f"migrated in {time.monotonic() - t0:.2f} s (paused {m.get('downtime', '?')} ms)")
            log.info("VM %s migrated to %s (downtime %s ms, total %s ms)", vm_id, target.host, m.get("downtime"), m.get("total-time"))

    async def _abort_migration(self, vm: _Vm, job: str | None) -> None:
        """Stop an outgoing migration and mirror; the guest runs on here."""
        monitor = self._monitor(vm)
        with contextlib.suppress(DriverError):
            if (await monitor.execute("query-migrate")).get("status") in ("active", "setup", "pre-switchover", "device"):
                await monitor.execute("migrate_cancel")
        with contextlib.suppress(DriverError):
            for j in await monitor.execute("query-block-jobs"):
                if j["device"] == job or (job is None and str(j["device"]).startswith("mig-")):
                    await monitor.execute("block-job-cancel", {"device": j["device"], "force": True})
        with contextlib.suppress(DriverError):
            if await monitor.status() in ("postmigrate", "paused", "finish-migrate"):
                await monitor.execute("cont")
        vm.migrated = False

    async def migrate_finish(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            if self._live_pid(vm) is None:
                raise DriverError(f"VM {vm_id} is not waiting for a migration here", vm_id=vm_id)
            monitor = self._monitor(vm)
            deadline = time.monotonic() + 30
            while (status := await monitor.status()) == "inmigrate":
                if time.monotonic() > deadline:
                    raise DriverError("the migrated state did not arrive", vm_id=vm_id)
                await asyncio.sleep(0.02)
            with contextlib.suppress(DriverError):
                await monitor.execute("block-export-del", {"id": MIGRATION_EXPORT})
            with contextlib.suppress(DriverError):
                await monitor.execute("nbd-server-stop")
            if status != "running":
                await monitor.execute("cont")
            vm.incoming = False
            run = json.loads(vm.paths.run.read_text())
            write_json_atomic(vm.paths.run, {**run, "migratedIn": clock.now()})
            if any(nic.aliases for nic in vm.config.nics):
                self._background(self._guest_addresses_later(vm.id, ()), f"aliases-{vm.id}")

    async def migrate_cancel(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            vm = self._vms.get(vm_id)
            if vm is None or self._live_pid(vm) is None:
                return
            await self._abort_migration(vm, None)

    # -- power -----------------------------------------------------------------------------

    async def start_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._start_locked(self._vm(vm_id))

    async def stop_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            await self._stop_locked(self._vm(vm_id))

    async def shutdown_vm(self, vm_id: str, timeout: float) -> bool:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            pid = self._live_pid(vm)
            if pid is None:
                crashed = self._runtime(vm).state == PowerState.CRASHED
                await self._cleanup(vm)
                return not crashed
            vm.paths.stop_marker.touch()
            vm.transition = PowerState.STOPPING
            try:
                graceful = await self._power_button(vm, pid, timeout)
            finally:
                vm.transition = None
            await self._stop_locked(vm)
            return graceful

    async def _power_button(self, vm: _Vm, pid: int, timeout: float) -> bool:
        """Press the ACPI power button (again every few seconds) until the guest is off or
        `timeout` passes. True if the guest powered off by itself."""
        monitor = self._monitor(vm)
        deadline = time.monotonic() + timeout
        next_press = next_poll = 0.0
        while True:
            now = time.monotonic()
            if not procfs.is_ours(pid, vm.marker) or monitor.guest_off:
                return True
            if now >= deadline:
                return False
            with contextlib.suppress(DriverError):
                if now >= next_press:
                    await monitor.execute("system_powerdown")
                    next_press = now + POWER_BUTTON_REPEAT
                if now >= next_poll:  # the SHUTDOWN event normally tells us first
                    if await monitor.status() == "shutdown":
                        return True
                    next_poll = now + 1.0
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    async def reboot_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            if self._live_pid(vm) is None or (vm.monitor is not None and vm.monitor.guest_off):
                state = self._runtime(vm).state
                raise InvalidState(f"VM {vm_id} is {state}, not running", current=state, required="running")
            try:  # the guest's own reboot, if its agent answers at once
                agent = self._agent(vm)
                await agent.wait_ready(1.0)
                await agent.execute("guest-shutdown", {"mode": "reboot"}, reply=False, ready_timeout=1.0)
                log.info("rebooting %s through its guest agent", vm_id)
            except DriverError:
                await self._monitor(vm).execute("system_reset")
                log.info("rebooting %s with system_reset (no guest agent)", vm_id)

    async def power_cycle_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            pid = self._live_pid(vm)
            if pid is not None and not (vm.monitor is not None and vm.monitor.guest_off):
                if self._started_with(vm) == vm.config.resources:
                    await self._monitor(vm).execute("system_reset")
                    return
            # stopped, crashed, powered off, or new CPU/RAM to apply: off and on again
            await self._stop_locked(vm)
            await self._start_locked(vm)

    async def _start_locked(self, vm: _Vm, incoming: bool = False) -> None:
        """Start QEMU; `incoming`: paused, waiting for a live migration's state (-incoming defer -S)."""
        if self._live_pid(vm) is not None:
            if vm.monitor is None or not vm.monitor.guest_off:
                return
            await self._stop_locked(vm)  # the guest powered itself off: QEMU waits paused
        await self._cleanup(vm)
        for path in (vm.config.template_image, *(() if vm.config.boot is None else (vm.config.boot.kernel, vm.config.boot.initrd))):
            if path and not Path(path).is_file():
                raise DriverError(f"{path} is missing on {self.hostname}; the VM cannot start", vm_id=vm.id)
        await self._check_backing(vm, vm.paths.disk)
        _trim_log(vm.paths.serial_log)
        argv = build_argv(
            vm.config, vm.paths, accel=self.accel, qemu_binary=self.qemu_binary,
            forward_address=self.forward_address, sandbox=self.sandbox, runas=self._runas(),
        )
        if incoming:
            argv += ["-incoming", "defer", "-S"]
        pci_moved = await self._bind_pci(vm)
        vm.transition = PowerState.STARTING
        pid: int | None = None
        try:
            net_state = await self._network_up(vm)
            try:
                pid = procfs.spawn(argv, cwd=vm.paths.dir, log=vm.paths.stderr_log)
            except OSError as exc:
                raise DriverError(f"cannot run {self.qemu_binary}: {exc.strerror}", vm_id=vm.id) from exc
            write_json_atomic(vm.paths.run, {
                "pid": pid,
                "startedAt": procfs.start_time(pid),
                "resources": vm.config.resources.to_wire(),
                "accel": self.accel,
                "argv": argv,
                **net_state,
            })
            await self._wait_for_qmp(vm, pid)
            status = await self._monitor(vm).status()
            if status != ("inmigrate" if incoming else "running"):
                raise DriverError(f"QEMU is {status!r} right after start", vm_id=vm.id)
            vm.cpu_sample = None
            if any(nic.aliases for nic in vm.config.nics):
                self._background(self._guest_addresses_later(vm.id, ()), f"aliases-{vm.id}")
        except BaseException as exc:
            if pid is not None:
                vm.paths.stop_marker.touch()
                procfs.kill(pid)
                await _wait_exit(pid, vm.marker, 5.0)
            error = self._stderr_tail(vm) if pid is not None else ""
            await self._cleanup(vm)
            await self._unbind_pci(vm.paths, pci_moved, strict=False)
            if isinstance(exc, DriverError) and error:
                raise DriverError(f"{exc.message}: {error}", **exc.details) from exc
            raise
        finally:
            vm.transition = None

    async def _wait_for_qmp(self, vm: _Vm, pid: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        monitor = self._monitor(vm)
        while True:
            if not procfs.is_ours(pid, vm.marker):
                raise DriverError("QEMU exited during start", vm_id=vm.id)
            if vm.paths.qmp.exists():
                try:
                    await monitor.connect(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                    return
                except DriverError:
                    pass
            if time.monotonic() > deadline:
                raise DriverError(f"QEMU did not answer on QMP within {self.start_timeout:g} s", vm_id=vm.id)
            await asyncio.sleep(0.02)

    async def _stop_locked(self, vm: _Vm) -> None:
        """Hard power-off; then no process, socket or pidfile is left."""
        pid = self._live_pid(vm)
        if pid is not None:
            vm.paths.stop_marker.touch()
            vm.transition = PowerState.STOPPING
            try:
                await self._monitor(vm).quit(timeout=3.0)
                if not await _wait_exit(pid, vm.marker, 5.0):
                    log.warning("QEMU %d of %s ignored quit; killing it", pid, vm.id)
                    procfs.kill(pid, signal.SIGKILL)
                    if not await _wait_exit(pid, vm.marker, 10.0):
                        raise DriverError(f"QEMU process {pid} does not exit", vm_id=vm.id)
            finally:
                vm.transition = None
        await self._cleanup(vm)

    async def _cleanup(self, vm: _Vm) -> None:
        """Forget the runtime of a VM with no process: connections, sockets, pidfile, markers."""
        for conn in (vm.monitor, vm.agent):
            if conn is not None:
                await conn.close()
        vm.monitor = vm.agent = None
        vm.cpu_sample = None
        vm.incoming = vm.migrated = False
        for path in vm.paths.runtime_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await self._network_down(vm)

    async def _reattach(self, vm_id: str) -> None:
        """Connect to a VM found running at open(); finish it if its guest powered off while
        no driver watched."""
        async with self._lock(vm_id):
            vm = self._vms.get(vm_id)
            if vm is None or self._live_pid(vm) is None:
                return
            try:
                await self._monitor(vm).status()  # notes a guest that is off
            except DriverError as exc:
                log.warning("re-attaching %s: %s", vm_id, exc.message)
                return
        await self._finish_guest_poweroff(vm_id)

    async def _finish_guest_poweroff(self, vm_id: str) -> None:
        """Stop the QEMU of a guest that powered itself off (it waits paused, -no-shutdown)."""
        async with self._lock(vm_id):
            vm = self._vms.get(vm_id)
            if vm is None or self._live_pid(vm) is None or vm.monitor is None or not vm.monitor.guest_off:
                return
            log.info("guest of %s powered off; stopping its QEMU", vm_id)
            await self._stop_locked(vm)

    # -- state -----------------------------------------------------------------------------

    def host_process(self, vm_id: str) -> tuple[int | None, str | None]:
        """The VM's QEMU process id (None when it is not running) and its serial console's
        unix socket on this host (None for a VM not defined here). Reads files only."""
        if not looks_like_id(vm_id):
            return None, None
        vm = self._vms.get(vm_id)
        if vm is None:
            return None, None
        return self._live_pid(vm), str(vm.paths.serial)

    async def get_vm(self, vm_id: str) -> VmRuntime | None:
        if not looks_like_id(vm_id):
            return None
        vm = self._vms.get(vm_id)
        if vm is None:
            paths = vm_paths(self.state_dir, vm_id)
            if not paths.config.exists():
                return None
            try:
                vm = self._vms.setdefault(vm_id, _Vm(load_config(paths), paths))
            except DriverError:
                return None
        return self._runtime(vm)

    async def list_vms(self) -> list[VmRuntime]:
        return [self._runtime(vm) for vm in list(self._vms.values())]

    def _runtime(self, vm: _Vm) -> VmRuntime:
        pid = self._live_pid(vm)
        if pid is not None:
            if vm.incoming or vm.migrated:
                return VmRuntime(vm_id=vm.id, state=PowerState.STARTING if vm.incoming else PowerState.STOPPING)
            state = vm.transition or (PowerState.STOPPING if vm.monitor is not None and vm.monitor.guest_off else PowerState.RUNNING)
            return VmRuntime(vm_id=vm.id, state=state, started_at=procfs.start_time(pid))
        if vm.transition is not None:
            return VmRuntime(vm_id=vm.id, state=vm.transition)
        if vm.paths.run.exists() and not vm.paths.stop_marker.exists():
            return VmRuntime(vm_id=vm.id, state=PowerState.CRASHED, error=self._exit_reason(vm, self._recorded_pid(vm)))
        return VmRuntime(vm_id=vm.id, state=PowerState.STOPPED)

    def _recorded_pid(self, vm: _Vm) -> int | None:
        """The pid QEMU wrote to its pidfile, else the one the driver recorded at start."""
        try:
            return int(vm.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            pass
        try:
            return int(json.loads(vm.paths.run.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _live_pid(self, vm: _Vm) -> int | None:
        pid = self._recorded_pid(vm)
        if pid is not None and procfs.is_ours(pid, vm.marker):
            return pid
        return None

    def _started_with(self, vm: _Vm) -> Resources | None:
        try:
            r = json.loads(vm.paths.run.read_text())["resources"]
            return Resources(int(r["cpu"]), int(r["ramMb"]), int(r["diskGb"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _exit_reason(self, vm: _Vm, pid: int | None) -> str:
        """Why QEMU ended: the tail of its stderr, else its exit status if we reaped it."""
        tail = self._stderr_tail(vm)
        if tail:
            return tail
        status = procfs.reap(pid) if pid is not None else None
        if status is not None and status < 0:
            return f"QEMU exited unexpectedly (killed by signal {-status})"
        if status is not None:
            return f"QEMU exited unexpectedly with status {status}"
        return "QEMU exited unexpectedly"

    def _stderr_tail(self, vm: _Vm) -> str:
        """The last lines QEMU wrote to its stderr in this run (its log is new at each start)."""
        try:
            with open(vm.paths.stderr_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2048))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " / ".join(lines[-3:])[-500:]

    # -- in the guest ----------------------------------------------------------------------

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        vm = self._running(vm_id)
        return await self._agent(vm).exec(list(argv), timeout, max_output, ready_timeout=self.agent_timeout)

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = self._running(vm_id)
        try:
            return await asyncio.open_unix_connection(sock=connect_unix(vm.paths.serial))
        except OSError as exc:
            raise DriverError("cannot connect to the serial console", vm_id=vm_id, reason=exc.strerror) from exc

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        vm = self._vm(vm_id)
        try:
            with open(vm.paths.serial_log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    async def stats_vm(self, vm_id: str) -> VmStats:
        vm = self._running(vm_id)
        pid = self._live_pid(vm)
        assert pid is not None
        started = procfs.start_time(pid) or clock.now()
        now = time.monotonic()
        cpu = procfs.cpu_seconds(pid) or 0.0
        prev = vm.cpu_sample
        if prev is not None and prev[0] == pid and now > prev[1]:
            cpu_percent = (cpu - prev[2]) / (now - prev[1]) * 100
        else:
            cpu_percent = cpu / max(1e-3, clock.now() - started) * 100
        vm.cpu_sample = (pid, now, cpu)
        rd = wr = 0
        for dev in await self._monitor(vm).execute("query-blockstats"):
            if dev.get("device") == DISK_ID:
                rd, wr = int(dev["stats"]["rd_bytes"]), int(dev["stats"]["wr_bytes"])
        rx, tx = await self._guest_net_bytes(vm)
        return VmStats(
            cpu_percent=round(max(0.0, cpu_percent), 1),
            memory_mb=procfs.rss_bytes(pid) // (1 << 20),
            memory_total_mb=(self._started_with(vm) or vm.config.resources).ram_mb,
            disk_read_bytes=rd,
            disk_write_bytes=wr,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            uptime_seconds=max(0.0, clock.now() - started),
        )

    async def _guest_net_bytes(self, vm: _Vm) -> tuple[int, int]:
        """eth0's counters as the guest agent reports them; (0, 0) without an agent."""
        if time.monotonic() < vm.agent_down_until:
            return 0, 0
        try:
            ifaces = await self._agent(vm).execute("guest-network-get-interfaces", timeout=2.0, ready_timeout=1.0)
        except DriverError:
            vm.agent_down_until = time.monotonic() + AGENT_RETRY_AFTER
            return 0, 0
        for iface in ifaces or []:
            if iface.get("name") == "eth0":
                stats = iface.get("statistics") or {}
                return int(stats.get("rx-bytes", 0)), int(stats.get("tx-bytes", 0))
        return 0, 0

    # -- images ----------------------------------------------------------------------------

    def _image_dir(self, template_id: str) -> Path:
        if not looks_like_id(template_id):
            raise DriverError(f"{template_id!r} is not a template id")
        return self.state_dir / "images" / template_id

    async def import_image(self, template_id: str, source: Path, progress: Progress) -> ImageInfo:
        """The template's base is this node's own standalone qcow2, converted from `source`
        by `intake` (whatever `source` is, QEMU never opens it). One conversion per version
        of the source file (path, size, mtime): a template's file is only replaced when the
        template is (the tiny image rebuilt); older bases stay while VMs may use them, until
        `delete_image`."""
        source = Path(source).absolute()
        try:
            st = source.stat()
        except OSError:
            raise DriverError(f"image {source.name} does not exist", template_id=template_id) from None
        version = hashlib.sha256(f"{source}\n{st.st_size}\n{st.st_mtime_ns}".encode()).hexdigest()[:16]
        dest = self._image_dir(template_id) / f"{version}.qcow2"
        async with self._lock(template_id):  # (template ids never collide with VM ids)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                await progress(10, f"converting the image to a standalone qcow2 on {self.hostname}")
                try:
                    made = await intake.intake(
                        self.qemu_img, source, dest, max_virtual_size=self.max_image_bytes, label="the image", template_id=template_id
                    )
                except BaseException:
                    with contextlib.suppress(OSError):
                        dest.parent.rmdir()  # a first version refused: no folder stays
                    raise
                await progress(100, f"{made.source_format} image of {made.virtual_size / GIB:.1f} GiB taken in on {self.hostname}")
        info = await images.disk_info(self.qemu_img, dest, template_id=template_id)
        return ImageInfo(path=dest, format="qcow2", virtual_size=info.virtual_size, actual_size=info.actual_size)

    async def delete_image(self, template_id: str) -> None:
        async with self._lock(template_id):
            await asyncio.to_thread(shutil.rmtree, self._image_dir(template_id), True)
        self._locks.pop(template_id, None)

    # -- networking ------------------------------------------------------------------------

    def _check_nics(self, vm_id: str, nics: Sequence[Nic]) -> None:
        """A VM's NICs are possible here: bridge networks need the node's support."""
        if len(nics) > 99:
            raise DriverError("a VM has at most 99 NICs", vm_id=vm_id)
        for i, nic in enumerate(nics):
            if nic.network.type == "bridge" and not self.net.available:
                raise DriverError(
                    f"NIC {i} is on bridge network {nic.network.name!r}, but {self.hostname} cannot run bridge "
                    f"networks: {self.net.support.reason}", vm_id=vm_id,
                )  # fmt: skip
            if nic.network.type not in ("user", "bridge"):
                raise DriverError(f"NIC {i} is on a {nic.network.type!r} network, which this driver does not know", vm_id=vm_id)

    @staticmethod
    def _taps(config: VmConfig) -> list[tuple[str, Network]]:
        """(tap, network) of the VM's bridge NICs."""
        return [(tap_name(config.id, i), nic.network) for i, nic in enumerate(config.nics) if nic.network.type == "bridge"]

    @staticmethod
    def _guards(config: VmConfig) -> list[TapGuard]:
        """What each bridge NIC may send as: its MAC, its IPv4 addresses, its EUI-64
        link-local and SLAAC IPv6 addresses."""
        return [
            TapGuard(
                tap_name(config.id, i), nic.mac, (nic.ip, *nic.aliases),
                (ipam.ipv6_for("fe80::/64", nic.mac), *((nic.ipv6,) if nic.ipv6 else ())),
            )  # fmt: skip
            for i, nic in enumerate(config.nics)
            if nic.network.type == "bridge"
        ]

    def _hosts(self, network_id: str, extra: VmConfig | None = None) -> list[tuple[str, str]]:
        """Static DHCP leases of a network: (mac, ip) of every NIC of this node's VMs on it."""
        configs = {vm.id: vm.config for vm in list(self._vms.values())}
        if extra is not None:
            configs[extra.id] = extra
        return [(nic.mac, nic.ip) for c in configs.values() for nic in c.nics if nic.network.id == network_id]

    async def _network_up(self, vm: _Vm) -> dict[str, Any]:
        """Before QEMU starts: the bridges (and their dnsmasq) of the VM's networks, its taps,
        its firewall. Returns what run.json records of it."""
        taps = self._taps(vm.config)
        if taps:
            self._check_nics(vm.id, vm.config.nics)
            for network in {n.id: n for _, n in taps}.values():
                await self.net.ensure_network(network, self._hosts(network.id, vm.config))
            for tap, network in taps:
                await self.net.add_tap(tap, network)
            await self.net.apply_firewall(vm.id, [t for t, _ in taps], vm.config.firewall, self._guards(vm.config))
        forwards = active_forwards(vm.config, self.forward_address)
        return {"taps": [t for t, _ in taps], "hostfwds": [[f.protocol, f.host_port, f.guest_port] for f in forwards]}

    async def _network_down(self, vm: _Vm) -> None:
        """After QEMU is gone: its taps and firewall chains. Failures are logged (this runs on
        every cleanup path, whose own outcome must not be masked)."""
        taps = [t for t, _ in self._taps(vm.config)]
        if not taps or not self.net.available:
            return
        try:
            await self.net.remove_firewall(vm.id, taps)
        except DriverError as exc:
            log.error("VM %s: removing its firewall: %s", vm.id, exc.message)
        for tap in taps:
            try:
                await self.net.delete_tap(tap)
            except DriverError as exc:
                log.error("VM %s: %s", vm.id, exc.message)

    async def _release_networks(self, config: VmConfig) -> None:
        """After a VM is deleted: networks no other VM of the node uses are torn down; the
        others lose its DHCP leases."""
        for network in {n.id: n for _, n in self._taps(config)}.values():
            try:
                if any(nic.network.id == network.id for other in list(self._vms.values()) for nic in other.config.nics):
                    if self.net.is_up(network):
                        await self.net.ensure_network(network, self._hosts(network.id))
                else:
                    await self.net.teardown_network(network)
            except DriverError as exc:
                log.error("network %s after deleting VM %s: %s", network.id, config.id, exc.message)

    async def _network_resume(self) -> None:
        """At open(): adopt (or restart) the dnsmasq of networks that are in use and apply the
        firewalls of running VMs again (vmplane or the host restarted)."""
        if not self.net.available:
            if any(self._taps(vm.config) for vm in self._vms.values()):
                log.warning("bridge networks are unavailable (%s): VMs with bridge NICs will not start", self.net.support.reason)
            return
        running = [vm for vm in self._vms.values() if self._live_pid(vm) is not None]
        networks: dict[str, Network] = {}
        for vm in self._vms.values():
            for _, network in self._taps(vm.config):
                networks[network.id] = network
        in_use = {n.id for vm in running for _, n in self._taps(vm.config)}
        for network in networks.values():
            if network.id in in_use or self.net.dnsmasq_pid(network) is not None:
                try:
                    await self.net.ensure_network(network, self._hosts(network.id))
                except DriverError as exc:
                    log.error("network %s: %s", network.id, exc.message)
        for vm in running:
            taps = self._taps(vm.config)
            if not taps:
                continue
            try:
                for tap, network in taps:
                    await self.net.add_tap(tap, network)
                await self.net.apply_firewall(vm.id, [t for t, _ in taps], vm.config.firewall, self._guards(vm.config))
            except DriverError as exc:
                log.error("VM %s: applying its network again: %s", vm.id, exc.message)
        if self._net_watch is None or self._net_watch.done():
            self._net_watch = self._background(self._watch_networks(), "net-watch")

    async def _watch_networks(self) -> None:
        while True:
            await asyncio.sleep(NET_CHECK_INTERVAL)
            try:
                await self.net.check()
            except Exception:  # keep watching whatever happened
                log.exception("checking the dnsmasq of bridge networks")

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        async with self._lock(vm_id):
            vm = self._vm(vm_id)
            old = vm.config
            if not old.nics and nics:
                log.info("VM %s was defined before networks: it keeps its one user-mode NIC", vm_id)
                nics = ()
            if [(n.network.id, n.network.type, n.mac) for n in nics] != [(n.network.id, n.network.type, n.mac) for n in old.nics]:
                raise DriverError(
                    f"VM {vm_id}'s NICs are fixed at create time: networks and MACs must stay as they are", vm_id=vm_id
                )
            self._check_nics(vm_id, nics)
            vm.config = old.with_network(nics, firewall)
            save_config(vm.paths, vm.config)
            if self._live_pid(vm) is None or (vm.monitor is not None and vm.monitor.guest_off):
                return  # applied at the next start
            taps = self._taps(vm.config)
            for network in {n.id: n for _, n in taps}.values():
                if self.net.is_up(network):  # addresses may have changed: new static leases
                    await self.net.ensure_network(network, self._hosts(network.id))
            if taps:
                await self.net.apply_firewall(vm_id, [t for t, _ in taps], firewall, self._guards(vm.config))
            await self._update_forwards(vm)
            old_aliases = tuple(a for n in old.nics for a in n.aliases)
            try:
                done = await self._sync_guest_addresses(vm, old_aliases, ready_timeout=2.0)
            except AgentNotResponding:
                done = False
            if not done:
                log.info("VM %s: the guest is not ready for its addresses yet; they follow when it is", vm_id)
                self._background(self._guest_addresses_later(vm_id, old_aliases), f"aliases-{vm_id}")

    async def _update_forwards(self, vm: _Vm) -> None:
        """Open and close forwarded ports of a running VM's user-mode NIC (QMP hostfwd_add and
        hostfwd_remove) to match its firewall; run.json records what is open."""
        netdev = user_netdev(vm.config)
        try:
            run = json.loads(vm.paths.run.read_text())
        except (OSError, ValueError) as exc:
            raise DriverError(f"run.json of {vm.id} is unreadable: {exc}", vm_id=vm.id) from exc
        if netdev is None:
            return
        if "hostfwds" in run:
            current = {Forward(str(p), int(h), int(g)) for p, h, g in run["hostfwds"]}
        else:  # started by a vmplane that forwarded every exposed port
            current = set(vm.config.forwards)
        wanted = set(active_forwards(vm.config, self.forward_address))
        monitor = self._monitor(vm)
        for f in sorted(current - wanted, key=lambda f: (f.protocol, f.host_port)):
            rule = hostfwd_rule(f, self.forward_address)
            src = rule.rsplit("-", 1)[0]  # tcp:127.0.0.1:20000
            out = await monitor.execute("human-monitor-command", {"command-line": f"hostfwd_remove {netdev} {src}"})
            if out and "removed" not in out and "not found" not in out:
                raise DriverError(f"closing forwarded port {f.host_port}: {out.strip()}", vm_id=vm.id)
            current.discard(f)
            run["hostfwds"] = [[x.protocol, x.host_port, x.guest_port] for x in sorted(current, key=lambda x: (x.protocol, x.host_port))]
            write_json_atomic(vm.paths.run, run)
        for f in sorted(wanted - current, key=lambda f: (f.protocol, f.host_port)):
            out = await monitor.execute(
                "human-monitor-command", {"command-line": f"hostfwd_add {netdev} {hostfwd_rule(f, self.forward_address)}"}
            )
            if out and out.strip():
                raise DriverError(f"opening forwarded port {f.host_port}: {out.strip()}", vm_id=vm.id)
            current.add(f)
            run["hostfwds"] = [[x.protocol, x.host_port, x.guest_port] for x in sorted(current, key=lambda x: (x.protocol, x.host_port))]
            write_json_atomic(vm.paths.run, run)

    def _after_reset(self, vm_id: str) -> None:
        """The machine reset (the guest rebooted): a new boot has none of the alias addresses."""
        vm = self._vms.get(vm_id)
        if vm is not None and any(nic.aliases for nic in vm.config.nics):
            self._background(self._guest_addresses_later(vm_id, (), new_boot=True), f"aliases-{vm_id}")

    async def _guest_addresses_later(self, vm_id: str, old_aliases: tuple[str, ...], new_boot: bool = False) -> None:
        """Configure alias addresses once the guest agent answers and the NICs have their own
        addresses (after a start or a reset, or after a change the guest was not ready for)."""
        deadline = time.monotonic() + ALIAS_AGENT_WAIT
        try:
            vm = self._running(vm_id)
            if new_boot and vm.agent is not None:
                await vm.agent.close()  # resynchronise with the agent of the new boot
            while True:
                await self._agent(vm).wait_ready(max(1.0, deadline - time.monotonic()))
                async with self._lock(vm_id):
                    vm = self._running(vm_id)
                    if await self._sync_guest_addresses(vm, old_aliases, ready_timeout=5.0):
                        return
                if time.monotonic() > deadline:
                    raise DriverError("the guest's interfaces did not get their addresses by DHCP", vm_id=vm_id)
                await asyncio.sleep(1.0)
        except (DriverError, InvalidState) as exc:
            log.warning("VM %s: alias addresses not configured: %s", vm_id, exc.message)

    async def _sync_guest_addresses(self, vm: _Vm, old_aliases: tuple[str, ...], ready_timeout: float) -> bool:
        """Make each NIC's alias addresses those configured in the guest (its interface found
        by MAC): add the missing ones, remove former aliases no longer listed. False (nothing
        or part done) while an interface with aliases lacks its own address: the guest's DHCP
        client is still at work, and it flushes the interface when it binds."""
        if not any(nic.aliases for nic in vm.config.nics) and not old_aliases:
            return True
        ifaces = await self._agent(vm).execute("guest-network-get-interfaces", timeout=5.0, ready_timeout=ready_timeout)
        by_mac = {str(i.get("hardware-address", "")).lower(): i for i in ifaces or []}
        former = {str(ipaddress.ip_address(a.split("/")[0])) for a in old_aliases}
        done = True
        for nic in vm.config.nics:
            iface = by_mac.get(nic.mac.lower())
            present = {str(a.get("ip-address")): int(a.get("prefix", 0)) for a in (iface or {}).get("ip-addresses") or []}
            if iface is None or (nic.aliases and nic.ip not in present):
                done = done and not nic.aliases
                continue
            name = nethost.check_ifname(str(iface.get("name", "")))
            wanted = [_alias(nic, a) for a in nic.aliases]
            keep = {nic.ip, *(w.split("/")[0] for w in wanted)}
            for addr, prefix in present.items():
                if addr in former and addr not in keep:
                    await self._guest_ip(vm, ["ip", "addr", "del", f"{addr}/{prefix}", "dev", name])
            for cidr in wanted:
                if cidr.split("/")[0] not in present:
                    await self._guest_ip(vm, ["ip", "addr", "add", cidr, "dev", name])
        return done

    async def _guest_ip(self, vm: _Vm, argv: list[str]) -> None:
        result = await self._agent(vm).exec(argv, timeout=10.0, max_output=4096, ready_timeout=5.0)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise DriverError(f"{' '.join(argv)} failed in the guest: {err or result.exit_code}", vm_id=vm.id)

    # -- PCI passthrough -------------------------------------------------------------------

    async def _check_pci(self, vm_id: str, addresses: Sequence[str]) -> list[pci.PciDevice]:
        """The devices a VM asks for, checked against the host: offered here (allowlist, IOMMU,
        whole groups, see pci.plan_passthrough) and given to no other VM of this node."""
        if not addresses:
            return []
        if not self.capabilities.pci_passthrough:
            raise DriverError(
                f"{self.hostname} offers no PCI passthrough (no IOMMU, or an empty PCI allowlist)", vm_id=vm_id
            )
        devices = await asyncio.to_thread(pci.plan_passthrough, self.sysfs_root, addresses, self.pci_allowlist)
        wanted = {d.address for d in devices}
        for other in list(self._vms.values()):
            taken = wanted & set(other.config.pci_devices) if other.id != vm_id else set()
            if taken:
                raise DriverError(f"PCI device {', '.join(sorted(taken))} is given to VM {other.id} already", vm_id=vm_id)
        return devices

    async def _bind_pci(self, vm: _Vm) -> list[str]:
        """Before QEMU starts: move the VM's devices to vfio-pci and check what QEMU will open
        (/dev/vfio/<group>, the locked-memory limit). Returns the devices moved now, which a
        failed start gives back; on failure here, gives them back itself."""
        if not vm.config.pci_devices:
            return []
        devices = await self._check_pci(vm.id, vm.config.pci_devices)
        pci.check_memlock(vm.config.resources.ram_mb << 20)
        moved: list[str] = []
        try:
            for d in devices:
                if await asyncio.to_thread(pci.bind_vfio, self.sysfs_root, d.address):
                    moved.append(d.address)
                    _write_bound(vm.paths, _read_bound(vm.paths) | {d.address})
            for group in sorted({d.iommu_group for d in devices if d.iommu_group is not None}):
                pci.check_vfio_group(group, self.dev_root)
        except BaseException:
            await self._unbind_pci(vm.paths, moved, strict=False)
            raise
        return moved

    async def _unbind_pci(self, paths: VmPaths, addresses: Sequence[str], *, strict: bool) -> None:
        """Give `addresses` back to their host drivers. Not strict: failures are logged (a start
        that failed keeps its own error)."""
        for address in addresses:
            try:
                await asyncio.to_thread(pci.unbind_vfio, self.sysfs_root, address)
            except DriverError as exc:
                if strict:
                    raise
                log.error("giving PCI device %s back to the host failed: %s", address, exc.message)
                continue
            if paths.dir.exists():
                _write_bound(paths, _read_bound(paths) - {address})

    async def _give_back_pci(self, paths: VmPaths) -> None:
        """Give back every device the driver moved to vfio-pci for this VM (devices that were
        with vfio-pci before, e.g. by vfio-pci.ids=, stay there)."""
        bound = _read_bound(paths)
        if bound:
            await self._unbind_pci(paths, sorted(bound), strict=True)

    # -- helpers ---------------------------------------------------------------------------

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _vm(self, vm_id: str) -> _Vm:
        paths = vm_paths(self.state_dir, vm_id)
        vm = self._vms.get(vm_id)
        if vm is None and paths.config.exists():
            vm = self._vms.setdefault(vm_id, _Vm(load_config(paths), paths))
        if vm is None:
            raise DriverError(f"VM {vm_id} is not defined on {self.hostname}", vm_id=vm_id)
        return vm

    def _running(self, vm_id: str) -> _Vm:
        vm = self._vm(vm_id)
        if self._live_pid(vm) is None or (vm.monitor is not None and vm.monitor.guest_off):
            state = self._runtime(vm).state
            raise InvalidState(f"VM {vm_id} is {state}, not running", current=state, required="running")
        return vm

    def _monitor(self, vm: _Vm) -> Monitor:
        if vm.monitor is None:
            vm_id = vm.id
            vm.monitor = Monitor(
                vm_id, vm.paths.qmp,
                on_guest_poweroff=lambda: self._background(self._finish_guest_poweroff(vm_id), f"poweroff-{vm_id}"),
                on_reset=lambda: self._after_reset(vm_id),
            )
        return vm.monitor

    def _agent(self, vm: _Vm) -> GuestAgent:
        if vm.agent is None:
            vm.agent = GuestAgent(vm.id, vm.paths.qga)
        return vm.agent

    def _background(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _release_connections(self) -> None:
        for vm in self._vms.values():
            for conn in (vm.monitor, vm.agent):
                if conn is not None:
                    await conn.close()
            vm.monitor = vm.agent = None


async def _wait_exit(pid: int, marker: str, timeout: float) -> bool:
    """Wait until `pid` is no longer our QEMU; False on timeout."""
    deadline = time.monotonic() + timeout
    while procfs.is_ours(pid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


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


def _alias(nic: Nic, alias: str) -> str:
    """An alias as `ip addr add` takes it: with the network's prefix length when it lies in
    the network's subnet (or IPv6 prefix), else as a single address."""
    ip = ipaddress.ip_address(alias.split("/")[0])
    if ip.version == 4:
        subnet = ipaddress.IPv4Network(nic.network.subnet)
        return f"{ip}/{subnet.prefixlen if ip in subnet else 32}"
    prefix = ipaddress.IPv6Network(nic.network.ipv6_prefix) if nic.network.ipv6_prefix else None
    return f"{ip}/{prefix.prefixlen if prefix is not None and ip in prefix else 128}"


def _free_port(host: str) -> int:
    """A TCP port free on `host` now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 0


def _trim_log(path: Path) -> None:
    """Keep serial.log bounded across starts (QEMU appends to it)."""
    try:
        if path.stat().st_size <= SERIAL_LOG_MAX:
            return
        with open(path, "rb") as f:
            f.seek(-SERIAL_LOG_KEEP, os.SEEK_END)
            tail = f.read()
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(tail)
        os.replace(tmp, path)
    except OSError:
        pass
