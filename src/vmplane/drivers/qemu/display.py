"""The graphical console of the qemu driver's VMs: QEMU's VNC server on a unix socket in the
VM's directory (`layout.VmPaths.vnc`, on the command line as `-vnc unix:vnc.sock`), and
screenshots of the VGA adapter through QMP `screendump`.
"""

import asyncio
import contextlib
import os

from ...errors import DriverError
from .machines import Machines
from .unix import connect_unix

SCREENSHOT_TIMEOUT = 10.0


class Display:
    """VNC streams and screenshots of one node's VMs."""

    def __init__(self, machines: Machines) -> None:
        self.machines = machines
        self._dumping: dict[str, asyncio.Lock] = {}
        """one screendump at a time per VM: they share the VM's `screen.png`"""

    async def open_vnc(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = self.machines.running(vm_id)
        try:
            sock = connect_unix(vm.paths.vnc)
        except FileNotFoundError as exc:  # started by a vmplane from before the graphical console
            raise DriverError(
                f"{vm_id} has no VNC server: it was started before vmplane gave VMs one; stop and start it", vm_id=vm_id
            ) from exc
        except OSError as exc:
            raise DriverError("cannot connect to the VNC server", vm_id=vm_id, reason=exc.strerror) from exc
        return await asyncio.open_unix_connection(sock=sock, limit=1 << 20)

    async def screenshot(self, vm_id: str, max_bytes: int) -> bytes:
        vm = self.machines.running(vm_id)
        lock = self._dumping.setdefault(vm_id, asyncio.Lock())
        async with lock:
            path = vm.paths.screendump
            # QEMU may not open files by path (confined, it cannot enter the data dir): it
            # writes into a descriptor vmplane opened (write-only: QEMU dups it for its own
            # O_WRONLY open of /dev/fdset/N, whose access mode must match)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                monitor = self.machines.monitor(vm)
                try:
                    fdset = await monitor.pass_file(fd, f"{vm.id} screenshot")
                finally:
                    os.close(fd)
                try:
                    await monitor.execute("screendump", {"filename": f"/dev/fdset/{fdset}", "format": "png"}, timeout=SCREENSHOT_TIMEOUT)
                finally:
                    with contextlib.suppress(DriverError):
                        await monitor.execute("remove-fd", {"fdset-id": fdset})
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size > max_bytes:
                        raise DriverError(f"the screenshot of {vm_id} is {size} bytes, more than {max_bytes}", vm_id=vm_id)
                    data = f.read(max_bytes + 1)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise DriverError(f"QEMU's screendump of {vm_id} is not a PNG", vm_id=vm_id)
        return data

    def forget(self, vm_id: str) -> None:
        self._dumping.pop(vm_id, None)
