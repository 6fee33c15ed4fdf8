"""vm-update: rename, retag, resize (claiming growth on the node first; on a running VM, the
guest's root filesystem grown into a grown disk, and CPU/RAM left pending until a restart)."""

from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import Resources, Vm
from ...domain.records import held
from ...drivers.base import PowerState
from ...errors import Conflict, InvalidRequest, Reason
from ...store import StoreUnavailable
from ...store import events as ev_q
from ...store import vms as vm_q
from ..engine import TaskContext
from ..fencing import LeaseLost
from .base import BaseHandler, boot_setup, check_boot_on, load_vm, when_node_answers
from .guest_fs import grow_root


class VmUpdate(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        p = ctx.payload
        deps = ctx.deps
        vm = await load_vm(ctx)
        ctx.log(f"Starting update of {vm.name}")
        want = Resources(
            p["cpu"] if p.get("cpu") is not None else vm.cpu,
            p["ramMb"] if p.get("ramMb") is not None else vm.ram_mb,
            p["diskGb"] if p.get("diskGb") is not None else vm.disk_gb,
        )
        if want.disk_gb < vm.disk_gb:
            raise InvalidRequest(f"the disk cannot shrink from {vm.disk_gb} GB", field="resources.disk_gb", reason=Reason.CANNOT_SHRINK)
        now = clock.now()
        old = Resources(vm.cpu, vm.ram_mb, vm.disk_gb)
        # Growth is claimed (and counted against the quota, on the VM's row) before the node
        # resizes, shrinkage released only once it has: until then the VM holds the larger of
        # both. Releasing a shrink first let others take room a refused resize then could not
        # claim back (found by the chaos soak, bench/chaos.py). Each step changes the VM row and
        # the node's claim in one transaction, so a crash between them leaves both consistent
        # and the retry resizes only.
        hold = Resources(max(old.cpu, want.cpu), max(old.ram_mb, want.ram_mb), max(old.disk_gb, want.disk_gb))
        if hold != old:
            await self._reshape(ctx, vm, old, hold)
        resizing = any(p.get(k) is not None for k in ("cpu", "ramMb", "diskGb"))
        if vm.node_id is not None and resizing:
            driver = deps.registry.driver(vm.node_id)
            try:
                await when_node_answers(ctx, lambda: driver.resize_vm(vm.id, want))
            except (LeaseLost, StoreUnavailable):
                raise  # interrupted, not failed: a later attempt resumes from the row as it is
            except BaseException:
                if hold != old:  # the node refused: the VM keeps its size
                    await self._reshape(ctx, vm, hold, old)
                raise
        if want != hold:
            await self._reshape(ctx, vm, hold, want)
        if want != old:
            ctx.log(f"resources now {want.cpu} vCPU, {want.ram_mb} MB RAM, {want.disk_gb} GB disk")
        if vm.node_id is not None and resizing:
            await self._after_resize(ctx, vm, old, want)
        if any(k in p for k in ("cdrom", "bootOrder", "firmware")):
            await self._boot(ctx, vm)
        async with deps.store.write() as conn:
            if p.get("name") is not None and p["name"] != vm.name:
                if await vm_q.names_taken(conn, [p["name"]], vm.org_id):
                    raise Conflict(f"a VM named {p['name']!r} already exists", reason=Reason.NAME_TAKEN)
                await vm_q.set_vm(conn, vm.id, name=p["name"], updated_at=now)
                ctx.log(f"renamed to {p['name']}")
            if p.get("tags") is not None:
                await vm_q.set_vm(conn, vm.id, tags=p["tags"], updated_at=now)
                await vm_q.set_tags(conn, vm.id, p["tags"])
                ctx.log("tags replaced")

    @staticmethod
    async def _boot(ctx: TaskContext, vm: Vm) -> None:
        """A new CD-ROM content (inserted or ejected at once on a running VM), boot order or
        firmware (at its next start): told to the node first, then recorded."""
        p = ctx.payload
        iso_id = p["cdrom"]["isoId"] if "cdrom" in p else vm.cdrom_iso_id
        order = tuple(p["bootOrder"]) if "bootOrder" in p else vm.spec.boot_order
        firmware = p["firmware"] if "firmware" in p else vm.spec.firmware
        if vm.node_id is not None:
            driver = ctx.deps.registry.driver(vm.node_id)
            boot = boot_setup(ctx, vm, iso_id, order, firmware)
            check_boot_on(driver, vm.node_id, boot, vm.id)
            await driver.set_boot(vm.id, boot)
        async with ctx.deps.store.write() as conn:
            fresh = await vm_q.get_vm(conn, vm.id) or vm
            spec = fresh.spec.with_(boot_order=order, firmware=firmware).to_json()
            await vm_q.set_vm(conn, vm.id, cdrom_iso_id=iso_id, spec=spec, updated_at=clock.now())
        if "cdrom" in p:
            ctx.log(f"CD-ROM: {iso_id or 'ejected'}")
        if "bootOrder" in p or "firmware" in p:
            ctx.log(f"boots {', '.join(order) or 'disk, cdrom'} with {firmware or 'bios'} firmware from its next start")

    @staticmethod
    async def _after_resize(ctx: TaskContext, vm: Vm, old: Resources, want: Resources) -> None:
        """On a running VM: record what its process has now (the disk grown live; CPU and RAM
        wait for a restart: `pendingRestart`), and grow the guest's root filesystem into a
        grown disk through its agent, or say why not."""
        assert vm.node_id is not None
        driver = ctx.deps.registry.driver(vm.node_id)
        runtime = await driver.get_vm(vm.id)
        if runtime is None or runtime.state != PowerState.RUNNING:
            return
        async with ctx.deps.store.write() as conn:
            await vm_q.set_vm(conn, vm.id, running_spec=runtime.running_spec)
        if runtime.running is not None and (runtime.running.cpu, runtime.running.ram_mb) != (want.cpu, want.ram_mb):
            ctx.log("the running VM keeps its CPU and RAM until it is power-cycled or stopped and started (a guest reboot keeps them)")
        if want.disk_gb > old.disk_gb:
            grown = await grow_root(driver, vm.id, want.disk_gb)
            ctx.log(grown.message)
            async with ctx.deps.store.write() as conn:
                data = {"id": vm.id, "name": vm.name, "status": vm.status, "nodeId": vm.node_id, "error": vm.error}
                disk = {"diskGb": want.disk_gb, "filesystemGrown": grown.grown, "message": grown.message}
                await ev_q.emit(conn, "vm.updated", vm.id, {**data, "disk": disk}, vm.org_id, vm.team_id)

    async def _reshape(self, ctx: TaskContext, vm: Vm, old: Resources, new: Resources) -> None:
        """The VM's row, its node's claim and its billing from `old` to `new`, in one
        transaction of this run's (a stale run's repeat would claim or release twice)."""
        async with ctx.write() as conn:
            fresh = await vm_q.get_vm(conn, vm.id)
            running = fresh.running_spec if fresh is not None else None  # a running VM keeps its old shape until restarted
            await self._move_claim(ctx, conn, vm.node_id, Resources(*held(old.cpu, old.ram_mb, old.disk_gb, running)), Resources(*held(new.cpu, new.ram_mb, new.disk_gb, running)))
            await vm_q.set_vm(conn, vm.id, cpu=new.cpu, ram_mb=new.ram_mb, disk_gb=new.disk_gb, updated_at=clock.now())
            await ctx.deps.billing.reshaped(conn, {**vm.to_row(), "cpu": new.cpu, "ram_mb": new.ram_mb, "disk_gb": new.disk_gb})

    @staticmethod
    async def _move_claim(ctx: TaskContext, conn: AsyncConnection, node_id: str | None, old: Resources, new: Resources) -> None:
        """Change a node's claim from `old` to `new`: growth is claimed (or NoCapacity), shrinkage released."""
        if node_id is None:
            return
        grow = (max(0, new.cpu - old.cpu), max(0, new.ram_mb - old.ram_mb), max(0, new.disk_gb - old.disk_gb))
        shrink = (max(0, old.cpu - new.cpu), max(0, old.ram_mb - new.ram_mb), max(0, old.disk_gb - new.disk_gb))
        if any(grow):
            await ctx.deps.capacity.claim_on(conn, node_id, *grow)
        if any(shrink):
            await ctx.deps.capacity.release(conn, node_id, *shrink)
