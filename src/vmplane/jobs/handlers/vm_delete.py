"""vm-delete: remove the VM from its node, release its claim, forget it."""

from ... import clock
from ...domain import Vm, VmStatus
from ...errors import DriverError
from ...store import guest as guest_q
from ...store import networks as net_q
from ...store import vms as vm_q
from ..engine import TaskContext
from .base import BaseHandler, find_vm, set_status, when_node_answers


class VmDelete(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        async with deps.store.read() as conn:
            vm = await vm_q.get_vm(conn, ctx.resource_id)
        if vm is None:
            ctx.log("already deleted")
            return
        ctx.log(f"Starting delete of {vm.name}")
        await set_status(ctx, vm.id, VmStatus.DELETING)
        if vm.node_id is not None:
            driver = deps.registry.driver(vm.node_id)
            await when_node_answers(ctx, lambda: driver.delete_vm(vm.id))
            await ctx.progress(60, f"removed from {vm.node_id}")
        await self._forget(ctx, vm)

    @staticmethod
    async def _forget(ctx: TaskContext, vm: Vm) -> None:
        """The VM is off its node: release what it held and remove its record, once. In a
        transaction of this run's, and only if the record is still there: a run stalled past
        its lease that woke after its successor had forgotten the VM released its claim a
        second time, leaving its node's claims short of what the node held (the chaos soak
        found a node 1 GB over its RAM)."""
        deps = ctx.deps
        async with ctx.write() as conn:
            fresh = await vm_q.get_vm(conn, vm.id)
            if fresh is None:
                return
            if fresh.node_id is not None:
                await deps.capacity.release(conn, fresh.node_id, *fresh.held)
            await guest_q.release_ports(conn, vm.id)
            await net_q.release_vm(conn, vm.id)
            await deps.billing.released(conn, vm.id)  # before the record goes: it keeps the VM's facts
            await vm_q.delete_vm(conn, vm.id)

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        vm = await find_vm(ctx)
        if vm is None:
            return
        if vm.node_id is not None:
            # A delete that stops half-way (cancelled, or given up after interruptions) may have
            # removed the VM from its node already: then the delete is finished rather than
            # undone, or the store would keep, in error and holding its claim, a VM its node
            # no longer has (found by the chaos soak, bench/chaos.py).
            driver = ctx.deps.registry.driver(vm.node_id)
            try:
                gone = await when_node_answers(ctx, lambda: driver.get_vm(vm.id)) is None
            except DriverError:
                gone = False  # the node cannot say: what it holds is unknown
            if gone:
                await self._forget(ctx, vm)
                ctx.log(f"{vm.node_id} no longer has the VM: the delete is complete")
                return
        async with ctx.deps.store.write() as conn:
            status = VmStatus.UNKNOWN if cancelled else VmStatus.ERROR
            await vm_q.set_status(conn, vm.id, status.value, error=f"delete did not finish: {error}", updated_at=clock.now())
