"""Live migration of a running qemu VM to another qemu node, for the qemu driver.

The target starts QEMU paused with -incoming and exports its (empty overlay) disk over NBD;
the source mirrors its disk into that export (drive-mirror: the top layer when both sides
have the template's base, all of it otherwise), then migrates RAM and devices; once that
completes (the source pauses) the mirror is completed (block-job-cancel on a ready mirror
leaves the target in sync), the target closes the export and resumes the guest.
"""

import asyncio
import contextlib
import json
import logging
import socket
import time
import uuid
from pathlib import Path

from ... import clock
from ...errors import DriverError, InvalidState
from ..base import MigrationTarget, Progress
from .cmdline import DISK_ID
from .layout import write_json_atomic
from .machines import Machines, QemuHost, QemuVm
from .network import Networking
from .power import Power

log = logging.getLogger("vmplane.drivers.qemu")

MIGRATION_EXPORT = "migration-disk"
MIGRATION_BANDWIDTH = 1 << 30
"""bytes per second a live migration may use (QEMU's default, 128 MiB/s, is for shared links)"""
MIGRATION_DOWNTIME_MS = 300
"""the longest pause of the guest QEMU aims for when it switches over"""


class Migration:
    """Both sides of live migrations of one node's VMs (see the module docstring)."""

    def __init__(self, host: QemuHost, machines: Machines, power: Power, network: Networking) -> None:
        self.host = host
        self.machines = machines
        self.power = power
        self.network = network

    async def listen(self, vm_id: str) -> MigrationTarget:
        """Start the defined, stopped VM `vm_id` paused, waiting for the incoming state, its disk
        exported over NBD on the node's migration address. The caller deletes the VM on failure."""
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} already runs on {self.host.hostname}", current="running", required="stopped")
            await self.power.start_locked(vm, incoming=True)
            vm.incoming = True
            host = self.host.migration_address
            nbd_port, migrate_port = _free_port(host), _free_port(host)
            monitor = self.machines.monitor(vm)
            node = next(b["inserted"]["node-name"] for b in await monitor.execute("query-block") if b.get("device") == DISK_ID)
            await monitor.execute("nbd-server-start", {"addr": {"type": "inet", "data": {"host": host, "port": str(nbd_port)}}})
            await monitor.execute("block-export-add", {"type": "nbd", "id": MIGRATION_EXPORT, "node-name": node, "writable": True, "name": DISK_ID})
            await monitor.execute("migrate-incoming", {"uri": f"tcp:{_uri_host(host)}:{migrate_port}"})
        log.info("VM %s waits for its migration on %s:%d (disk on NBD %d)", vm_id, host, migrate_port, nbd_port)
        return MigrationTarget(host=host, migrate_port=migrate_port, nbd_port=nbd_port, export=DISK_ID)

    async def send(self, vm_id: str, target: MigrationTarget, progress: Progress) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.running(vm_id)
            if vm.config.pci_devices:
                raise DriverError("VMs with host PCI devices cannot migrate", vm_id=vm_id)
            monitor = self.machines.monitor(vm)
            base = vm.config.template_image
            on_template = base is not None and not Path(base).is_relative_to(self.host.state_dir / "snapshots")
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
                await self._abort(vm, job)
                raise
            vm.migrated = True
            await progress(100, f"migrated in {time.monotonic() - t0:.2f} s (paused {m.get('downtime', '?')} ms)")
            log.info("VM %s migrated to %s (downtime %s ms, total %s ms)", vm_id, target.host, m.get("downtime"), m.get("total-time"))

    async def _abort(self, vm: QemuVm, job: str | None) -> None:
        """Stop an outgoing migration and mirror; the guest runs on here."""
        monitor = self.machines.monitor(vm)
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

    async def finish(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is None:
                raise DriverError(f"VM {vm_id} is not waiting for a migration here", vm_id=vm_id)
            monitor = self.machines.monitor(vm)
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
                self.machines.background(self.network.addresses_later(vm.id, ()), f"aliases-{vm.id}")

    async def cancel(self, vm_id: str) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vms.get(vm_id)
            if vm is None or self.machines.live_pid(vm) is None:
                return
            await self._abort(vm, None)


def _free_port(host: str) -> int:
    """A TCP port free on `host` now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
