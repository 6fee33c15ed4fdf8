"""Backups: a VM's whole disk, taken live, stored de-duplicated in the backup store; restored
to the same VM or another one (under a new name if asked: `restore_as`). One backup or restore
per VM at a time (reason `in_progress` otherwise). A VM's backup schedule is a cron schedule
the service writes and reads back as a `BackupSchedule` (daily, weekly or monthly at an hour,
keeping the newest `keep_last`, KEEP_LAST unless the caller names a number)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import Row

from .. import clock, ids
from ..auth import Principal
from ..errors import Conflict, InvalidRequest, InvalidState, NotFound, Reason, VmplaneError
from ..store import backups as bkp_q
from ..store import schedules as sch_q
from .vms import visible

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
    def of(cls, row: Row[Any]) -> BackupSchedule:
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
    def __init__(self, rt: Any) -> None:
        self.rt = rt

    async def get(self, backup_id: str, who: Principal) -> Row:
        async with self.rt.store.read() as conn:
            row = await bkp_q.get_backup(conn, backup_id)
        if row is None or not visible(row, who):
            raise NotFound(f"backup {backup_id} does not exist")
        return row

    async def list(self, who: Principal, vm_id: str | None = None) -> Sequence[Row]:
        async with self.rt.store.read() as conn:
            return await bkp_q.list_backups(conn, who.org_id, who.team_id, vm_id)

    async def in_progress(self, vm_id: str) -> set[str]:
        async with self.rt.store.read() as conn:
            return await bkp_q.busy(conn, vm_id)

    def _check_capable(self, vm: Row) -> None:
        if vm.node_id is None:
            raise InvalidState(f"VM {vm.id} is {vm.status} and has no disk yet", current=vm.status)
        driver = self.rt.registry.driver(vm.node_id)
        if not driver.capabilities.disk_export:
            raise Conflict(f"{vm.node_id} runs the {driver.capabilities.kind} driver, which cannot back up disks", reason=Reason.UNSUPPORTED)
        if not self.rt.backup_store.available():
            raise Conflict("restic is not installed on this server: no backup store", reason=Reason.UNSUPPORTED)

    async def create(self, vm_ref: str, notes: str, who: Principal) -> tuple[str, str]:
        vm = await self.rt.vms.get(vm_ref, who)
        self._check_capable(vm)
        now = clock.now()
        backup_id = ids.new_id("bkp")
        async with self.rt.store.write() as conn:
            if await bkp_q.busy(conn, vm.id):
                raise Conflict(f"VM {vm.id} already has a backup or restore in progress", reason=Reason.IN_PROGRESS)
            await bkp_q.insert_backup(
                conn,
                {"id": backup_id, "org_id": vm.org_id, "team_id": vm.team_id, "vm_id": vm.id, "vm_name": vm.name,
                 "status": "running", "notes": notes, "logical_bytes": 0, "added_bytes": 0, "created_at": now},  # fmt: skip
            )
            job_id = await self.rt.engine.submit(conn, "backup-create", who, [(vm.id, {"backupId": backup_id})])
        self.rt.engine.wakeup()
        return job_id, backup_id

    async def set_notes(self, backup_id: str, notes: str, who: Principal) -> Row:
        await self.get(backup_id, who)
        async with self.rt.store.write() as conn:
            await bkp_q.set_backup(conn, backup_id, notes=notes)
        return await self.get(backup_id, who)

    async def delete(self, backup_id: str, who: Principal) -> str:
        bkp = await self.get(backup_id, who)
        if bkp.status == "running":
            raise InvalidState(f"backup {bkp.id} is still running", current="running")
        async with self.rt.store.write() as conn:
            await bkp_q.set_backup(conn, bkp.id, status="deleting")
            job_id = await self.rt.engine.submit(conn, "backup-delete", who, [(bkp.id, {})])
        self.rt.engine.wakeup()
        return job_id

    async def restore(self, backup_id: str, target_ref: str, who: Principal) -> str:
        bkp = await self.get(backup_id, who)
        if bkp.status != "succeeded":
            raise InvalidState(f"backup {bkp.id} is {bkp.status}", current=bkp.status)
        target = await self.rt.vms.get(target_ref, who)
        self._check_capable(target)
        if bkp.logical_bytes > target.disk_gb * GIB:
            raise InvalidRequest(f"VM {target.id}'s disk ({target.disk_gb} GB) is smaller than the backup ({bkp.logical_bytes} bytes)", field="targetVmId")
        async with self.rt.store.write() as conn:
            if await bkp_q.busy(conn, target.id):
                raise Conflict(f"VM {target.id} already has a backup or restore in progress", reason=Reason.IN_PROGRESS)
            job_id = await self.rt.engine.submit(conn, "vm-restore", who, [(target.id, {"backupId": bkp.id})])
        self.rt.engine.wakeup()
        return job_id

    async def restore_as(self, backup_id: str, target_ref: str, who: Principal, name: str | None = None) -> str:
        """Restore into a VM under a new `name` (None: its own): the VM is renamed first and,
        if the restore cannot start, named as it was again. A refused name raises with
        `details["field"] == "name"`; nothing has changed then."""
        target = await self.rt.vms.get(target_ref, who)
        old_name = target.name
        renamed = name is not None and name != old_name
        if renamed:
            assert name is not None
            try:
                await self.rt.vms.rename(target.id, name, who)
            except (InvalidRequest, Conflict) as exc:  # InvalidState too: the VM is being deleted
                exc.details.setdefault("field", "name")
                raise
        try:
            return await self.restore(backup_id, target.id, who)
        except VmplaneError:
            if renamed:  # nothing happened: the name goes back too
                await self.rt.vms.rename(target.id, old_name, who)
            raise

    async def prune(self, vm_id: str, keep_last: int, who: Principal) -> list[str]:
        """Delete the VM's succeeded backups beyond the newest `keep_last`; returns their jobs."""
        done = [b for b in await self.list(who, vm_id) if b.status == "succeeded"]
        return [await self.delete(b.id, who) for b in done[keep_last:]]

    # -- backup schedules (a schedule replaying POST /vms/{id}/backups, plus retention) -----

    async def get_schedule(self, vm_ref: str, who: Principal) -> BackupSchedule:
        vm = await self.rt.vms.get(vm_ref, who)
        async with self.rt.store.read() as conn:
            sch = await sch_q.backup_schedule(conn, vm.id)
        if sch is None:
            raise NotFound(f"VM {vm.id} has no backup schedule")
        return BackupSchedule.of(sch)

    async def put_schedule(
        self, vm_ref: str, who: Principal, *, frequency: str, hour: int, day_of_week: int | None, day_of_month: int | None, keep_last: int = KEEP_LAST
    ) -> BackupSchedule:
        vm = await self.rt.vms.get(vm_ref, who)
        self._check_capable(vm)
        if frequency == "weekly" and day_of_week is None:
            raise InvalidRequest("weekly schedules need dayOfWeek (0 = Sunday … 6)", field="day_of_week")
        if frequency == "monthly" and day_of_month is None:
            raise InvalidRequest("monthly schedules need dayOfMonth (1-28)", field="day_of_month")
        expr = cron_of(frequency, hour, day_of_week, day_of_month)
        template = {"method": "POST", "path": f"/api/v1/vms/{vm.id}/backups", "body": {"notes": f"scheduled ({frequency})"}}
        async with self.rt.store.read() as conn:
            existing = await sch_q.backup_schedule(conn, vm.id)
        if existing is not None:
            await self.rt.schedules.delete(existing.id, who)
        row = await self.rt.schedules.create(
            name=f"backup-{vm.name}", schedule=expr, timezone="UTC", enabled=True, job_template=template,
            misfire_policy="run_once", who=who, backup_vm_id=vm.id, keep_last=keep_last,
        )  # fmt: skip
        return BackupSchedule.of(row)

    async def delete_schedule(self, vm_ref: str, who: Principal) -> None:
        sch = await self.get_schedule(vm_ref, who)
        await self.rt.schedules.delete(sch.id, who)

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
            "repositoryBytes": await self.rt.backup_store.stored_bytes() if who.operator else None,
        }
