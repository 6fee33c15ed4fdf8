"""Backups: a VM's whole disk, taken live, stored de-duplicated in the backup store; restored
to the same VM or another one (under a new name if asked: `restore_as`). One backup or restore
per VM at a time (reason `in_progress` otherwise). A VM's backup schedule is a cron schedule
the schedules service writes and reads back as a `BackupSchedule` (daily, weekly or monthly at an hour,
keeping the newest `keep_last`, KEEP_LAST unless the caller names a number)."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from .. import clock, ids
from ..auth import Principal
from ..domain import Vm
from ..errors import Conflict, InvalidRequest, InvalidState, NotFound, Reason, VmplaneError
from ..store import backups as bkp_q
from .vms import visible

if TYPE_CHECKING:
    from ..backupstore import BackupStore
    from ..drivers.registry import NodeRegistry
    from ..jobs.engine import JobEngine
    from ..store import Store
    from .vms import VmService

GIB = 1 << 30
KEEP_LAST = 7
"""backups a VM's schedule keeps after each run when its maker names no number"""


@dataclass(frozen=True, slots=True)
class BackupSchedule:
    """A VM's backup schedule: when it runs (UTC) and how many backups it keeps."""

    id: str
    vm_id: str
    frequency: str
    """daily, weekly or monthly"""
    hour: int
    day_of_week: int | None
    """0 = Sunday … 6, weekly schedules only"""
    day_of_month: int | None
    """1-28, monthly schedules only"""
    keep_last: int
    enabled: bool
    next_run: float | None
    last_run: float | None

    @classmethod
    def of(cls, row: Row[*tuple[Any, ...]]) -> BackupSchedule:
        """The schedule a stored one is (its cron expression as put_schedule wrote it)."""
        _, hour, dom, _, dow = row.schedule.split()
        return cls(
            id=row.id, vm_id=row.backup_vm_id, frequency="monthly" if dom != "*" else ("weekly" if dow != "*" else "daily"),
            hour=int(hour), day_of_week=None if dow == "*" else int(dow), day_of_month=None if dom == "*" else int(dom),
            keep_last=row.keep_last, enabled=bool(row.enabled), next_run=row.next_run, last_run=row.last_run,
        )  # fmt: skip


def cron_of(frequency: str, hour: int, day_of_week: int | None, day_of_month: int | None) -> str:
    return {"daily": f"0 {hour} * * *", "weekly": f"0 {hour} * * {day_of_week}", "monthly": f"0 {hour} {day_of_month} * *"}[frequency]


class BackupService:
    def __init__(self, *, store: Store, engine: JobEngine, registry: NodeRegistry, backup_store: BackupStore, vms: VmService) -> None:
        self.store = store
        self.engine = engine
        self.registry = registry
        self.backup_store = backup_store
        self.vms = vms

    async def get(self, backup_id: str, who: Principal) -> Row[*tuple[Any, ...]]:
        async with self.store.read() as conn:
            row = await bkp_q.get_backup(conn, backup_id)
        if row is None or not visible(row, who):
            raise NotFound(f"backup {backup_id} does not exist")
        return row

    async def list(self, who: Principal, vm_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
        async with self.store.read() as conn:
            return await bkp_q.list_backups(conn, who.org_id, who.team_id, vm_id)

    async def in_progress(self, vm_id: str) -> set[str]:
        async with self.store.read() as conn:
            return await bkp_q.busy(conn, vm_id)

    def check_capable(self, vm: Vm) -> None:
        if vm.node_id is None:
            raise InvalidState(f"VM {vm.id} is {vm.status} and has no disk yet", current=vm.status)
        driver = self.registry.driver(vm.node_id)
        if not driver.capabilities.disk_export:
            raise Conflict(f"{vm.node_id} runs the {driver.capabilities.kind} driver, which cannot back up disks", reason=Reason.UNSUPPORTED)
        if not self.backup_store.available():
            raise Conflict("restic is not installed on this server: no backup store", reason=Reason.UNSUPPORTED)

    async def create(self, vm_ref: str, notes: str, who: Principal) -> tuple[str, str]:
        vm = await self.vms.get(vm_ref, who)
        self.check_capable(vm)
        now = clock.now()
        backup_id = ids.new_id("bkp")
        async with self.store.write() as conn:
            if await bkp_q.busy(conn, vm.id):
                raise Conflict(f"VM {vm.id} already has a backup or restore in progress", reason=Reason.IN_PROGRESS)
            await bkp_q.insert_backup(
                conn,
                {"id": backup_id, "org_id": vm.org_id, "team_id": vm.team_id, "vm_id": vm.id, "vm_name": vm.name,
                 "status": "running", "notes": notes, "logical_bytes": 0, "added_bytes": 0, "created_at": now},  # fmt: skip
            )
            job_id = await self.engine.submit(conn, "backup-create", who, [(vm.id, {"backupId": backup_id})])
        self.engine.wakeup()
        return job_id, backup_id

    async def set_notes(self, backup_id: str, notes: str, who: Principal) -> Row[*tuple[Any, ...]]:
        await self.get(backup_id, who)
        async with self.store.write() as conn:
            await bkp_q.set_backup(conn, backup_id, notes=notes)
        return await self.get(backup_id, who)

    async def delete(self, backup_id: str, who: Principal) -> str:
        bkp = await self.get(backup_id, who)
        if bkp.status == "running":
            raise InvalidState(f"backup {bkp.id} is still running", current="running")
        async with self.store.write() as conn:
            await bkp_q.set_backup(conn, bkp.id, status="deleting")
            job_id = await self.engine.submit(conn, "backup-delete", who, [(bkp.id, {})])
        self.engine.wakeup()
        return job_id

    async def restore(self, backup_id: str, target_ref: str, who: Principal) -> str:
        bkp = await self.get(backup_id, who)
        if bkp.status != "succeeded":
            raise InvalidState(f"backup {bkp.id} is {bkp.status}", current=bkp.status)
        target = await self.vms.get(target_ref, who)
        self.check_capable(target)
        if bkp.logical_bytes > target.disk_gb * GIB:
            raise InvalidRequest(f"VM {target.id}'s disk ({target.disk_gb} GB) is smaller than the backup ({bkp.logical_bytes} bytes)", field="targetVmId")
        async with self.store.write() as conn:
            if await bkp_q.busy(conn, target.id):
                raise Conflict(f"VM {target.id} already has a backup or restore in progress", reason=Reason.IN_PROGRESS)
            job_id = await self.engine.submit(conn, "vm-restore", who, [(target.id, {"backupId": bkp.id})])
        self.engine.wakeup()
        return job_id

    async def restore_as(self, backup_id: str, target_ref: str, who: Principal, name: str | None = None) -> str:
        """Restore into a VM under a new `name` (None: its own): the VM is renamed first and,
        if the restore cannot start, named as it was again. A refused name raises with
        `details["field"] == "name"`; nothing has changed then."""
        target = await self.vms.get(target_ref, who)
        old_name = target.name
        renamed = name is not None and name != old_name
        if renamed:
            assert name is not None
            try:
                await self.vms.rename(target.id, name, who)
            except (InvalidRequest, Conflict) as exc:  # InvalidState too: the VM is being deleted
                exc.details.setdefault("field", "name")
                raise
        try:
            return await self.restore(backup_id, target.id, who)
        except VmplaneError:
            if renamed:  # nothing happened: the name goes back too
                await self.vms.rename(target.id, old_name, who)
            raise

    async def prune(self, vm_id: str, keep_last: int, who: Principal) -> builtins.list[str]:
        """Delete the VM's succeeded backups beyond the newest `keep_last`; returns their jobs."""
        done = [b for b in await self.list(who, vm_id) if b.status == "succeeded"]
        return [await self.delete(b.id, who) for b in done[keep_last:]]

    async def storage(self, who: Principal) -> dict[str, Any]:
        rows = [b for b in await self.list(who) if b.status == "succeeded"]
        per_vm: dict[str, dict[str, Any]] = {}
        for b in rows:
            item = per_vm.setdefault(b.vm_id, {"vmId": b.vm_id, "vmName": b.vm_name, "backups": 0, "logicalBytes": 0, "storedBytes": 0})
            item["backups"] += 1
            item["logicalBytes"] += b.logical_bytes
            item["storedBytes"] += b.added_bytes
        return {
            "items": list(per_vm.values()),
            "logicalBytes": sum(i["logicalBytes"] for i in per_vm.values()),
            "storedBytes": sum(i["storedBytes"] for i in per_vm.values()),
            "repositoryBytes": await self.backup_store.stored_bytes() if who.operator else None,
        }
