"""snapshot-create, snapshot-delete and vm-revert."""

from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import VmStatus
from ...drivers.base import HypervisorDriver
from ...errors import VmplaneError
from ...store import snapshots as snap_q
from ..engine import TaskContext
from .base import BaseHandler, load_vm, when_node_answers, while_stopped


async def load_snapshot(ctx: TaskContext, snapshot_id: str) -> Row[Any]:
    async with ctx.deps.store.read() as conn:
        snap = await snap_q.get_snapshot(conn, snapshot_id)
    if snap is None:
        raise VmplaneError(f"snapshot {snapshot_id} no longer exists")
    return snap


class SnapshotCreate(BaseHandler):
    """The task's resource is the VM (so it waits for other work on it); payload: snapshotId."""

    async def run(self, ctx: TaskContext) -> None:
        snap = await load_snapshot(ctx, ctx.payload["snapshotId"])
        vm = await load_vm(ctx)
        ctx.log(f"Starting snapshot {snap.name} of {vm.name} ({'live' if vm.status == VmStatus.RUNNING else 'offline'})")
        info = await ctx.deps.registry.driver(snap.node_id).snapshot_vm(vm.id, snap.id)
        ctx.defer(
            lambda conn: snap_q.set_snapshot(
                conn, snap.id, status="ready", image_path=str(info.path), size_bytes=info.actual_size, updated_at=clock.now()
            )
        )
        ctx.log(f"snapshot taken: {info.actual_size} bytes stored")

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        snap_id = ctx.payload["snapshotId"]
        async with ctx.deps.store.read() as conn:
            snap = await snap_q.get_snapshot(conn, snap_id)
        if snap is not None and snap.node_id in ctx.deps.registry:
            await ctx.deps.registry.driver(snap.node_id).delete_snapshot(snap_id)
        async with ctx.deps.store.write() as conn:
            await snap_q.delete_snapshot(conn, snap_id)

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await snap_q.delete_snapshot(conn, task.payload["snapshotId"])


class SnapshotDelete(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        snap = await load_snapshot(ctx, ctx.resource_id)
        async with ctx.deps.store.read() as conn:
            if await snap_q.dependents(conn, snap.id):
                raise VmplaneError(f"snapshot {snap.id} gained dependent VMs; not deleted")
        if snap.node_id in ctx.deps.registry:
            # asked again while the node is out of reach: failing at once left the snapshot
            # `ready` in the store after its node had removed it (found by the chaos soak)
            driver = ctx.deps.registry.driver(snap.node_id)
            await when_node_answers(ctx, lambda: driver.delete_snapshot(snap.id))
        ctx.defer(lambda conn: snap_q.delete_snapshot(conn, snap.id))

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        async with ctx.deps.store.write() as conn:
            await snap_q.set_snapshot(conn, ctx.resource_id, status="ready", updated_at=clock.now())


class VmRevert(BaseHandler):
    """Stop the VM if it runs, give its disk the snapshot's content, start it again."""

    async def run(self, ctx: TaskContext) -> None:
        snap = await load_snapshot(ctx, ctx.payload["snapshotId"])
        vm = await load_vm(ctx)
        ctx.log(f"Starting revert of {vm.name} to {snap.name}")

        async def revert(driver: HypervisorDriver) -> None:
            await driver.revert_vm(vm.id, snap.image_path)
            await ctx.progress(60, "disk restored")

        await while_stopped(ctx, vm, revert)
