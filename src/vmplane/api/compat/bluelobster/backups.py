"""Blue Lobster backups (`volid` is a vmplane backup id): taken, listed, restored into their
VM or another, deleted, annotated, the storage they use, and each instance's backup schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from .... import clock
from ....auth import Principal
from ....domain import Vm
from ....errors import Conflict, InvalidRequest, InvalidState, NotFound, Reason
from ....services.backups import BackupSchedule
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import find_instance
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


STORAGE = "vmplane"
"""the name backups' storage goes by (the installation's backup store)"""


async def _backup(rt: Runtime, volid: str, who: Principal) -> Row[Any]:
    try:
        return await rt.backups.get(volid, who)
    except NotFound:
        raise BlError(404, "backup_not_found", f"Backup {volid} not found") from None


@router.post("/api/v1/instances/{instance_id}/backup")
async def create_backup(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A live backup of the whole disk; follow it with `task_id`."""
    vm = await find_instance(rt, instance_id, who)
    try:
        job_id, backup_id = await rt.backups.create(vm.id, "", who)
    except Conflict as exc:  # InvalidState too: no disk yet, a backup or restore under way, no backup support
        raise BlError(409, "task_in_progress" if exc.reason == Reason.IN_PROGRESS else "backup_unavailable", f"Cannot start backup: {exc.message}") from None
    return JSONResponse({"message": "Backup started", "task_id": job_id, "instance_id": vm.uuid, "volid": backup_id})


@router.get("/api/v1/instances/{instance_id}/backups")
async def instance_backups(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The instance's finished backups, newest first, and whether a backup or restore runs."""
    vm = await find_instance(rt, instance_id, who)
    busy = await rt.backups.in_progress(vm.id)
    rows = [b for b in await rt.backups.list(who, vm.id) if b.status == "succeeded"]
    return JSONResponse(
        {
            "instance_id": vm.uuid,
            "storage": STORAGE,
            "backups": [wire.backup(b, vm.uuid) for b in rows],
            "total": len(rows),
            "backup_in_progress": "backup-create" in busy,
            "restore_in_progress": "vm-restore" in busy,
        }
    )


async def _restore(rt: Runtime, volid: str, target: Vm, who: Principal) -> str:
    await _backup(rt, volid, who)
    try:
        return await rt.backups.restore(volid, target.id, who)
    except InvalidState as exc:  # the backup is not (or no longer) usable
        raise BlError(400, "invalid_backup", exc.message) from None
    except Conflict as exc:
        raise BlError(409, "task_in_progress", f"Cannot start restore: {exc.message}") from None


@router.post("/api/v1/instances/{instance_id}/restore")
async def restore_instance(instance_id: str, rt: RuntimeDep, who: CallerDep, body: dict[str, Any] | None = Body(None)) -> JSONResponse:
    """Stop the instance, replace its disk with the backup `backup_volid`, start it again."""
    vm = await find_instance(rt, instance_id, who)
    volid = (body or {}).get("backup_volid")
    if not isinstance(volid, str) or not volid:
        raise BlError(400, "missing_backup_volid", "backup_volid is required")
    try:
        job_id = await _restore(rt, volid, vm, who)
    except InvalidRequest as exc:  # the disk is smaller than the backup
        raise BlError(400, "invalid_request", exc.message) from None
    return JSONResponse({"message": "Restore started", "task_id": job_id, "instance_id": vm.uuid, "backup_volid": volid})


@router.get("/api/v1/backups")
async def all_backups(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Every backup of the account (a team key's: its team's), including deleted VMs'."""
    uuids = {v.id: v.uuid for v in await rt.vms.every(who)}
    rows = await rt.backups.list(who)
    out = [{**wire.backup(b, uuids.get(b.vm_id)), "vm_deleted": b.vm_id not in uuids} for b in rows]
    return JSONResponse({"backups": out, "total": len(out), "storage": STORAGE})


@router.delete("/api/v1/backups")
async def delete_backup(rt: RuntimeDep, who: CallerDep, volid: str = Query(...)) -> JSONResponse:
    await _backup(rt, volid, who)
    try:
        job_id = await rt.backups.delete(volid, who)
    except Conflict as exc:
        raise BlError(409, "task_in_progress", exc.message) from None
    return JSONResponse({"status": "success", "message": "Backup deletion started", "task_id": job_id, "volid": volid})


@router.post("/api/v1/backups/restore")
async def restore_to_vm(
    rt: RuntimeDep,
    who: CallerDep,
    volid: str = Query(...),
    target_vm_uuid: str = Query(...),
    new_name: str | None = None,
    add_restore_prefix: bool = False,
    backup_source_name: str | None = None,
) -> JSONResponse:
    """Restore a backup into any VM whose disk is large enough, optionally renaming it
    (`new_name`, and/or the prefix `RESTORE-<yyyymmdd>-`)."""
    bkp = await _backup(rt, volid, who)
    target = await find_instance(rt, target_vm_uuid, who)
    name = None
    if new_name is not None or add_restore_prefix:
        base = new_name or backup_source_name or bkp.vm_name
        name = f"RESTORE-{clock.rfc3339(clock.now())[:10].replace('-', '')}-{base}" if add_restore_prefix else base
    try:
        job_id = await rt.backups.restore_as(bkp.id, target.id, who, name)
    except (InvalidRequest, Conflict) as exc:  # the contract lists 400 here, never 409
        if exc.details.get("field") == "name":
            raise BlError(400, "invalid_name", exc.message) from None
        if isinstance(exc, InvalidState):  # the backup is not (or no longer) usable
            raise BlError(400, "invalid_backup", exc.message) from None
        if isinstance(exc, Conflict):
            raise BlError(400, "task_in_progress", f"Cannot start restore: {exc.message}") from None
        raise BlError(400, "invalid_request", exc.message) from None
    return JSONResponse({"message": "Restore started", "task_id": job_id, "volid": volid, "target_vm_uuid": target.uuid, "new_name": name})


@router.get("/api/v1/backups/storage")
async def backup_storage(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Bytes backed up (logical) and stored (what each backup added), per VM and in all."""
    s = await rt.backups.storage(who)
    return JSONResponse(
        {
            "storage": STORAGE,
            "total_bytes": s["logicalBytes"],
            "total_human": wire.human_bytes(s["logicalBytes"]),
            "stored_bytes": s["storedBytes"],
            "stored_human": wire.human_bytes(s["storedBytes"]),
            "vms": [
                {"vm_id": i["vmId"], "vm_name": i["vmName"], "backups": i["backups"], "size_bytes": i["logicalBytes"], "stored_bytes": i["storedBytes"]}
                for i in s["items"]
            ],
        }
    )


@router.put("/api/v1/backups/notes")
async def backup_notes(body: wire.BackupNotesIn, rt: RuntimeDep, who: CallerDep, volid: str = Query(...)) -> JSONResponse:
    await _backup(rt, volid, who)
    row = await rt.backups.set_notes(volid, body.notes, who)
    return JSONResponse({"status": "success", "message": "Backup notes updated", "volid": row.id, "notes": row.notes})


def _schedule_out(vm: Vm, s: BackupSchedule) -> dict[str, Any]:
    return {
        "vm_uuid": vm.uuid,
        "schedule_id": s.id,
        "frequency": s.frequency,
        "hour_utc": s.hour,
        "day_of_week": s.day_of_week,
        "day_of_month": s.day_of_month,
        "keep_last": s.keep_last,
        "enabled": s.enabled,
        "next_run": clock.rfc3339(s.next_run),
        "last_run": clock.rfc3339(s.last_run),
    }


async def _schedule(rt: Runtime, vm: Vm, who: Principal) -> BackupSchedule:
    try:
        return await rt.schedules.backup_schedule(vm.id, who)
    except NotFound:
        raise BlError(404, "schedule_not_found", f"Instance {vm.uuid} has no backup schedule") from None


@router.get("/api/v1/instances/{vm_uuid}/backup-schedule")
async def get_backup_schedule(vm_uuid: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await find_instance(rt, vm_uuid, who)
    return JSONResponse(_schedule_out(vm, await _schedule(rt, vm, who)))


@router.post("/api/v1/instances/{vm_uuid}/backup-schedule")
async def put_backup_schedule(vm_uuid: str, body: wire.BackupScheduleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """daily, weekly (day_of_week 0 = Sunday … 6) or monthly (day_of_month 1-28) at hour_utc;
    the service's default number of backups (seven) is kept after each run (the contract's
    schedules have no retention field). Replaces the VM's schedule."""
    vm = await find_instance(rt, vm_uuid, who)
    checks = (
        (body.frequency in ("daily", "weekly", "monthly"), "frequency must be daily, weekly or monthly"),
        (0 <= body.hour_utc <= 23, "hour_utc must be from 0 to 23"),
        (body.day_of_week is None or 0 <= body.day_of_week <= 6, "day_of_week must be from 0 (Sunday) to 6"),
        (body.day_of_month is None or 1 <= body.day_of_month <= 28, "day_of_month must be from 1 to 28"),
    )
    for ok, message in checks:
        if not ok:
            raise BlError(400, "invalid_schedule", message)
    try:
        s = await rt.schedules.put_backup_schedule(
            vm.id, who, frequency=body.frequency, hour=body.hour_utc, day_of_week=body.day_of_week, day_of_month=body.day_of_month
        )
    except (InvalidRequest, Conflict) as exc:
        raise BlError(400, "invalid_schedule", exc.message) from None
    return JSONResponse({"status": "success", "message": "Backup schedule saved", "schedule": _schedule_out(vm, s)})


@router.delete("/api/v1/instances/{vm_uuid}/backup-schedule")
async def delete_backup_schedule(vm_uuid: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await find_instance(rt, vm_uuid, who)
    await _schedule(rt, vm, who)
    await rt.schedules.delete_backup_schedule(vm.id, who)
    return JSONResponse({"status": "success", "message": "Backup schedule deleted", "vm_uuid": vm.uuid})
