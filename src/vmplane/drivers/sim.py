"""The `sim` driver: an in-memory hypervisor with honest capacity, a real power state
machine, configurable latencies and deterministic fault injection.

It exists for demos on machines with no QEMU and for scale tests with thousands of nodes,
and passes the same driver contract suite as `qemu`.
"""

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from .. import clock, pci
from ..domain import BootSetup, Resources, VmSpec
from ..domain.network import Firewall, Nic
from ..errors import DriverError, InvalidState, NoCapacity
from . import statefile
from .base import Capabilities, GuestState, HypervisorDriver, ImageInfo, NodeInfo, PowerState, Progress, VmRuntime

QCOW2_MAGIC = b"QFI\xfb"


@dataclass(frozen=True)
class SimFaults:
    """Deterministic fault injection for create: by name pattern, or a seeded fraction of ids."""

    name_pattern: str | None = None
    fraction: float = 0.0
    seed: int = 0
    ignore_acpi_pattern: str | None = None
    """Guests whose name matches ignore the ACPI power button (shutdown must force)."""

    def should_fail(self, spec: VmSpec) -> bool:
        if self.name_pattern and re.search(self.name_pattern, spec.name):
            return True
        if self.fraction > 0:
            digest = hashlib.sha256(f"{self.seed}:{spec.name}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < self.fraction
        return False


@dataclass
class _SimVm:
    spec: VmSpec
    resources: Resources
    state: PowerState = PowerState.STOPPED
    started_at: float | None = None
    pending: Resources | None = None


class _Call:
    """One contract call being recorded in the call log: the method says "noop" when it finds
    the work already done; an exception makes it "error". Written when the block ends, so a
    line states the outcome, never an intent."""

    __slots__ = ("driver", "call", "vm", "snapshot", "effect", "resources")

    def __init__(self, driver: "SimDriver | None", call: str, vm: str | None, snapshot: str | None) -> None:
        self.driver, self.call, self.vm, self.snapshot = driver, call, vm, snapshot
        self.effect = "done"
        self.resources: Resources | None = None

    def __enter__(self) -> "_Call":
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if self.driver is None:
            return
        error = None
        if kind is not None:
            self.effect = "error"
            error = str(exc) or kind.__name__
        self.driver._log_call(self, error)


@dataclass
class SimDriver(HypervisorDriver):
    hostname: str
    cpu: int = 32
    ram_mb: int = 131072
    disk_gb: int = 2000
    latency: float = 0.02
    faults: SimFaults = field(default_factory=SimFaults)
    overcommit: tuple[float, float, float] = (1.0, 1.0, 1.0)
    state_dir: Path | None = None
    """Where the simulated hypervisor keeps its state, so its VMs outlive the process as
    real ones do. None keeps everything in memory."""
    sysfs_root: Path | None = None
    """A sysfs tree (a fake one in tests) whose devices the allowlist admits are offered for
    passthrough, as a real node would offer them; nothing is bound, the VMs are simulated."""
    pci_allowlist: tuple[str, ...] = ()
    guest_boot: float = 0.3
    """seconds from a start or reboot until the simulated guest is ready (`guest_state`)"""
    call_log: bool = False
    """Append one line per call that may change the node to `<state_dir>/<hostname>.calls.jsonl`
    once its outcome is known (done, noop or error), for a checker to compare the node's
    history with the control plane's (the chaos soak). Needs `state_dir`."""

    def __post_init__(self) -> None:
        self._pci_allow = pci.Allowlist(self.pci_allowlist)
        self._pci: tuple[pci.PciDevice, ...] = ()
        if self.sysfs_root is not None and self._pci_allow:
            self._pci = tuple(pci.offered(self.sysfs_root, self._pci_allow))
        # bridge networks are simulated too; firewalls are recorded, not enforced (no packets)
        self.capabilities = Capabilities(
            kind="sim", real_vms=False, live_resize_disk=True, pci_passthrough=bool(self._pci),
            network_types=frozenset({"user", "bridge"}), firewall=False, cdrom=True,
        )  # fmt: skip
        self._vms: dict[str, _SimVm] = {}
        self._images: dict[str, ImageInfo] = {}
        self._snapshots: dict[str, ImageInfo] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._calls_fd: int | None = None

    # -- helpers -------------------------------------------------------------------------

    def _call(self, call: str, vm: str | None = None, snapshot: str | None = None) -> _Call:
        return _Call(self if self._calls_fd is not None else None, call, vm, snapshot)

    def _log_call(self, c: _Call, error: str | None) -> None:
        """One os.write of a whole line on an O_APPEND file: a kill -9 cannot leave half a line
        before another one, only (at worst) a missing last line."""
        assert self._calls_fd is not None
        c_, r_, d_ = self.overcommit
        res = c.resources
        line = orjson.dumps(
            {
                "t": time.time(), "node": self.hostname, "call": c.call, "vm": c.vm, "snapshot": c.snapshot,
                "effect": c.effect, "error": error, "held": list(self._held()),
                "capacity": [self.cpu * c_, self.ram_mb * r_, self.disk_gb * d_],
                "resources": None if res is None else [res.cpu, res.ram_mb, res.disk_gb],
            }
        )  # fmt: skip
        os.write(self._calls_fd, line + b"\n")

    async def _delay(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _vm(self, vm_id: str) -> _SimVm:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise DriverError(f"VM {vm_id} is not defined on {self.hostname}", vm_id=vm_id)
        return vm

    def _held(self) -> tuple[int, int, int]:
        cpu = ram = disk = 0
        for vm in self._vms.values():
            cpu += vm.resources.cpu
            ram += vm.resources.ram_mb
            disk += vm.resources.disk_gb
        return cpu, ram, disk

    def _check_capacity(self, add: Resources) -> None:
        cpu, ram, disk = self._held()
        c, r, d = self.overcommit
        if cpu + add.cpu > self.cpu * c or ram + add.ram_mb > self.ram_mb * r or disk + add.disk_gb > self.disk_gb * d:
            raise NoCapacity(f"{self.hostname} cannot hold {add.cpu} vCPUs, {add.ram_mb} MB RAM, {add.disk_gb} GB disk more")

    async def _check_pci(self, spec: VmSpec) -> None:
        """The devices `spec` asks for: offered here (whole IOMMU groups) and held by no other VM."""
        if not spec.pci_devices:
            return
        if self.sysfs_root is None or not self._pci:
            raise DriverError(f"{self.hostname} offers no PCI devices for passthrough", vm_id=spec.id)
        await asyncio.to_thread(pci.plan_passthrough, self.sysfs_root, spec.pci_devices, self._pci_allow)
        for vm in self._vms.values():
            taken = {a.lower() for a in vm.spec.pci_devices} & {a.lower() for a in spec.pci_devices}
            if taken:
                raise DriverError(f"PCI device {', '.join(sorted(taken))} is given to VM {vm.spec.id} already", vm_id=spec.id)

    def _state_file(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / f"{self.hostname}.json"

    def _save(self) -> None:
        path = self._state_file()
        if path is None:
            return
        data = {
            "vms": [
                {
                    "id": v.spec.id,
                    "uuid": v.spec.uuid,
                    "name": v.spec.name,
                    "templateId": v.spec.template_id,
                    "resources": v.resources.to_wire(),
                    "pending": v.pending.to_wire() if v.pending else None,
                    "state": str(v.state),
                    "startedAt": v.started_at,
                    "pciDevices": list(v.spec.pci_devices),
                    "boot": v.spec.boot.to_wire(),
                    "nics": [n.to_wire() for n in v.spec.nics],
                    "firewall": v.spec.firewall.to_wire(),
                }
                for v in self._vms.values()
            ],
            "images": {k: [str(i.path), i.format, i.virtual_size] for k, i in self._images.items()},
            "snapshots": {k: [str(i.path), i.format, i.virtual_size] for k, i in self._snapshots.items()},
        }
        # rewritten on every call of a bulk create: orjson encodes a node's 10 VMs in 2 µs
        # against the json module's 35, and statefile writes in place (see there)
        statefile.rewrite(path, orjson.dumps(data))

    def _load(self) -> None:
        path = self._state_file()
        if path is None or not path.exists():
            return
        data = json.loads(path.read_text())

        def res(d: dict[str, Any]) -> Resources:
            return Resources(d["cpu"], d["ramMb"], d["diskGb"])

        for v in data["vms"]:
            spec = VmSpec(
                id=v["id"], uuid=v["uuid"], name=v["name"], resources=res(v["resources"]), template_id=v["templateId"],
                pci_devices=tuple(v.get("pciDevices", ())),
                nics=tuple(Nic.from_wire(n) for n in v.get("nics") or ()),
                firewall=Firewall.from_wire(v.get("firewall")), boot=BootSetup.from_wire(v.get("boot")),
            )  # fmt: skip
            state = PowerState(v["state"])
            if state in (PowerState.STARTING, PowerState.STOPPING):  # interrupted mid-way
                state = PowerState.STOPPED
            self._vms[spec.id] = _SimVm(
                spec=spec,
                resources=res(v["resources"]),
                state=state,
                started_at=v["startedAt"] if state == PowerState.RUNNING else None,
                pending=res(v["pending"]) if v["pending"] else None,
            )
        for k, (p, fmt, size) in data["images"].items():
            self._images[k] = ImageInfo(path=Path(p), format=fmt, virtual_size=size, actual_size=size)
        for k, (p, fmt, size) in data.get("snapshots", {}).items():
            self._snapshots[k] = ImageInfo(path=Path(p), format=fmt, virtual_size=size, actual_size=0)

    # -- contract --------------------------------------------------------------------------

    async def open(self) -> None:
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._vms.clear()
            self._images.clear()
            self._snapshots.clear()
            self._load()
            if self.call_log and self._calls_fd is None:
                path = self.state_dir / f"{self.hostname}.calls.jsonl"
                self._calls_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    async def close(self) -> None:
        if self._calls_fd is not None:
            os.close(self._calls_fd)
            self._calls_fd = None

    async def node_info(self) -> NodeInfo:
        return NodeInfo(hostname=self.hostname, cpu=self.cpu, ram_mb=self.ram_mb, disk_gb=self.disk_gb, pci_devices=self._pci)

    async def create_vm(self, spec: VmSpec) -> None:
        async with self._lock(spec.id):
            with self._call("create_vm", spec.id) as c:
                c.resources = spec.resources
                if spec.id in self._vms:
                    c.effect = "noop"
                    return
                await self._delay()
                if self.faults.should_fail(spec):
                    raise DriverError(f"simulated failure creating {spec.name}", vm_id=spec.id)
                if spec.template_id is not None and spec.template_id not in self._images:
                    raise DriverError(f"template {spec.template_id} has no image on {self.hostname}", vm_id=spec.id)
                snapshot_base = spec.template_image is not None and "/snapshots/" in spec.template_image
                if snapshot_base and not any(str(i.path) == spec.template_image for i in self._snapshots.values()):
                    raise DriverError(f"snapshot image {spec.template_image} is not on {self.hostname}", vm_id=spec.id)
                self._check_capacity(spec.resources)
                await self._check_pci(spec)
                self._vms[spec.id] = _SimVm(spec=spec, resources=spec.resources)
                self._save()

    async def start_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            with self._call("start_vm", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state == PowerState.RUNNING:
                    c.effect = "noop"
                    return
                vm.state = PowerState.STARTING
                await self._delay()
                if vm.pending is not None:
                    vm.resources, vm.pending = vm.pending, None
                c.resources = vm.resources
                vm.state = PowerState.RUNNING
                vm.started_at = clock.now()
                self._save()

    async def stop_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            with self._call("stop_vm", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state == PowerState.STOPPED:
                    c.effect = "noop"
                    return
                vm.state = PowerState.STOPPED
                vm.started_at = None
                self._save()

    async def shutdown_vm(self, vm_id: str, timeout: float) -> bool:
        async with self._lock(vm_id):
            with self._call("shutdown_vm", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state == PowerState.STOPPED:
                    c.effect = "noop"
                    return True
                vm.state = PowerState.STOPPING
                pattern = self.faults.ignore_acpi_pattern
                if pattern and re.search(pattern, vm.spec.name):
                    await asyncio.sleep(timeout)
                    graceful = False
                else:
                    await self._delay()
                    graceful = True
                vm.state = PowerState.STOPPED
                vm.started_at = None
                self._save()
                return graceful

    async def reboot_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            with self._call("reboot_vm", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state != PowerState.RUNNING:
                    raise InvalidState(f"VM {vm_id} is {vm.state}, not running", current=vm.state, required="running")
                await self._delay()
                vm.started_at = clock.now()
                self._save()

    async def power_cycle_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            with self._call("power_cycle_vm", vm_id) as c:
                vm = self._vm(vm_id)
                await self._delay()
                if vm.pending is not None:
                    vm.resources, vm.pending = vm.pending, None
                c.resources = vm.resources
                vm.state = PowerState.RUNNING
                vm.started_at = clock.now()
                self._save()

    async def delete_vm(self, vm_id: str) -> None:
        async with self._lock(vm_id):
            with self._call("delete_vm", vm_id) as c:
                vm = self._vms.pop(vm_id, None)
                if vm is None:
                    c.effect = "noop"
                else:
                    c.resources = vm.resources
                    await self._delay()
                    self._save()
        self._locks.pop(vm_id, None)

    async def set_boot(self, vm_id: str, boot: BootSetup) -> None:
        """Recorded (the CD-ROM's ISO, boot order and firmware), as the VM's spec: nothing boots."""
        async with self._lock(vm_id):
            with self._call("set_boot", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                await self._delay()
                vm.spec = replace(vm.spec, boot=boot)
                self._save()

    def boot_of(self, vm_id: str) -> BootSetup:
        """What the VM was told to boot (what a qemu VM's command line and CD-ROM would hold)."""
        return self._vm(vm_id).spec.boot

    async def resize_vm(self, vm_id: str, resources: Resources) -> None:
        async with self._lock(vm_id):
            with self._call("resize_vm", vm_id) as c:
                c.resources = resources
                vm = self._vm(vm_id)
                current = vm.pending or vm.resources
                if resources.disk_gb < current.disk_gb:
                    raise DriverError(f"disk of {vm_id} cannot shrink from {current.disk_gb} to {resources.disk_gb} GB")
                grow = Resources(
                    max(0, resources.cpu - vm.resources.cpu),
                    max(0, resources.ram_mb - vm.resources.ram_mb),
                    max(0, resources.disk_gb - vm.resources.disk_gb),
                )
                self._check_capacity(grow)
                await self._delay()
                if vm.state == PowerState.STOPPED:
                    # what the next start runs with: a shape left pending from a resize while it
                    # ran is superseded (the next start applied it, over this one: the chaos soak
                    # found a VM started at 4 GB that the store, and its claim, said was 1 GB)
                    vm.resources, vm.pending = resources, None
                else:  # disk grows live; CPU and RAM wait for the next start
                    vm.resources = Resources(vm.resources.cpu, vm.resources.ram_mb, resources.disk_gb)
                    vm.pending = resources
                self._save()

    async def get_vm(self, vm_id: str) -> VmRuntime | None:
        vm = self._vms.get(vm_id)
        if vm is None:
            return None
        return _runtime(vm_id, vm)

    async def list_vms(self) -> list[VmRuntime]:
        return [_runtime(i, v) for i, v in self._vms.items()]

    async def guest_state(self, vm_id: str, wait: float = 0.0) -> GuestState:
        """The simulated guest is ready `guest_boot` seconds after its start or reboot."""
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            vm = self._vms.get(vm_id)
            if vm is None or vm.state != PowerState.RUNNING or vm.started_at is None:
                state = vm.state if vm is not None else "undefined"
                raise InvalidState(f"VM {vm_id} is {state}, not running", current=str(state), required="running")
            boot = repr(vm.started_at)
            left = vm.started_at + self.guest_boot - clock.now()
            if left <= 0:
                return GuestState(ready=True, boot=boot, detail="the simulated guest booted")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return GuestState(ready=False, boot=boot, detail="the simulated guest is booting")
            await asyncio.sleep(min(left, remaining, 0.5))

    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        async with self._lock(vm_id):
            with self._call("snapshot_vm", vm_id, snapshot_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if snapshot_id in self._snapshots:
                    c.effect = "noop"
                else:
                    await self._delay()
                    size = vm.resources.disk_gb * 2**30
                    self._snapshots[snapshot_id] = ImageInfo(
                        path=Path(f"/sim/{self.hostname}/snapshots/{snapshot_id}"), format="qcow2", virtual_size=size, actual_size=0
                    )
                    self._save()
                return self._snapshots[snapshot_id]

    async def revert_vm(self, vm_id: str, snapshot_image: str) -> None:
        async with self._lock(vm_id):
            with self._call("revert_vm", vm_id, snapshot_image.rsplit("/", 1)[-1]) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state != PowerState.STOPPED:
                    raise InvalidState(f"VM {vm_id} must be stopped to revert", current=vm.state, required="stopped")
                if not any(str(i.path) == snapshot_image for i in self._snapshots.values()):
                    raise DriverError(f"snapshot image {snapshot_image} is not on {self.hostname}", vm_id=vm_id)
                await self._delay()

    async def delete_snapshot(self, snapshot_id: str) -> None:
        with self._call("delete_snapshot", None, snapshot_id) as c:
            if self._snapshots.pop(snapshot_id, None) is None:
                c.effect = "noop"
            else:
                self._save()

    async def import_image(self, template_id: str, source: Path, progress: Progress) -> ImageInfo:
        with self._call("import_image") as c:
            if template_id in self._images:
                c.effect = "noop"
                return self._images[template_id]
            try:
                size = source.stat().st_size
                with source.open("rb") as f:
                    head = f.read(4)
            except OSError as exc:
                raise DriverError(f"cannot read image {source.name}: {exc.strerror}") from exc
            if size == 0:
                raise DriverError("image is empty")
            fmt = "qcow2" if head == QCOW2_MAGIC else "raw"
            await self._delay()
            info = ImageInfo(path=source, format=fmt, virtual_size=size, actual_size=size)
            self._images[template_id] = info
            self._save()
        await progress(100, f"image registered on {self.hostname}")
        return info

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        async with self._lock(vm_id):
            with self._call("set_network", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                await self._delay()
                vm.spec = replace(vm.spec, nics=tuple(nics), firewall=firewall)
                self._save()

    async def move_ports(self, vm_id: str, moves: Mapping[tuple[str, int], int]) -> None:
        async with self._lock(vm_id):
            with self._call("move_ports", vm_id) as c:
                vm = self._vm(vm_id)
                c.resources = vm.resources
                if vm.state != PowerState.STOPPED:
                    raise InvalidState(f"VM {vm_id} is {vm.state}: its forwarded ports move while it is stopped", current=str(vm.state))
                extra = dict(vm.spec.extra or {})
                extra["expose"] = [
                    {**e, "hostPort": moves.get((str(e.get("protocol") or "tcp"), e.get("hostPort")), e.get("hostPort"))}
                    for e in extra.get("expose") or []
                ]
                if isinstance(extra.get("ssh"), dict):
                    ssh = extra["ssh"]
                    extra["ssh"] = {**ssh, "hostPort": moves.get(("tcp", ssh.get("hostPort")), ssh.get("hostPort"))}
                vm.spec = replace(vm.spec, extra=extra)
                self._save()

    async def delete_image(self, template_id: str) -> None:
        with self._call("delete_image") as c:
            if self._images.pop(template_id, None) is None:
                c.effect = "noop"
            else:
                self._save()


def _runtime(vm_id: str, vm: _SimVm) -> VmRuntime:
    """`resources` is what the running VM has (CPU and RAM of its last start, the disk as
    grown); `pending` waits for the next start or power-cycle, as on qemu."""
    running = vm.resources if vm.state == PowerState.RUNNING else None
    return VmRuntime(vm_id=vm_id, state=vm.state, started_at=vm.started_at, running=running)
