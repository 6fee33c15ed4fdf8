"""/api/v1/vms/{id}/backups, /api/v1/backups, restore."""

from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ... import clock
from ...services.backups import KEEP_LAST, BackupSchedule
from ..deps import CallerDep, RuntimeDep
from ..schemas import In, Page
from .deps import ACCEPTED, ERRORS, accepted

router = APIRouter(tags=["backups"])


class BackupIn(In):
    notes: str = Field("", max_length=1000)


class RestoreIn(In):
    backupId: str = Field(..., min_length=1, max_length=64)


class RestoreToIn(In):
    targetVmId: str = Field(..., min_length=1, max_length=64)


class BackupOut(BaseModel):
    id: str
    vmId: str
    vmName: str
    status: str
    notes: str
    logicalBytes: int
    storedBytes: int
    error: str | None
    createdAt: str
    finishedAt: str | None


class VmBackupsOut(BaseModel):
    items: list[BackupOut]
    backupInProgress: bool
    restoreInProgress: bool


def render(b: Any) -> dict[str, Any]:
    return {
        "id": b.id, "vmId": b.vm_id, "vmName": b.vm_name, "status": b.status, "notes": b.notes,
        "logicalBytes": b.logical_bytes, "storedBytes": b.added_bytes, "error": b.error,
        "createdAt": clock.rfc3339(b.created_at), "finishedAt": clock.rfc3339(b.finished_at),
    }  # fmt: skip


@router.post("/vms/{vm_id}/backups", status_code=202, responses=ACCEPTED)
async def create_backup(vm_id: str, body: BackupIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Back up the VM's whole disk; the VM keeps running."""
    job_id, backup_id = await rt.backups.create(vm_id, body.notes, who)
    return accepted(job_id, backupId=backup_id)


@router.get("/vms/{vm_id}/backups", response_model=VmBackupsOut, responses=ERRORS)
async def vm_backups(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Newest first, with whether a backup or restore is under way."""
    vm = await rt.vms.get(vm_id, who)
    busy = await rt.backups.in_progress(vm.id)
    items = [render(b) for b in await rt.backups.list(who, vm.id)]
    return JSONResponse({"items": items, "backupInProgress": "backup-create" in busy, "restoreInProgress": "vm-restore" in busy})


@router.get("/backups", response_model=Page[BackupOut], responses=ERRORS)
async def all_backups(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Every backup of the organization, including those of VMs since deleted."""
    return JSONResponse({"items": [render(b) for b in await rt.backups.list(who)], "nextPageToken": None})


@router.get("/backups/storage", responses=ERRORS)
async def storage(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Logical bytes (what was backed up) and stored bytes (what each backup added) per VM."""
    return JSONResponse(await rt.backups.storage(who))


@router.get("/backups/{backup_id}", response_model=BackupOut, responses=ERRORS)
async def get_backup(backup_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.backups.get(backup_id, who)))


@router.patch("/backups/{backup_id}", response_model=BackupOut, responses=ERRORS)
async def set_notes(backup_id: str, body: BackupIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.backups.set_notes(backup_id, body.notes, who)))


@router.delete("/backups/{backup_id}", status_code=202, responses=ACCEPTED)
async def delete_backup(backup_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return accepted(await rt.backups.delete(backup_id, who))


@router.post("/vms/{vm_id}/restore", status_code=202, responses=ACCEPTED)
async def restore(vm_id: str, body: RestoreIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Stop the VM, replace its disk with the backup, start it again."""
    return accepted(await rt.backups.restore(body.backupId, vm_id, who))


@router.post("/backups/{backup_id}/restore", status_code=202, responses=ACCEPTED)
async def restore_to(backup_id: str, body: RestoreToIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Restore into another VM whose disk is large enough."""
    return accepted(await rt.backups.restore(backup_id, body.targetVmId, who))


class BackupScheduleIn(In):
    frequency: Literal["daily", "weekly", "monthly"]
    hourUtc: int = Field(2, ge=0, le=23)
    dayOfWeek: int | None = Field(None, ge=0, le=6, description="0 = Sunday (weekly)")
    dayOfMonth: int | None = Field(None, ge=1, le=28, description="monthly")
    keepLast: int = Field(KEEP_LAST, ge=1, le=1000, description="backups kept after each successful run")


class BackupScheduleOut(BaseModel):
    scheduleId: str
    frequency: str
    hourUtc: int
    dayOfWeek: int | None
    dayOfMonth: int | None
    keepLast: int
    nextRun: str | None
    lastRun: str | None


def render_schedule(s: BackupSchedule) -> dict[str, Any]:
    return {
        "scheduleId": s.id, "frequency": s.frequency, "hourUtc": s.hour, "dayOfWeek": s.day_of_week,
        "dayOfMonth": s.day_of_month, "keepLast": s.keep_last, "nextRun": clock.rfc3339(s.next_run),
        "lastRun": clock.rfc3339(s.last_run),
    }  # fmt: skip


@router.get("/vms/{vm_id}/backup-schedule", response_model=BackupScheduleOut, responses=ERRORS)
async def get_backup_schedule(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render_schedule(await rt.schedules.backup_schedule(vm_id, who)))


@router.put("/vms/{vm_id}/backup-schedule", response_model=BackupScheduleOut, responses=ERRORS)
async def put_backup_schedule(vm_id: str, body: BackupScheduleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Back the VM up daily, weekly or monthly at hourUtc; after each successful run only the
    newest keepLast backups are kept."""
    s = await rt.schedules.put_backup_schedule(
        vm_id, who, frequency=body.frequency, hour=body.hourUtc, day_of_week=body.dayOfWeek,
        day_of_month=body.dayOfMonth, keep_last=body.keepLast,
    )  # fmt: skip
    return JSONResponse(render_schedule(s))


@router.delete("/vms/{vm_id}/backup-schedule", status_code=204, responses=ERRORS)
async def delete_backup_schedule(vm_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.schedules.delete_backup_schedule(vm_id, who)
    return Response(status_code=204)
