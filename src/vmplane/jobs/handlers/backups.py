"""backup-create, backup-delete and vm-restore."""

import contextlib
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock
from ...domain import VmStatus
from ...drivers.base import HypervisorDriver, PowerState
from ...errors import VmplaneError
from ...store import backups as bkp_q
from ...store import vms as vm_q
from ..engine import TaskContext
from .base import BaseHandler, driver_of, find_vm, load_vm, while_stopped


async def load_backup(ctx: TaskContext, backup_id: str) -> Row[Any]:
    async with ctx.deps.store.read() as conn:
        bkp = await bkp_q.get_backup(conn, backup_id)
    if bkp is None:
        raise VmplaneError(f"backup {backup_id} no longer exists")
    return bkp


class BackupCreate(BaseHandler):
    """Export the disk (live: a point-in-time copy), store it de-duplicated, drop the export."""

    async def run(self, ctx: TaskContext) -> None:
        bkp = await load_backup(ctx, ctx.payload["backupId"])
        vm = await load_vm(ctx)
        deps = ctx.deps
        work = deps.data_dir / "tmp" / f"{bkp.id}.raw"
        work.parent.mkdir(parents=True, exist_ok=True)
        ctx.log(f"Starting backup of {vm.name}")
        try:
            size = await driver_of(ctx, vm).export_disk(vm.id, work)
            await ctx.progress(40, f"disk exported ({size} bytes)")
            await ctx.fence()  # the backup store is no driver: fence its write by hand
            stored = await deps.backup_store.put(work, f"vm={vm.id}")
        finally:
            work.unlink(missing_ok=True)
        ctx.log(f"stored: {stored.logical_bytes} bytes, {stored.added_bytes} new")
        ctx.defer(
            lambda conn: bkp_q.set_backup(
                conn, bkp.id, status="succeeded", repo_snapshot=stored.snapshot, logical_bytes=stored.logical_bytes,
                added_bytes=stored.added_bytes, finished_at=clock.now(),
            )  # fmt: skip
        )

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        async with ctx.deps.store.write() as conn:
            if cancelled:
                await bkp_q.delete_backup(conn, ctx.payload["backupId"])
            else:
                await bkp_q.set_backup(conn, ctx.payload["backupId"], status="failed", error=error, finished_at=clock.now())

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await bkp_q.delete_backup(conn, task.payload["backupId"])


class BackupDelete(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        bkp = await load_backup(ctx, ctx.resource_id)
        if bkp.repo_snapshot:
            await ctx.fence()
            await ctx.deps.backup_store.forget(bkp.repo_snapshot)
        ctx.defer(lambda conn: bkp_q.delete_backup(conn, bkp.id))

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        async with ctx.deps.store.write() as conn:
            await bkp_q.set_backup(conn, ctx.resource_id, status="succeeded")


class VmRestore(BaseHandler):
    """Stop the VM if it runs, fetch the backup (every chunk checked), replace the disk, restart."""

    async def run(self, ctx: TaskContext) -> None:
        bkp = await load_backup(ctx, ctx.payload["backupId"])
        vm = await load_vm(ctx)
        deps = ctx.deps
        ctx.log(f"Starting restore of backup {bkp.id} ({bkp.vm_name}) into {vm.name}")
        work = deps.data_dir / "tmp" / f"{bkp.id}-{vm.id}.raw"
        work.parent.mkdir(parents=True, exist_ok=True)
        try:
            await deps.backup_store.get(bkp.repo_snapshot, work)  # before stopping: a bad backup changes nothing
            await ctx.progress(50, "backup fetched and verified")

            async def restore(driver: HypervisorDriver) -> None:
                await driver.import_disk(vm.id, work)

            await while_stopped(ctx, vm, restore)
        finally:
            with contextlib.suppress(OSError):
                work.unlink()

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        vm = await find_vm(ctx)
        if vm is None:  # deleted meanwhile
            return
        runtime = await driver_of(ctx, vm).get_vm(vm.id)
        status = VmStatus.RUNNING if runtime and runtime.state == PowerState.RUNNING else VmStatus.STOPPED
        running = runtime.running_spec if runtime is not None else None
        async with ctx.deps.store.write() as conn:
            await vm_q.set_status(conn, vm.id, status.value, updated_at=clock.now(), running_spec=running)
