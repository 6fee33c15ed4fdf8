"""Point-in-time copies of a qemu VM's disk, for the qemu driver: snapshots, and the raw
exports backups are made from.

A stopped VM's copy is its overlay file. A running VM's is made live (QMP blockdev-backup:
copy-before-write, so guest writes during the copy do not leak into it), with the guest's
file systems frozen through its agent for the instant the job starts. A snapshot keeps the
disk's backing image; an export flattens the whole chain into a sparse raw file.
"""

import asyncio
import contextlib
import logging
import os
import shutil
import uuid
from pathlib import Path

from ...errors import DriverError
from ...ids import looks_like_id
from ..base import ImageInfo
from . import images
from .cmdline import DISK_ID
from .disks import Disks
from .machines import Machines, QemuHost, QemuVm

log = logging.getLogger("vmplane.drivers.qemu")

FREEZE_TIMEOUT = 10.0
"""how long a guest-fsfreeze command may take"""


class Snapshots:
    """Snapshots and disk exports of one node's VMs (`state_dir/snapshots/<id>.qcow2`)."""

    def __init__(self, host: QemuHost, machines: Machines, disks: Disks) -> None:
        self.host = host
        self.machines = machines
        self.disks = disks

    def _path(self, snapshot_id: str) -> Path:
        if not looks_like_id(snapshot_id):
            raise DriverError(f"{snapshot_id!r} is not a snapshot id")
        return self.host.state_dir / "snapshots" / f"{snapshot_id}.qcow2"

    async def take(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        dest = self._path(snapshot_id)
        async with self.machines.lock(vm_id):
            if not dest.exists():
                vm = self.machines.vm(vm_id)
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_suffix(".part")
                part.unlink(missing_ok=True)
                try:
                    if self.machines.live_pid(vm) is not None:
                        await self._copy_live(vm, part)
                    else:  # stopped: the overlay file is the disk, at rest
                        await asyncio.to_thread(shutil.copyfile, vm.paths.disk, part)
                    await images.check_qcow2(self.host.qemu_img, part, vm_id=vm_id)
                    await self.disks.check_backing(vm, part)
                    os.replace(part, dest)
                except BaseException:
                    part.unlink(missing_ok=True)
                    raise
        info = await images.disk_info(self.host.qemu_img, dest, vm_id=vm_id)
        return ImageInfo(path=dest, format="qcow2", virtual_size=info.virtual_size, actual_size=info.actual_size)

    async def _copy_live(self, vm: QemuVm, target: Path) -> None:
        """A point-in-time copy of a running VM's disk (QMP blockdev-backup: copy-before-write, so
        guest writes during the copy do not leak into it). Only the top layer is copied; the
        copy keeps the same backing image."""
        info = await images.disk_info(self.host.qemu_img, vm.paths.disk, vm_id=vm.id)
        if info.backing_file:
            # the backing file is the one vmplane gave the disk, never a name read from it
            if Path(info.backing_file) not in self.disks.backing_of(vm):
                raise DriverError(f"the disk of {vm.id} names a backing file vmplane did not give it", vm_id=vm.id)
            backing = await images.disk_info(self.host.qemu_img, Path(info.backing_file), vm_id=vm.id)
            await images.create_overlay(self.host.qemu_img, Path(info.backing_file), backing.format, target, info.virtual_size, vm_id=vm.id)
        else:
            await images.create_blank(self.host.qemu_img, target, info.virtual_size, vm_id=vm.id)
        job = f"snap-{uuid.uuid4().hex[:8]}"
        node = f"{job}-target"
        monitor = self.machines.monitor(vm)
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

    async def _freeze(self, vm: QemuVm) -> bool:
        """Freeze the guest's file systems through its agent, if it answers quickly. A guest
        without an agent gets a crash-consistent copy instead (as after a power cut)."""
        try:
            await self.machines.agent(vm).execute("guest-fsfreeze-freeze", timeout=FREEZE_TIMEOUT, ready_timeout=2.0)
            return True
        except DriverError as exc:
            log.warning("VM %s: no file system freeze for its snapshot (%s)", vm.id, exc.message)
            return False

    async def _thaw(self, vm: QemuVm) -> None:
        try:
            await self.machines.agent(vm).execute("guest-fsfreeze-thaw", timeout=FREEZE_TIMEOUT, ready_timeout=2.0)
        except DriverError as exc:  # the agent thaws by itself after its own timeout
            log.warning("VM %s: thawing its file systems failed: %s", vm.id, exc.message)

    async def delete(self, snapshot_id: str) -> None:
        self._path(snapshot_id).unlink(missing_ok=True)

    async def export(self, vm_id: str, dest: Path) -> int:
        vm = self.machines.vm(vm_id)
        if self.machines.live_pid(vm) is not None:  # a point-in-time copy first, then flatten it
            temp_id = "snap-" + uuid.uuid4().hex[:12]
            info = await self.take(vm_id, temp_id)
            try:
                await images.to_raw(self.host.qemu_img, info.path, dest, await self.disks.chain_of(vm), vm_id=vm_id)
            finally:
                await self.delete(temp_id)
        else:
            async with self.machines.lock(vm_id):
                await images.to_raw(self.host.qemu_img, vm.paths.disk, dest, await self.disks.chain_of(vm), vm_id=vm_id)
        return dest.stat().st_size

