"""vm-create: place the VM, claim its resources, define it on the node, start it."""

import asyncio
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import VmStatus
from ...errors import DriverError, VmplaneError
from ...placement import Demand
from ...store import guest as guest_q
from ...store import isos as iso_q
from ...store import networks as net_q
from ...store import snapshots as snap_q
from ...store import usage as usage_q
from ...store import vms as vm_q
from ..engine import HandOff, TaskContext
from .base import BaseHandler, check_boot_on, load_vm, start_vm, vm_spec, when_node_answers
from .images import ensure_image

ISO_POLL_SECONDS = 1.0


class VmCreate(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        vm = await load_vm(ctx)
        deps = ctx.deps
        if vm.status not in (VmStatus.PROVISIONING, VmStatus.STARTING):
            # An interrupted attempt may have finished the work before recording the task's end.
            if ctx.resumed and vm.node_id and await deps.registry.driver(vm.node_id).get_vm(vm.id) is not None:
                ctx.log(f"already created before the interruption ({vm.status})")
                return
            raise VmplaneError(f"VM {vm.id} is {vm.status}; nothing to create")
        ctx.log(f"Starting create of {vm.name}")
        start = ctx.payload.get("start", True)
        node_id = vm.node_id
        if node_id is None:
            spec = vm.spec
            demand = Demand(
                cpu=vm.cpu, ram_mb=vm.ram_mb, disk_gb=vm.disk_gb, node_id=spec.node_id, pci=spec.pci_passthrough, network_types=spec.network_types,
                cdrom=vm.wants_boot_setup,
            )  # fmt: skip
            await ctx.fence()  # a stalled attempt stops here, before it claims anything
            async with deps.store.write() as conn:
                # Placed once: another attempt of this task may place the VM between this run's
                # read and now. A second placement sent the VM's later work to another node than
                # the one the other attempt created it on, leaving it there, orphaned; placing a
                # VM whose create had failed meanwhile counted it against the quota again (both
                # found by the chaos soak).
                row = await vm_q.placement(conn, vm.id)
                if row is None:
                    raise VmplaneError(f"VM {vm.id} no longer exists")
                if row.status not in (VmStatus.PROVISIONING, VmStatus.STARTING):
                    raise VmplaneError(f"VM {vm.id} is {row.status}; nothing to create")
                node_id = row.node_id
                if node_id is None:
                    node_id = await deps.capacity.place_and_claim(conn, demand, vm.id)
                    if demand.pci:
                        await vm_q.set_vm(conn, vm.id, spec=spec.with_(pci_assigned=tuple(await net_q.devices_of(conn, vm.id))).to_json())
                    status = VmStatus.STARTING if start else VmStatus.PROVISIONING
                    await vm_q.set_status(conn, vm.id, status.value, node_id=node_id, updated_at=clock.now())
            await ctx.progress(20, f"placed on {node_id}")
        if not deps.home.runs_here(node_id):
            raise HandOff(f"{node_id} is served by another replica")
        driver = deps.registry.driver(node_id)
        if (line := await deps.guest.prepare_ssh(vm.id, driver)) is not None:
            ctx.log(line)
            vm = await load_vm(ctx)
        if vm.cdrom_iso_id is not None:
            await self._await_iso(ctx, vm.cdrom_iso_id)
        image, boot = await ensure_image(ctx, node_id, vm.template_id)
        if boot is not None and vm.spec.kernel_cmdline:  # a config's kernel_cmdline: after the template's
            boot = {**boot, "cmdline": f"{boot.get('cmdline') or ''} {vm.spec.kernel_cmdline}".strip()}
        if vm.snapshot_id is not None:  # a copy-on-write clone of the snapshot's disk
            async with deps.store.read() as conn:
                snap = await snap_q.get_snapshot(conn, vm.snapshot_id)
            if snap is None or snap.image_path is None:
                raise VmplaneError(f"snapshot {vm.snapshot_id} no longer exists")
            image = snap.image_path
        definition = await vm_spec(ctx, vm, image, boot)
        check_boot_on(driver, node_id, definition.boot, vm.id)
        await driver.create_vm(definition)
        if not start:
            ctx.defer(lambda conn: vm_q.set_status(conn, vm.id, VmStatus.STOPPED.value, updated_at=clock.now()))
            ctx.log("defined; not started as asked")
            return
        await ctx.progress(50, "defined; starting")
        await start_vm(ctx, vm.id, driver)
        runtime = await driver.get_vm(vm.id)
        started = runtime.started_at if runtime and runtime.started_at else clock.now()
        running = runtime.running_spec if runtime is not None else None
        ctx.defer(
            lambda conn: vm_q.set_status(
                conn, vm.id, VmStatus.RUNNING.value, started_at=started, updated_at=clock.now(), running_spec=running
            )
        )
        ctx.log("running")

    @staticmethod
    async def _await_iso(ctx: TaskContext, iso_id: str) -> None:
        """The ISO of the VM's CD-ROM may still be importing (a face's ISO URL): wait for it."""
        said = False
        while True:
            async with ctx.deps.store.read() as conn:
                iso = await iso_q.get_iso(conn, iso_id)
            if iso is None or iso.status == "error":
                raise VmplaneError(f"ISO {iso_id} could not be imported: {iso.error if iso else 'it was deleted'}")
            if iso.status == "ready":
                return
            if not said:
                await ctx.progress(25, f"waiting for ISO {iso.name} to be imported")
                said = True
            await asyncio.sleep(ISO_POLL_SECONDS)

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        deps = ctx.deps
        async with deps.store.read() as conn:
            vm = await vm_q.get_vm(conn, ctx.resource_id)
        if vm is None:
            return
        if vm.node_id is not None:
            driver = deps.registry.driver(vm.node_id)
            try:
                await when_node_answers(ctx, lambda: driver.delete_vm(vm.id))
            except DriverError as exc:
                # The node is unreachable (offline): what it holds of the VM is unknown. The VM
                # keeps its node and claim, in error; deleting it cleans the node up once back.
                async with deps.store.write() as conn:
                    why = f"{error}; {vm.node_id} could not clean up ({exc.message}): delete the VM"
                    await vm_q.set_status(conn, vm.id, VmStatus.ERROR.value, error=why, updated_at=clock.now())
                ctx.log(f"could not clean up on {vm.node_id}: {exc.message}")
                return
        async with ctx.write() as conn:  # once: a stale run's repeat would release the claim twice
            if vm.node_id is not None:
                await deps.capacity.release(conn, vm.node_id, *vm.held)
                await net_q.release_devices(conn, vm.id)
            await deps.billing.released(conn, vm.id)
            if cancelled:
                await guest_q.release_ports(conn, vm.id)
                await net_q.release_vm(conn, vm.id)
                await vm_q.delete_vm(conn, vm.id)
            else:
                await vm_q.set_status(conn, vm.id, VmStatus.ERROR.value, node_id=None, error=error, updated_at=clock.now())
        ctx.log("cleaned up: nothing of the VM is left on the node")

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await usage_q.close_span(conn, task.resource_id, clock.now())
        await guest_q.release_ports(conn, task.resource_id)
        await net_q.release_vm(conn, task.resource_id)
        await vm_q.delete_vm(conn, task.resource_id)
