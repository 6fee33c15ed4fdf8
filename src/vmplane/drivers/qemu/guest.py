"""What the qemu driver reads from or runs in a running guest: commands through the guest
agent, the serial console (a unix socket, and its log file), and measured usage (QEMU's
process on the host, its block statistics, the guest's own interface counters).
"""

import asyncio
import os
import time

from ... import clock, procfs
from ...errors import DriverError
from ..base import ExecResult, VmStats
from .cmdline import DISK_ID
from .machines import Machines, QemuHost, QemuVm
from .unix import connect_unix

AGENT_RETRY_AFTER = 30.0
"""stats_vm does not wait for an agent that did not answer within this many seconds."""


class Guest:
    """Exec, console and stats of one node's VMs."""

    def __init__(self, host: QemuHost, machines: Machines) -> None:
        self.host = host
        self.machines = machines

    async def exec(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        vm = self.machines.running(vm_id)
        return await self.machines.agent(vm).exec(list(argv), timeout, max_output, ready_timeout=self.host.agent_timeout)

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        vm = self.machines.running(vm_id)
        try:
            return await asyncio.open_unix_connection(sock=connect_unix(vm.paths.serial))
        except OSError as exc:
            raise DriverError("cannot connect to the serial console", vm_id=vm_id, reason=exc.strerror) from exc

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        vm = self.machines.vm(vm_id)
        try:
            with open(vm.paths.serial_log, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    async def stats(self, vm_id: str) -> VmStats:
        vm = self.machines.running(vm_id)
        pid = self.machines.live_pid(vm)
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
        for dev in await self.machines.monitor(vm).execute("query-blockstats"):
            if dev.get("device") == DISK_ID:
                rd, wr = int(dev["stats"]["rd_bytes"]), int(dev["stats"]["wr_bytes"])
        rx, tx = await self._net_bytes(vm)
        return VmStats(
            cpu_percent=round(max(0.0, cpu_percent), 1),
            memory_mb=procfs.rss_bytes(pid) // (1 << 20),
            memory_total_mb=(self.machines.started_with(vm) or vm.config.resources).ram_mb,
            disk_read_bytes=rd,
            disk_write_bytes=wr,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            uptime_seconds=max(0.0, clock.now() - started),
        )

    async def _net_bytes(self, vm: QemuVm) -> tuple[int, int]:
        """eth0's counters as the guest agent reports them; (0, 0) without an agent."""
        if time.monotonic() < vm.agent_down_until:
            return 0, 0
        try:
            ifaces = await self.machines.agent(vm).execute("guest-network-get-interfaces", timeout=2.0, ready_timeout=1.0)
        except DriverError:
            vm.agent_down_until = time.monotonic() + AGENT_RETRY_AFTER
            return 0, 0
        for iface in ifaces or []:
            if iface.get("name") == "eth0":
                stats = iface.get("statistics") or {}
                return int(stats.get("rx-bytes", 0)), int(stats.get("tx-bytes", 0))
        return 0, 0

