"""The VMs of one qemu node as its driver holds them, shared by the driver's parts.

`QemuHost` is what every part knows of the node (set once). `Machines` holds the VMs the
driver knows (`QemuVm`: its `vm.json`, its directory, its QMP and guest-agent connections),
one lock per VM (every change to a VM is made under it), the driver's background tasks, and
the host's word on a VM's power state: a live QEMU whose command line names the VM's
directory means running; `run.json` without such a process means it died while nobody asked
(crashed) unless the `stopping` marker says the driver was stopping it.
"""

import asyncio
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import pci, procfs
from ...domain import Resources
from ...errors import DriverError, InvalidState
from ..base import PowerState, VmRuntime
from . import confine
from .agent import GuestAgent
from .layout import VmConfig, VmPaths, load_config, vm_paths
from .qmp import Monitor


@dataclass(frozen=True, slots=True)
class QemuHost:
    """The node a qemu driver runs VMs on, as its parts need to know it."""

    state_dir: Path
    hostname: str
    accel: str
    qemu_binary: str
    qemu_img: str
    forward_address: str
    """where forwarded ports of user-mode NICs listen"""
    sandbox: bool
    start_timeout: float
    agent_timeout: float
    sysfs_root: Path
    dev_root: Path
    pci_allowlist: pci.Allowlist
    migration_address: str
    """where live migrations into this node listen (QEMU's incoming stream, the NBD export)"""
    max_image_bytes: int
    """the largest virtual size of an image taken from outside (`intake`)"""

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def snapshots_dir(self) -> Path:
        return self.state_dir / "snapshots"

    def runas(self) -> str | None:
        """The user QEMU drops to after start (confine.current()); None: it stays vmplane's.
        A confined QEMU opens nothing by path after its start (the data dir is 0700 root):
        files it needs later are handed to it as descriptors (`Monitor.pass_file`)."""
        user = confine.current()
        return user.name if user is not None else None


@dataclass
class QemuVm:
    config: VmConfig
    paths: VmPaths
    monitor: Monitor | None = None
    agent: GuestAgent | None = None
    transition: PowerState | None = None
    cpu_sample: tuple[int, float, float] | None = None
    balloon_polled: int | None = None
    """the QEMU pid whose balloon was asked to poll the guest's memory statistics"""
    """(pid, monotonic time, CPU seconds) at the previous stats_vm."""
    agent_down_until: float = 0.0
    incoming: bool = False
    """QEMU waits for the state of a live migration (target side, until migrate_finish)."""
    migrated: bool = False
    """the VM's state went to another node (source side): only delete_vm is left to do"""
    reset_mark: tuple[int | None, int, int] | None = None
    """(QEMU pid, resets of that QEMU, serial.log size at the last one): where its boot began"""
    reset_expected: tuple[str, float] | None = None
    """(the boot, a monotonic deadline): a reboot was asked for; that boot is ending"""
    boot: object = None
    """the current boot's readiness tracker (`readiness.Boot`)"""

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def marker(self) -> str:
        """What the command line of this VM's QEMU contains (and no other VM's does)."""
        return str(self.paths.dir) + os.sep


class Machines:
    """The VMs a qemu driver knows, their locks and connections, and their power state as the
    host shows it. `on_guest_poweroff` and `on_reset` are what the driver does when a VM's
    QMP reports the guest powered itself off or the machine reset."""

    def __init__(self, host: QemuHost) -> None:
        self.host = host
        self.vms: dict[str, QemuVm] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.on_guest_poweroff: Callable[[str], Coroutine[Any, Any, None]] | None = None
        self.on_reset: Callable[[str], None] | None = None

    # -- locks and tasks ---------------------------------------------------------------------

    def lock(self, key: str) -> asyncio.Lock:
        """The lock of a VM (or of a template's image: template ids never collide with VM ids)."""
        return self._locks.setdefault(key, asyncio.Lock())

    def drop_lock(self, key: str) -> None:
        self._locks.pop(key, None)

    def background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_background(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # -- finding VMs -------------------------------------------------------------------------

    def load(self, vm_id: str) -> QemuVm | None:
        """The VM, read from its directory if the driver did not hold it yet; None if it has
        no `vm.json`."""
        vm = self.vms.get(vm_id)
        if vm is None:
            paths = vm_paths(self.host.state_dir, vm_id)
            if paths.config.exists():
                vm = self.vms.setdefault(vm_id, QemuVm(load_config(paths), paths))
        return vm

    def vm(self, vm_id: str) -> QemuVm:
        vm = self.load(vm_id)
        if vm is None:
            raise DriverError(f"VM {vm_id} is not defined on {self.host.hostname}", vm_id=vm_id)
        return vm

    def running(self, vm_id: str) -> QemuVm:
        vm = self.vm(vm_id)
        if self.live_pid(vm) is None or self.guest_off(vm):
            state = self.runtime(vm).state
            raise InvalidState(f"VM {vm_id} is {state}, not running", current=state, required="running")
        return vm

    @staticmethod
    def guest_off(vm: QemuVm) -> bool:
        """The guest powered itself off (its QEMU waits paused, -no-shutdown)."""
        return vm.monitor is not None and vm.monitor.guest_off

    # -- connections -------------------------------------------------------------------------

    def monitor(self, vm: QemuVm) -> Monitor:
        if vm.monitor is None:
            vm_id = vm.id

            def poweroff() -> None:
                if self.on_guest_poweroff is not None:
                    self.background(self.on_guest_poweroff(vm_id), f"poweroff-{vm_id}")

            def reset() -> None:
                if self.on_reset is not None:
                    self.on_reset(vm_id)

            vm.monitor = Monitor(vm_id, vm.paths.qmp, on_guest_poweroff=poweroff, on_reset=reset)
        return vm.monitor

    def agent(self, vm: QemuVm) -> GuestAgent:
        if vm.agent is None:
            vm.agent = GuestAgent(vm.id, vm.paths.qga)
        return vm.agent

    async def close_connections(self, vm: QemuVm) -> None:
        for conn in (vm.monitor, vm.agent):
            if conn is not None:
                await conn.close()
        vm.monitor = vm.agent = None

    async def release_connections(self) -> None:
        for vm in self.vms.values():
            await self.close_connections(vm)

    # -- power state, from the host ----------------------------------------------------------

    def runtime(self, vm: QemuVm) -> VmRuntime:
        pid = self.live_pid(vm)
        if pid is not None:
            if vm.incoming or vm.migrated:
                return VmRuntime(vm_id=vm.id, state=PowerState.STARTING if vm.incoming else PowerState.STOPPING)
            state = vm.transition or (PowerState.STOPPING if self.guest_off(vm) else PowerState.RUNNING)
            running = self.started_with(vm) if state == PowerState.RUNNING else None
            return VmRuntime(vm_id=vm.id, state=state, started_at=procfs.start_time(pid), running=running)
        if vm.transition is not None:
            return VmRuntime(vm_id=vm.id, state=vm.transition)
        if vm.paths.run.exists() and not vm.paths.stop_marker.exists():
            return VmRuntime(vm_id=vm.id, state=PowerState.CRASHED, error=self._exit_reason(vm, self._recorded_pid(vm)))
        return VmRuntime(vm_id=vm.id, state=PowerState.STOPPED)

    def _recorded_pid(self, vm: QemuVm) -> int | None:
        """The pid QEMU wrote to its pidfile, else the one the driver recorded at start."""
        try:
            return int(vm.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            pass
        try:
            return int(json.loads(vm.paths.run.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def live_pid(self, vm: QemuVm) -> int | None:
        pid = self._recorded_pid(vm)
        if pid is not None and procfs.is_ours(pid, vm.marker):
            return pid
        return None

    @staticmethod
    def started_with(vm: QemuVm) -> Resources | None:
        """The resources the VM's QEMU has (run.json): those it was started with, the disk as
        grown live since (`Disks.resize`)."""
        try:
            r = json.loads(vm.paths.run.read_text())["resources"]
            return Resources(int(r["cpu"]), int(r["ramMb"]), int(r["diskGb"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _exit_reason(self, vm: QemuVm, pid: int | None) -> str:
        """Why QEMU ended: the tail of its stderr, else its exit status if we reaped it."""
        tail = self.stderr_tail(vm)
        if tail:
            return tail
        status = procfs.reap(pid) if pid is not None else None
        if status is not None and status < 0:
            return f"QEMU exited unexpectedly (killed by signal {-status})"
        if status is not None:
            return f"QEMU exited unexpectedly with status {status}"
        return "QEMU exited unexpectedly"

    @staticmethod
    def stderr_tail(vm: QemuVm) -> str:
        """The last lines QEMU wrote to its stderr in this run (its log is new at each start)."""
        try:
            with open(vm.paths.stderr_log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - 2048))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        return " / ".join(lines[-3:])[-500:]
