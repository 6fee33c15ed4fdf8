"""vm-move and vm-migrate: a VM goes to another node.

vm-move (a stopped VM; what a drain does): claim room on the target, make the template's
image available there, define the VM there, copy its disk (export on the source, import on the
target: a sparse raw stream through the control plane; drivers without disks, the sim, have
nothing to copy), record the VM on the target, remove it from the source.

vm-migrate (a running VM, live): the same up to the definition, then the target starts the VM
waiting for its state, the source mirrors its disk into the target and migrates its memory
(QEMU's migration; the guest pauses for a moment), the target resumes it. The guest keeps its
uptime, memory and disk.

The VM record names the target in `spec.moveTo` from the claim until the end, so an
interrupted attempt is resumed with the same target (and rolled back from it on failure).
VMs with snapshots or PCI devices stay where they are: snapshots are images on their node, and
devices belong to their host.
"""

import logging
import uuid

from ... import clock
from ...domain import Vm, VmStatus
from ...drivers.base import HypervisorDriver
from ...errors import DriverError, InvalidState, VmplaneError
from ...placement import Demand
from ...store import snapshots as snap_q
from ...store import vms as vm_q
from ...vmstates import VmOp, require_state
from ..engine import TaskContext
from .base import BaseHandler, find_vm, load_vm, set_status, vm_spec
from .images import ensure_image

log = logging.getLogger("vmplane.jobs")


async def _check_movable(ctx: TaskContext, vm: Vm) -> None:
    async with ctx.deps.store.read() as conn:
        snaps = await snap_q.list_snapshots(conn, vm.org_id, None, vm.id)
    if snaps:
        raise InvalidState(f"VM {vm.id} has {len(snaps)} snapshot(s) on {vm.node_id}; snapshots stay on their node: delete them first")
    if vm.spec.pci_assigned:
        raise InvalidState(f"VM {vm.id} has host PCI devices of {vm.node_id}; it cannot leave that node")


def _hypervisor(driver: HypervisorDriver) -> str:
    """What runs a node's VMs (a remote node's agent driver, not `remote`)."""
    return driver.capabilities.hypervisor


async def _claim_target(ctx: TaskContext, vm: Vm, source: str, unfit: frozenset[str] = frozenset()) -> str:
    """The target node, claimed once (a resumed attempt finds it in spec.moveTo); placement
    never chooses the source nor a node in `unfit`."""
    if vm.spec.move_to:
        return vm.spec.move_to
    deps = ctx.deps
    demand = Demand(
        cpu=vm.cpu, ram_mb=vm.ram_mb, disk_gb=vm.disk_gb, node_id=ctx.payload.get("target"),
        network_types=vm.spec.network_types, exclude=frozenset({source}) | unfit, cdrom=vm.wants_boot_setup,
    )  # fmt: skip
    async with ctx.write() as conn:  # once: a stale run would claim again
        target = await deps.capacity.place_and_claim(conn, demand, vm.id)
        await vm_q.set_vm(conn, vm.id, spec=vm.spec.with_(move_to=target).to_json(), updated_at=clock.now())
    await ctx.progress(10, f"room claimed on {target}")
    return target


async def _commit(ctx: TaskContext, vm_id: str, source: str, target: str, status: VmStatus) -> None:
    """The VM is on `target` now: its record and the claims say so, in one transaction."""
    deps = ctx.deps
    async with ctx.write() as conn:  # once: a stale run would release the source twice
        vm = await vm_q.get_vm(conn, vm_id)
        assert vm is not None
        # a stopped VM runs nowhere: no running shape left to hold on the target (its source releases what it held)
        await vm_q.set_vm(conn, vm_id, node_id=target, spec=vm.spec.with_(move_to=None).to_json(), running_spec=None, updated_at=clock.now())
        await vm_q.set_status(conn, vm_id, status.value, updated_at=clock.now())
        await deps.capacity.release(conn, source, *vm.held)


async def _remove_from_source(ctx: TaskContext, driver: HypervisorDriver, vm_id: str, source: str) -> None:
    try:
        await driver.delete_vm(vm_id)
    except VmplaneError as exc:
        ctx.log(f"Warning: the old copy on {source} could not be removed ({exc.message}); delete it there by hand")
        log.error("VM %s moved, but its old copy on %s is left: %s", vm_id, source, exc.message)


async def _undo_target(ctx: TaskContext, cancelled: bool) -> None:
    """A failed or cancelled move: the VM stays on its source; nothing is left on the target."""
    deps = ctx.deps
    async with deps.store.read() as conn:
        vm = await vm_q.get_vm(conn, ctx.resource_id)
    if vm is None or not vm.spec.move_to:
        return
    target = vm.spec.move_to
    if target == vm.node_id:  # committed already
        return
    try:
        await deps.registry.driver(target).delete_vm(vm.id)
    except VmplaneError as exc:
        ctx.log(f"Warning: cleaning up on {target} failed: {exc.message}")
    async with ctx.write() as conn:  # once: a stale run would release the target twice
        fresh = await vm_q.get_vm(conn, vm.id)
        if fresh is not None and fresh.spec.move_to == target:
            await deps.capacity.release(conn, target, fresh.cpu, fresh.ram_mb, fresh.disk_gb)  # what was claimed there: its size
            await vm_q.set_vm(conn, vm.id, spec=fresh.spec.with_(move_to=None).to_json(), updated_at=clock.now())
    ctx.log(f"nothing of the VM is left on {target}; it stays on {vm.node_id}")


async def _define_on(ctx: TaskContext, vm: Vm, target: str) -> HypervisorDriver:
    image, boot = await ensure_image(ctx, target, vm.template_id)
    driver = ctx.deps.registry.driver(target)
    await driver.create_vm(await vm_spec(ctx, vm, image, boot))
    await ctx.progress(30, f"defined on {target}")
    return driver


class VmMove(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        vm = await load_vm(ctx)
        source = str(ctx.payload["source"])
        if vm.node_id != source:
            ctx.log(f"already on {vm.node_id}")
            return
        await _check_movable(ctx, vm)
        src = deps.registry.driver(source)
        runtime = await src.get_vm(vm.id)
        if runtime is None:
            raise DriverError(f"{source} does not have VM {vm.id}")
        require_state(VmOp.MOVE, runtime.state, vm.id)  # what the node says, not what the store last heard
        ctx.log(f"Starting move of {vm.name} from {source}")
        target = await _claim_target(ctx, vm, source)
        await set_status(ctx, vm.id, VmStatus.UPDATING)
        dst = await _define_on(ctx, vm, target)
        if src.capabilities.disk_export and dst.capabilities.disk_export:
            work = deps.data_dir / "moves" / f"{vm.id}-{uuid.uuid4().hex[:8]}.raw"
            work.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = await src.export_disk(vm.id, work)
                await ctx.progress(60, f"disk exported from {source} ({size} bytes)")
                await dst.import_disk(vm.id, work)
            finally:
                work.unlink(missing_ok=True)
            await ctx.progress(90, f"disk imported on {target}")
        else:
            ctx.log(f"{src.capabilities.kind} nodes keep no disk content: nothing to copy")
        await _commit(ctx, vm.id, source, target, VmStatus.STOPPED)
        await _remove_from_source(ctx, src, vm.id, source)
        ctx.log(f"moved to {target}")

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        await _undo_target(ctx, cancelled)
        vm = await find_vm(ctx)
        if vm is not None and vm.status == VmStatus.UPDATING:
            await set_status(ctx, vm.id, VmStatus.STOPPED)


class VmMigrate(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        vm = await load_vm(ctx)
        source = str(ctx.payload["source"])
        if vm.node_id != source:
            ctx.log(f"already on {vm.node_id}")
            return
        require_state(VmOp.MIGRATE, vm.status, vm.id)
        await _check_movable(ctx, vm)
        src = deps.registry.driver(source)
        ctx.log(f"Starting live migration of {vm.name} from {source}")
        if not src.capabilities.live_migration:
            raise InvalidState(f"{source} runs the {_hypervisor(src)} driver, which cannot migrate VMs")
        unfit = frozenset(n for n, d in deps.registry.items() if not d.capabilities.live_migration or _hypervisor(d) != _hypervisor(src))
        wanted = ctx.payload.get("target")
        if wanted in unfit and not vm.spec.move_to:
            d = deps.registry.driver(wanted)
            raise InvalidState(f"{wanted} runs the {_hypervisor(d)} driver: {_hypervisor(src)} VMs cannot migrate there")
        target = await _claim_target(ctx, vm, source, unfit)
        dst = deps.registry.driver(target)
        if not dst.capabilities.live_migration or _hypervisor(dst) != _hypervisor(src):
            raise InvalidState(f"{target} runs the {_hypervisor(dst)} driver: {_hypervisor(src)} VMs cannot migrate there")
        image, boot = await ensure_image(ctx, target, vm.template_id)
        where = await dst.migrate_prepare(await vm_spec(ctx, vm, image, boot))
        await ctx.progress(20, f"{target} waits for the VM on {where.host}")

        async def progress(pct: int, message: str) -> None:
            await ctx.progress(20 + pct * 7 // 10, message)

        t0 = clock.now()
        await src.migrate_send(vm.id, where, progress)
        try:
            await dst.migrate_finish(vm.id)
        except BaseException:
            await src.migrate_cancel(vm.id)  # the source takes over again
            raise
        ctx.log(f"the guest runs on {target} ({clock.now() - t0:.2f} s from the start of the copy)")
        await _commit(ctx, vm.id, source, target, VmStatus.RUNNING)
        await _remove_from_source(ctx, src, vm.id, source)

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        vm = await find_vm(ctx)  # None: deleted meanwhile (the target is still cleaned up)
        source = str(ctx.payload["source"])
        if vm is not None and vm.node_id == source and vm.spec.move_to:
            try:  # whatever the source was doing for the migration, it stops; the guest runs on
                await ctx.deps.registry.driver(source).migrate_cancel(vm.id)
            except VmplaneError as exc:
                ctx.log(f"Warning: resuming the VM on {vm.node_id}: {exc.message}")
        await _undo_target(ctx, cancelled)

