"""A qemu VM's CD-ROM, boot order and firmware: the ISO checked before QEMU gets it, a UEFI
VM's own variable store (NVRAM), and the ISO changed live over QMP.

QEMU confined (confine.py) cannot open files by path once it runs, so an ISO inserted into a
running VM is handed to it as a descriptor vmplane opened (`Monitor.pass_file`), as a live
snapshot's file is.
"""

import dataclasses
import os
import shutil
from pathlib import Path

from ...domain import BootSetup
from ...errors import DriverError
from .cmdline import CDROM_ID, OVMF_CODE, OVMF_VARS
from .layout import VmPaths, save_config
from .machines import Machines


def prepare(boot: BootSetup, paths: VmPaths, vm_id: str) -> None:
    """Check what `boot` needs on this host (the ISO, OVMF) and give a UEFI VM its NVRAM (a
    copy of OVMF's variable store template, made once: the guest's boot entries live in it)."""
    if boot.cdrom is not None and not Path(boot.cdrom).is_file():
        raise DriverError(f"ISO {Path(boot.cdrom).name} does not exist on this host", vm_id=vm_id)
    if boot.firmware == "uefi":
        for f in (OVMF_CODE, OVMF_VARS):
            if not Path(f).is_file():
                raise DriverError(f"UEFI firmware {f} is missing (Debian's ovmf: scripts/install-qemu.sh)", vm_id=vm_id)
        if not paths.nvram.exists():
            tmp = paths.nvram.with_name(f".{paths.nvram.name}.tmp")
            shutil.copyfile(OVMF_VARS, tmp)
            os.replace(tmp, paths.nvram)


class Media:
    def __init__(self, machines: Machines) -> None:
        self.machines = machines

    async def set_boot(self, vm_id: str, boot: BootSetup) -> None:
        """HypervisorDriver.set_boot: the ISO changes at once in a running QEMU (ejected, then
        the new one inserted read-only); vm.json holds all of it for the next start."""
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            prepare(boot, vm.paths, vm_id)
            running = self.machines.live_pid(vm) is not None and not vm.incoming
            if running and boot.cdrom != vm.config.boot_setup.cdrom:
                if not vm.config.cdrom_drive:
                    raise DriverError(
                        f"VM {vm_id} was started without a CD-ROM drive (made before ISOs): stop it to change its CD-ROM", vm_id=vm_id
                    )
                await self._change(vm_id, boot.cdrom)
            vm.config = dataclasses.replace(vm.config, boot_setup=boot, cdrom_drive=vm.config.cdrom_drive or not running)
            save_config(vm.paths, vm.config)

    async def _change(self, vm_id: str, iso: str | None) -> None:
        vm = self.machines.vm(vm_id)
        monitor = self.machines.monitor(vm)
        await monitor.execute("eject", {"id": CDROM_ID, "force": True})
        if iso is None:
            return
        fd = os.open(iso, os.O_RDONLY)
        try:
            fdset = await monitor.pass_file(fd, f"{vm_id} cdrom")
        finally:
            os.close(fd)
        try:
            await monitor.execute(
                "blockdev-change-medium",
                {"id": CDROM_ID, "filename": f"/dev/fdset/{fdset}", "format": "raw", "read-only-mode": "read-only"},
            )
        finally:
            # the medium holds its own duplicate of the descriptor: the set may go
            await monitor.execute("remove-fd", {"fdset-id": fdset})
