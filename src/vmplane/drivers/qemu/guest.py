"""What the qemu driver reads from or runs in a running guest: commands through the guest
agent, the serial console (a unix socket, and its log file), and measured usage (QEMU's
process on the host, QEMU's block statistics of the disk it was given, a bridge NIC's host
tap counters, a user-mode NIC's counters as the guest reports them for the NIC's MAC).
"""

import asyncio
import os
import time
from pathlib import Path

from ... import clock, procfs
from ...domain.network import tap_name
from ...errors import DriverError
from ..base import ExecResult, VmStats
from .cmdline import BALLOON_ID, DISK_ID
from .machines import Machines, QemuHost, QemuVm
from .unix import connect_unix

AGENT_RETRY_AFTER = 30.0
"""stats_vm does not wait for an agent that did not answer within this many seconds."""
SYS_CLASS_NET = Path("/sys/class/net")
BALLOON_POLL_SECONDS = 2
"""how often the guest's balloon driver refreshes its memory statistics (the web console
samples every 2 s)"""


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
        guest_mb = await self._guest_memory_mb(vm, pid)
        return VmStats(
            cpu_percent=round(max(0.0, cpu_percent), 1),
            memory_mb=procfs.rss_bytes(pid) // (1 << 20) if guest_mb is None else guest_mb,
            memory_source="host-rss" if guest_mb is None else "guest",
            memory_total_mb=(self.machines.started_with(vm) or vm.config.resources).ram_mb,
            disk_read_bytes=rd,
            disk_write_bytes=wr,
            net_rx_bytes=rx,
            net_tx_bytes=tx,
            uptime_seconds=max(0.0, clock.now() - started),
        )

    async def _guest_memory_mb(self, vm: QemuVm, pid: int) -> int | None:
        """The memory the guest uses, in MiB, as its virtio-balloon driver reports it: total
        minus available (what it could not hand out without swapping: page cache it can drop
        does not count). None
        while the guest reports nothing (no balloon device, as in a VM started before it was
        added; no balloon driver in the guest; no report yet in this boot)."""
        qmp = self.machines.monitor(vm)
        path = f"/machine/peripheral/{BALLOON_ID}"
        try:
            if vm.balloon_polled != pid:  # once per QEMU process: it keeps polling from then on
                await qmp.execute("qom-set", {"path": path, "property": "guest-stats-polling-interval", "value": BALLOON_POLL_SECONDS})
                vm.balloon_polled = pid
            got = await qmp.execute("qom-get", {"path": path, "property": "guest-stats"})
        except DriverError:
            return None
        return guest_used_mb(got)

    async def _net_bytes(self, vm: QemuVm) -> tuple[int, int]:
        """The VM's network bytes (received, sent), summed over its NICs, each counted where
        the guest cannot fake it if it can be:

        - a bridge NIC: its host tap (`/sys/class/net/<tap>/statistics`; what the tap sends
          is what the guest receives);
        - a user-mode NIC (QEMU's slirp has no host device, and QEMU 7.2 keeps no counters
          of a netdev): the guest's own interface with the NIC's MAC, as the guest agent
          reports it, whatever the guest named it (`eth0`, `ens3`); nothing without an agent.
        """
        rx = tx = 0
        by_guest: list[str] = []
        for i, (kind, mac) in enumerate(_nics(vm)):
            counted = tap_bytes(tap_name(vm.id, i)) if kind == "bridge" else None
            if counted is None:
                by_guest.append(mac)
            else:
                rx, tx = rx + counted[0], tx + counted[1]
        if by_guest:
            guest = await self._guest_bytes(vm)
            for mac in by_guest:
                grx, gtx = guest.get(mac, (0, 0))
                rx, tx = rx + grx, tx + gtx
        return rx, tx

    async def _guest_bytes(self, vm: QemuVm) -> dict[str, tuple[int, int]]:
        """{MAC: (rx, tx)} of the guest's interfaces as its agent reports them ({} without an
        agent). Where interfaces share a MAC (a bridge or VLAN inside the guest on top of the
        NIC) the one that counted most is the NIC itself."""
        if time.monotonic() < vm.agent_down_until:
            return {}
        try:
            ifaces = await self.machines.agent(vm).execute("guest-network-get-interfaces", timeout=2.0, ready_timeout=1.0)
        except DriverError:
            vm.agent_down_until = time.monotonic() + AGENT_RETRY_AFTER
            return {}
        out: dict[str, tuple[int, int]] = {}
        for iface in ifaces if isinstance(ifaces, list) else []:
            if not isinstance(iface, dict):
                continue
            mac = str(iface.get("hardware-address") or "").lower()
            stats = iface.get("statistics")
            if not mac or not isinstance(stats, dict):
                continue
            try:
                counted = (max(0, int(stats.get("rx-bytes", 0))), max(0, int(stats.get("tx-bytes", 0))))
            except (TypeError, ValueError):
                continue
            if sum(counted) >= sum(out.get(mac, (0, 0))):
                out[mac] = counted
        return out


def _nics(vm: QemuVm) -> list[tuple[str, str]]:
    """(network type, MAC in lower case) of each NIC in order (VMs defined before networks:
    one user-mode NIC)."""
    if not vm.config.nics:
        return [("user", vm.config.mac.lower())]
    return [(nic.network.type, nic.mac.lower()) for nic in vm.config.nics]


def tap_bytes(tap: str, sys_class_net: Path = SYS_CLASS_NET) -> tuple[int, int] | None:
    """(guest received, guest sent) bytes of a host tap: the tap's own tx and rx. None when
    the tap is not there (its VM is not running here)."""
    try:
        base = sys_class_net / tap / "statistics"
        return int((base / "tx_bytes").read_text()), int((base / "rx_bytes").read_text())
    except (OSError, ValueError):
        return None


def guest_used_mb(got: object) -> int | None:
    """MiB in use from a balloon's `guest-stats` ({"stats": {"stat-total-memory": bytes,
    "stat-available-memory": bytes, ...}, "last-update": epoch s}); None when the guest has
    not reported (last-update 0, or -1 for a figure it does not give)."""
    if not isinstance(got, dict) or not got.get("last-update"):
        return None
    stats = got.get("stats")
    if not isinstance(stats, dict):
        return None
    total, available = stats.get("stat-total-memory"), stats.get("stat-available-memory")
    if not isinstance(total, int) or not isinstance(available, int) or total <= 0 or not 0 <= available <= total:
        return None
    return (total - available) // (1 << 20)
