"""A qemu VM's process, for the qemu driver: starting QEMU, stopping it, the power button,
reset, and re-attaching to a VM that outlived a previous driver.

A start brings up what QEMU will need (the VM's devices on vfio-pci, its taps and firewall),
spawns it detached, records `run.json`, and waits for QMP; a start that fails kills what it
started and takes all of that down again. A stop writes the `stopping` marker first (an exit
is then expected), asks QEMU to quit, kills it if it does not, and forgets the VM's runtime.
"""

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from ... import procfs
from ...errors import DriverError, InvalidState
from ..base import PowerState
from .cmdline import build_argv
from .disks import Disks
from .layout import write_json_atomic
from .machines import Machines, QemuHost, QemuVm
from .network import Networking
from .vfio import Vfio

log = logging.getLogger("vmplane.drivers.qemu")

SERIAL_LOG_MAX = 8 << 20
"""serial.log is cut to its last SERIAL_LOG_KEEP bytes at start once it grows past this."""
SERIAL_LOG_KEEP = 1 << 20
POWER_BUTTON_REPEAT = 3.0
"""shutdown_vm presses the ACPI power button again this often (a guest still booting misses it)."""


class Power:
    """The QEMU processes of one node's VMs."""

    def __init__(self, host: QemuHost, machines: Machines, disks: Disks, network: Networking, vfio: Vfio) -> None:
        self.host = host
        self.machines = machines
        self.disks = disks
        self.network = network
        self.vfio = vfio

    async def start(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            await self.start_locked(self.machines.vm(vm_id))

    async def stop(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            await self.stop_locked(self.machines.vm(vm_id))

    async def shutdown(self, vm_id: str, timeout: float) -> bool:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            pid = self.machines.live_pid(vm)
            if pid is None:
                crashed = self.machines.runtime(vm).state == PowerState.CRASHED
                await self.cleanup(vm)
                return not crashed
            vm.paths.stop_marker.touch()
            vm.transition = PowerState.STOPPING
            try:
                graceful = await self._power_button(vm, pid, timeout)
            finally:
                vm.transition = None
            await self.stop_locked(vm)
            return graceful

    async def _power_button(self, vm: QemuVm, pid: int, timeout: float) -> bool:
        """Press the ACPI power button (again every few seconds) until the guest is off or
        `timeout` passes. True if the guest powered off by itself."""
        monitor = self.machines.monitor(vm)
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

    async def reboot(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is None or self.machines.guest_off(vm):
                state = self.machines.runtime(vm).state
                raise InvalidState(f"VM {vm_id} is {state}, not running", current=state, required="running")
            try:  # the guest's own reboot, if its agent answers at once
                agent = self.machines.agent(vm)
                await agent.wait_ready(1.0)
                await agent.execute("guest-shutdown", {"mode": "reboot"}, reply=False, ready_timeout=1.0)
                log.info("rebooting %s through its guest agent", vm_id)
            except DriverError:
                await self.machines.monitor(vm).execute("system_reset")
                log.info("rebooting %s with system_reset (no guest agent)", vm_id)

    async def power_cycle(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            pid = self.machines.live_pid(vm)
            if pid is not None and not self.machines.guest_off(vm):
                if self.machines.started_with(vm) == vm.config.resources:
                    await self.machines.monitor(vm).execute("system_reset")
                    return
            # stopped, crashed, powered off, or new CPU/RAM to apply: off and on again
            await self.stop_locked(vm)
            await self.start_locked(vm)

    async def start_locked(self, vm: QemuVm, incoming: bool = False) -> None:
        """Start QEMU; `incoming`: paused, waiting for a live migration's state (-incoming defer -S)."""
        if self.machines.live_pid(vm) is not None:
            if vm.monitor is None or not vm.monitor.guest_off:
                return
            await self.stop_locked(vm)  # the guest powered itself off: QEMU waits paused
        await self.cleanup(vm)
        for path in (vm.config.template_image, *(() if vm.config.boot is None else (vm.config.boot.kernel, vm.config.boot.initrd))):
            if path and not Path(path).is_file():
                raise DriverError(f"{path} is missing on {self.host.hostname}; the VM cannot start", vm_id=vm.id)
        await self.disks.check_backing(vm, vm.paths.disk)
        _trim_log(vm.paths.serial_log)
        serial_offset = _log_size(vm.paths.serial_log)  # where this boot's console output begins (readiness)
        argv = build_argv(
            vm.config, vm.paths, accel=self.host.accel, qemu_binary=self.host.qemu_binary,
            forward_address=self.host.forward_address, sandbox=self.host.sandbox, runas=self.host.runas(),
        )
        if incoming:
            argv += ["-incoming", "defer", "-S"]
        pci_moved = await self.vfio.bind(vm)
        vm.transition = PowerState.STARTING
        pid: int | None = None
        try:
            net_state = await self.network.up(vm)
            try:
                pid = procfs.spawn(argv, cwd=vm.paths.dir, log=vm.paths.stderr_log)
            except OSError as exc:
                raise DriverError(f"cannot run {self.host.qemu_binary}: {exc.strerror}", vm_id=vm.id) from exc
            write_json_atomic(vm.paths.run, {
                "pid": pid,
                "startedAt": procfs.start_time(pid),
                "resources": vm.config.resources.to_wire(),
                "accel": self.host.accel,
                "serialOffset": serial_offset,
                "argv": argv,
                **net_state,
            })
            await self._wait_for_qmp(vm, pid)
            status = await self.machines.monitor(vm).status()
            if status != ("inmigrate" if incoming else "running"):
                raise DriverError(f"QEMU is {status!r} right after start", vm_id=vm.id)
            vm.cpu_sample = None
            if any(nic.aliases for nic in vm.config.nics):
                self.machines.background(self.network.addresses_later(vm.id, ()), f"aliases-{vm.id}")
        except BaseException as exc:
            if pid is not None:
                vm.paths.stop_marker.touch()
                procfs.kill(pid)
                await _wait_exit(pid, vm.marker, 5.0)
            error = self.machines.stderr_tail(vm) if pid is not None else ""
            await self.cleanup(vm)
            await self.vfio.unbind(vm.paths, pci_moved, strict=False)
            if isinstance(exc, DriverError) and error:
                raise DriverError(f"{exc.message}: {error}", **exc.details) from exc
            raise
        finally:
            vm.transition = None

    async def _wait_for_qmp(self, vm: QemuVm, pid: int) -> None:
        deadline = time.monotonic() + self.host.start_timeout
        monitor = self.machines.monitor(vm)
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
                raise DriverError(f"QEMU did not answer on QMP within {self.host.start_timeout:g} s", vm_id=vm.id)
            await asyncio.sleep(0.02)

    async def stop_locked(self, vm: QemuVm) -> None:
        """Hard power-off; then no process, socket or pidfile is left."""
        pid = self.machines.live_pid(vm)
        if pid is not None:
            vm.paths.stop_marker.touch()
            vm.transition = PowerState.STOPPING
            try:
                await self.machines.monitor(vm).quit(timeout=3.0)
                if not await _wait_exit(pid, vm.marker, 5.0):
                    log.warning("QEMU %d of %s ignored quit; killing it", pid, vm.id)
                    procfs.kill(pid, signal.SIGKILL)
                    if not await _wait_exit(pid, vm.marker, 10.0):
                        raise DriverError(f"QEMU process {pid} does not exit", vm_id=vm.id)
            finally:
                vm.transition = None
        await self.cleanup(vm)

    async def cleanup(self, vm: QemuVm) -> None:
        """Forget the runtime of a VM with no process: connections, sockets, pidfile, markers."""
        await self.machines.close_connections(vm)
        vm.cpu_sample = None
        vm.incoming = vm.migrated = False
        for path in vm.paths.runtime_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await self.network.down(vm)

    async def reattach(self, vm_id: str) -> None:
        """Connect to a VM found running at open(); finish it if its guest powered off while
        no driver watched."""
        async with self.machines.lock(vm_id):
            vm = self.machines.vms.get(vm_id)
            if vm is None or self.machines.live_pid(vm) is None:
                return
            try:
                await self.machines.monitor(vm).status()  # notes a guest that is off
            except DriverError as exc:
                log.warning("re-attaching %s: %s", vm_id, exc.message)
                return
        await self.finish_guest_poweroff(vm_id)

    async def finish_guest_poweroff(self, vm_id: str) -> None:
        """Stop the QEMU of a guest that powered itself off (it waits paused, -no-shutdown)."""
        async with self.machines.lock(vm_id):
            vm = self.machines.vms.get(vm_id)
            if vm is None or self.machines.live_pid(vm) is None or vm.monitor is None or not vm.monitor.guest_off:
                return
            log.info("guest of %s powered off; stopping its QEMU", vm_id)
            await self.stop_locked(vm)



async def _wait_exit(pid: int, marker: str, timeout: float) -> bool:
    """Wait until `pid` is no longer our QEMU; False on timeout."""
    deadline = time.monotonic() + timeout
    while procfs.is_ours(pid, marker):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
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
