"""What every handler shares: default rollback/discard, and loading the task's VM."""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import DEFAULT_BOOT_ORDER, BootSetup, Resources, Vm, VmSpec, VmStatus
from ...drivers.base import HypervisorDriver, PowerState
from ...errors import DriverError, NodeUnreachable, VmplaneError
from ...store import isos as iso_q
from ...store import vms as vm_q
from ..engine import TaskContext

T = TypeVar("T")
NODE_RETRY_SECONDS = 2.0


async def when_node_answers(ctx: TaskContext, call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, an idempotent driver call, asked again while its node is out of reach (an
    agent restarting, a network cut), for up to four offline timeouts (at least a minute);
    after that its NodeUnreachable is the task's error. For calls whose failure would leave
    the store describing what the node may no longer have: a delete that failed half-way
    left a VM `error` in the store, holding its claim, that its node had removed."""
    wait = max(60.0, 4 * ctx.deps.settings.node_offline_seconds)
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            return await call()
        except NodeUnreachable as exc:
            if time.monotonic() + NODE_RETRY_SECONDS > deadline:
                raise
            if not said:
                ctx.log(f"{exc.message}; asking again until it answers (up to {wait:g} s)")
                said = True
            await asyncio.sleep(NODE_RETRY_SECONDS)


class BaseHandler:
    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        return None

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        return None


async def find_vm(ctx: TaskContext) -> Vm | None:
    """The task's VM, or None once it was deleted (a rollback then has nothing to put right)."""
    async with ctx.deps.store.read() as conn:
        return await vm_q.get_vm(conn, ctx.resource_id)


async def load_vm(ctx: TaskContext) -> Vm:
    vm = await find_vm(ctx)
    if vm is None:
        raise VmplaneError(f"VM {ctx.resource_id} no longer exists")
    return vm


def driver_of(ctx: TaskContext, vm: Vm) -> HypervisorDriver:
    """The driver of the node the VM is on. The handlers that ask work on a VM a create placed;
    one on no node (its create failed before placement) has no driver: an error, said so."""
    if vm.node_id is None:
        raise VmplaneError(f"VM {vm.id} is not placed on any node")
    return ctx.deps.registry.driver(vm.node_id)


async def set_status(ctx: TaskContext, vm_id: str, status: VmStatus, **values: object) -> None:
    """Record the VM's status now (not with the task's end); only while the run still holds
    its task (a stalled run must not mark a VM its successor already finished with)."""
    await ctx.fence()
    async with ctx.deps.store.write() as conn:
        await vm_q.set_status(conn, vm_id, status.value, updated_at=clock.now(), **values)


def boot_setup(
    ctx: TaskContext, vm: Vm, cdrom_iso_id: str | None, boot_order: tuple[str, ...] = (), firmware: str | None = None
) -> BootSetup:
    """What the VM boots: the path of the ISO in its CD-ROM (made from its checked id only,
    store/isos.py), its boot order and firmware (empty or None: the defaults)."""
    cdrom = str(iso_q.iso_path(ctx.deps.data_dir / iso_q.ISOS_DIR, cdrom_iso_id)) if cdrom_iso_id else None
    return BootSetup(cdrom=cdrom, order=boot_order or DEFAULT_BOOT_ORDER, firmware=firmware or "bios")


def check_boot_on(driver: HypervisorDriver, node_id: str, boot: BootSetup, vm_id: str) -> None:
    """DriverError when the VM asks for a CD-ROM, boot order or firmware its node cannot give."""
    if boot != BootSetup() and not driver.capabilities.cdrom:
        raise DriverError(f"node {node_id} cannot give VMs a CD-ROM, a boot order or a firmware choice", vm_id=vm_id)


async def vm_spec(ctx: TaskContext, vm: Vm, template_image: str | None = None, template_boot: dict[str, str] | None = None) -> VmSpec:
    """What the VM's driver needs to define it, from the store as it is now."""
    async with ctx.deps.store.read() as conn:
        nics = await ctx.deps.networks.nics(conn, vm)
        firewall = await ctx.deps.networks.firewall_of(conn, vm.id)
    return VmSpec(
        id=vm.id,
        uuid=vm.uuid,
        name=vm.name,
        resources=Resources(vm.cpu, vm.ram_mb, vm.disk_gb),
        template_id=vm.template_id,
        template_image=template_image,
        template_boot=template_boot,
        extra=vm.spec.to_json(),
        nics=nics,
        firewall=firewall,
        pci_devices=vm.spec.pci_assigned,
        boot=boot_setup(ctx, vm, vm.cdrom_iso_id, vm.spec.boot_order, vm.spec.firmware),
    )


FORWARD_FAILED = "host forwarding rule"
"""what QEMU says when it cannot bind a forwarded port ("Could not set up host forwarding rule")"""


async def start_vm(ctx: TaskContext, vm_id: str, driver: HypervisorDriver) -> None:
    """Start a defined VM on its node, its forwarded ports made usable first: ports another
    program took while it was stopped are re-picked (GuestService.ensure_ports), and once
    more if one was taken between that look and QEMU's bind."""
    for line in await ctx.deps.guest.ensure_ports(vm_id, driver):
        ctx.log(line)
    try:
        await driver.start_vm(vm_id)
    except DriverError as exc:
        if FORWARD_FAILED not in exc.message:
            raise
        lines = await ctx.deps.guest.ensure_ports(vm_id, driver)
        if not lines:
            raise
        for line in lines:
            ctx.log(line)
        await driver.start_vm(vm_id)


async def while_stopped(ctx: TaskContext, vm: Vm, work: Callable[[HypervisorDriver], Awaitable[None]]) -> None:
    """Stop the VM if it runs, run `work(driver)`, start the VM again if it was running; the
    VM's final status is recorded with the task's end."""
    driver = driver_of(ctx, vm)
    runtime = await driver.get_vm(vm.id)
    if "wasRunning" not in ctx.payload:
        ctx.payload["wasRunning"] = runtime is not None and runtime.state == PowerState.RUNNING
    if runtime is not None and runtime.state != PowerState.STOPPED:
        await set_status(ctx, vm.id, VmStatus.STOPPING)
        await driver.stop_vm(vm.id)
    await work(driver)
    if ctx.payload["wasRunning"]:
        await set_status(ctx, vm.id, VmStatus.STARTING)
        await start_vm(ctx, vm.id, driver)
        runtime = await driver.get_vm(vm.id)
        if runtime is None:
            raise DriverError(f"VM {vm.id} is gone from its node right after it started")
        started, running = runtime.started_at or clock.now(), runtime.running_spec
        ctx.defer(
            lambda conn: vm_q.set_status(
                conn, vm.id, VmStatus.RUNNING.value, started_at=started, updated_at=clock.now(), running_spec=running
            )
        )
    else:
        ctx.defer(lambda conn: vm_q.set_status(conn, vm.id, VmStatus.STOPPED.value, started_at=None, updated_at=clock.now()))
