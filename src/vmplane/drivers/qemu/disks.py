"""A qemu VM's disk and the template images disks are made on, for the qemu driver.

A VM's disk is a qcow2 overlay on its template's base image (the node's own standalone copy,
made by `intake`), the node's copy of an image taken from outside, or a blank disk. Disks
only grow; a stopped VM's disk can be replaced by a snapshot's content (revert) or a raw
image (a backup's restore). QEMU opens the backing file a disk names as root when the VM
starts, so that name is checked against the one vmplane gave the disk before each use.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import pycdlib.pycdlibexception

from ... import clock
from ...domain import Resources, VmSpec
from ...errors import DriverError, InvalidState
from ...ids import looks_like_id
from ..base import ImageInfo, Progress
from . import images, intake, media
from .cmdline import DISK_ID
from .images import SUPPORTED_FORMATS
from .layout import GIB, VmConfig, VmPaths, save_config, write_json_atomic
from .machines import Machines, QemuHost, QemuVm
from .seed import seed_files, write_seed_iso


class Disks:
    """The disks of one node's VMs and its template images."""

    def __init__(self, host: QemuHost, machines: Machines) -> None:
        self.host = host
        self.machines = machines
        self._base_infos: dict[tuple[str, int, int], images.DiskInfo] = {}

    # -- defining ----------------------------------------------------------------------------

    async def define(self, spec: VmSpec, work: VmPaths) -> VmConfig:
        """Write the disk, seed and vm.json of `spec` into `work.dir` (its NICs and devices checked
        already)."""
        base: Path | None = None
        if spec.template_image:
            base = Path(spec.template_image).absolute()
            if not base.is_file():
                raise DriverError(f"template image {base} does not exist on {self.host.hostname}", vm_id=spec.id)
        config = VmConfig.from_spec(spec, clock.now())
        if base is not None:
            config = dataclasses.replace(config, template_image=str(base))
        if config.boot is not None:
            for p in (config.boot.kernel, config.boot.initrd):
                if p and not Path(p).is_file():
                    raise DriverError(f"template boot file {p} does not exist on {self.host.hostname}", vm_id=spec.id)
        size = spec.resources.disk_gb * GIB
        if base is not None:
            info = await self._base_info(base, spec.id)
            if info.format not in SUPPORTED_FORMATS:
                raise DriverError(f"template image format {info.format} is not qcow2 or raw", vm_id=spec.id)
            await images.create_overlay(self.host.qemu_img, base, info.format, work.disk, max(size, info.virtual_size), vm_id=spec.id)
        elif spec.disk_image:
            await self._adopt(Path(spec.disk_image), work.disk, size, spec.id)
        else:
            await images.create_blank(self.host.qemu_img, work.disk, size, vm_id=spec.id)
        media.prepare(spec.boot, work, spec.id)
        files = seed_files(spec)
        try:
            await asyncio.to_thread(write_seed_iso, work.seed, files)
        except (pycdlib.pycdlibexception.PyCdlibException, OSError) as exc:
            raise DriverError(f"cannot write the cloud-init seed: {exc}", vm_id=spec.id) from exc
        save_config(work, config)
        return config

    async def _adopt(self, image: Path, disk: Path, size: int, vm_id: str) -> None:
        """Make the qcow2 `image` (made by `intake.intake`) the VM's own disk at `disk`
        (moved, so it must not be used elsewhere), grown to `size` if smaller. Anything but a
        standalone qcow2 is refused."""
        if not image.is_file():
            raise DriverError(f"disk image {image} does not exist on {self.host.hostname}", vm_id=vm_id)
        info = await intake.check_standalone(self.host.qemu_img, image, max_virtual_size=self.host.max_image_bytes, vm_id=vm_id)
        try:
            os.replace(image, disk)
        except OSError:  # another file system: copy
            await asyncio.to_thread(shutil.copyfile, image, disk)
            image.unlink(missing_ok=True)
        if info.virtual_size < size:
            await images.grow(self.host.qemu_img, disk, size, vm_id=vm_id)

    async def _base_info(self, base: Path, vm_id: str) -> images.DiskInfo:
        """`qemu-img info` of a template's base image, asked once per version of the file
        (bases are read-only; a bulk create of N VMs would otherwise run it N times)."""
        st = base.stat()
        key = (str(base), st.st_mtime_ns, st.st_size)
        info = self._base_infos.get(key)
        if info is None:
            info = self._base_infos[key] = await images.disk_info(self.host.qemu_img, base, vm_id=vm_id)
        return info

    # -- changing ----------------------------------------------------------------------------

    async def resize(self, vm_id: str, resources: Resources) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            current = vm.config.resources
            if resources.disk_gb < current.disk_gb:
                raise DriverError(
                    f"disk of {vm_id} cannot shrink from {current.disk_gb} to {resources.disk_gb} GB", vm_id=vm_id
                )
            if resources.cpu < 1 or resources.ram_mb < 16:
                raise DriverError(f"resources {resources.to_wire()} are too small", vm_id=vm_id)
            target = resources.disk_gb * GIB
            info = await images.disk_info(self.host.qemu_img, vm.paths.disk, vm_id=vm_id)
            if target > info.virtual_size:
                if self.machines.live_pid(vm) is not None:
                    await self.machines.monitor(vm).execute("block_resize", {"device": DISK_ID, "size": target})
                    self._note_live_disk(vm, resources.disk_gb)
                else:
                    await images.grow(self.host.qemu_img, vm.paths.disk, target, vm_id=vm_id)
            if resources != current:
                vm.config = vm.config.with_resources(resources)
                save_config(vm.paths, vm.config)

    def _note_live_disk(self, vm: QemuVm, disk_gb: int) -> None:
        """The running QEMU has the grown disk: run.json says so, so that only CPU and RAM
        wait for the next start (`VmRuntime.running`, and a power-cycle resets in place when
        nothing else changed)."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            run = json.loads(vm.paths.run.read_text())
            run["resources"] = {**run["resources"], "diskGb": disk_gb}
            write_json_atomic(vm.paths.run, run)

    # -- contents ----------------------------------------------------------------------------

    async def revert(self, vm_id: str, snapshot_image: str) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} must be stopped to revert", current="running", required="stopped")
            source = Path(snapshot_image)
            if not source.is_file():
                raise DriverError(f"snapshot image {source.name} is missing on {self.host.hostname}", vm_id=vm_id)
            part = vm.paths.disk.with_suffix(".revert")
            try:
                await asyncio.to_thread(shutil.copyfile, source, part)
                size = vm.config.resources.disk_gb * GIB
                if (await images.disk_info(self.host.qemu_img, part, vm_id=vm_id)).virtual_size < size:
                    await images.grow(self.host.qemu_img, part, size, vm_id=vm_id)
                os.replace(part, vm.paths.disk)
            finally:
                part.unlink(missing_ok=True)

    @staticmethod
    def backing_of(vm: QemuVm) -> tuple[Path, ...]:
        """The backing file vmplane gave the VM's disk (its template's image), if any."""
        return (Path(vm.config.template_image),) if vm.config.template_image else ()

    async def check_backing(self, vm: QemuVm, image: Path) -> None:
        """`image` (the VM's disk, or a copy of it) names as its backing file the one vmplane
        gave the disk, or none if it gave none. QEMU opens that name as root when the VM
        starts, and a guest's QEMU, which writes the disk, could have rewritten it."""
        named = (await images.disk_info(self.host.qemu_img, image, vm_id=vm.id)).backing_file
        if (Path(named) if named else None) != (Path(vm.config.template_image) if vm.config.template_image else None):
            raise DriverError(f"the disk of {vm.id} names a backing file vmplane did not give it ({named}); refused", vm_id=vm.id)

    async def chain_of(self, vm: QemuVm) -> tuple[Path, ...]:
        """The files that may back the VM's disk: its template's image and, for a clone of a
        snapshot, the image that snapshot (written by vmplane) is on."""
        chain = self.backing_of(vm)
        if chain and chain[0].parent == self.host.state_dir / "snapshots" and chain[0].is_file():
            below = (await images.disk_info(self.host.qemu_img, chain[0], vm_id=vm.id)).backing_file
            if below:
                chain += (Path(below),)
        return chain

    async def import_disk(self, vm_id: str, source: Path) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} must be stopped to restore its disk", current="running", required="stopped")
            size = vm.config.resources.disk_gb * GIB
            if source.stat().st_size > size:
                raise DriverError(f"the image ({source.stat().st_size} bytes) is larger than the VM's disk ({size} bytes)", vm_id=vm_id)
            part = vm.paths.disk.with_suffix(".import")
            try:
                base = Path(vm.config.template_image) if vm.config.template_image else None
                fmt = (await images.disk_info(self.host.qemu_img, base, vm_id=vm_id)).format if base else None
                await images.from_raw(self.host.qemu_img, source, part, base, fmt, vm_id=vm_id)
                if (await images.disk_info(self.host.qemu_img, part, vm_id=vm_id)).virtual_size < size:
                    await images.grow(self.host.qemu_img, part, size, vm_id=vm_id)
                os.replace(part, vm.paths.disk)
            finally:
                part.unlink(missing_ok=True)

    # -- template images ---------------------------------------------------------------------

    def _image_dir(self, template_id: str) -> Path:
        if not looks_like_id(template_id):
            raise DriverError(f"{template_id!r} is not a template id")
        return self.host.state_dir / "images" / template_id

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
        async with self.machines.lock(template_id):  # (template ids never collide with VM ids)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                await progress(10, f"converting the image to a standalone qcow2 on {self.host.hostname}")
                try:
                    made = await intake.intake(
                        self.host.qemu_img, source, dest, max_virtual_size=self.host.max_image_bytes, label="the image", template_id=template_id
                    )
                except BaseException:
                    with contextlib.suppress(OSError):
                        dest.parent.rmdir()  # a first version refused: no folder stays
                    raise
                await progress(100, f"{made.source_format} image of {made.virtual_size / GIB:.1f} GiB taken in on {self.host.hostname}")
        info = await images.disk_info(self.host.qemu_img, dest, template_id=template_id)
        return ImageInfo(path=dest, format="qcow2", virtual_size=info.virtual_size, actual_size=info.actual_size)

    async def delete_image(self, template_id: str) -> None:
        async with self.machines.lock(template_id):
            await asyncio.to_thread(shutil.rmtree, self._image_dir(template_id), True)
        self.machines.drop_lock(template_id)

