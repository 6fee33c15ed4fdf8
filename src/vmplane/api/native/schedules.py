"""/api/v1/schedules: cron schedules that replay a native request (one that makes a job)."""

from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ... import clock
from ...services import scopes
from ..deps import CallerDep, RuntimeDep
from ..schemas import In, Page, ScopeOut
from .deps import ERRORS

router = APIRouter(tags=["schedules"])


class JobTemplateIn(In):
    method: Literal["POST", "PUT", "PATCH", "DELETE"] = "POST"
    path: str = Field(..., min_length=8, max_length=512, description="a native path, e.g. /api/v1/vms")
    body: Any = None


class ScheduleIn(In):
    name: str = Field(..., min_length=1, max_length=128)
    schedule: str = Field(..., min_length=9, max_length=128, description="cron: minute hour day month weekday")
    timezone: str = Field("UTC", min_length=1, max_length=64)
    enabled: bool = True
    jobTemplate: JobTemplateIn
    misfirePolicy: Literal["run_once", "skip"] = "run_once"


class SchedulePatch(In):
    name: str | None = Field(None, min_length=1, max_length=128)
    schedule: str | None = Field(None, min_length=9, max_length=128)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    enabled: bool | None = None
    jobTemplate: JobTemplateIn | None = None
    misfirePolicy: Literal["run_once", "skip"] | None = None


class ScheduleOut(BaseModel):
    id: str
    name: str
    schedule: str
    timezone: str
    enabled: bool
    jobTemplate: dict[str, Any]
    misfirePolicy: str
    nextRun: str | None
    lastRun: str | None
    runCount: int
    successCount: int
    failureCount: int
    lastJobId: str | None
    lastError: str | None
    createdBy: str
    createdAt: str
    updatedAt: str
    scope: ScopeOut
    disabledReason: str | None = Field(None, description="why it was disabled: the credential that made it was revoked or expired, or its user left")


class ScheduleStatsOut(BaseModel):
    totalSchedules: int
    enabledSchedules: int
    disabledSchedules: int
    totalRuns: int
    successfulRuns: int
    failedRuns: int


class TriggerOut(BaseModel):
    scheduleId: str
    jobId: str | None
    error: str | None


def render(s: Any) -> dict[str, Any]:
    return {
        "id": s.id, "name": s.name, "schedule": s.schedule, "timezone": s.timezone, "enabled": s.enabled,
        "jobTemplate": s.job_template, "misfirePolicy": s.misfire_policy, "nextRun": clock.rfc3339(s.next_run),
        "lastRun": clock.rfc3339(s.last_run), "runCount": s.run_count, "successCount": s.success_count,
        "failureCount": s.failure_count, "lastJobId": s.last_job_id, "lastError": s.last_error, "createdBy": s.owner,
        "createdAt": clock.rfc3339(s.created_at), "updatedAt": clock.rfc3339(s.updated_at), **scopes.render(s),
    }  # fmt: skip


def _changes(body: ScheduleIn | SchedulePatch) -> dict[str, Any]:
    return {
        "name": body.name, "schedule": body.schedule, "timezone": body.timezone, "enabled": body.enabled,
        "job_template": body.jobTemplate.model_dump() if body.jobTemplate else None, "misfire_policy": body.misfirePolicy,
    }  # fmt: skip


@router.get("/schedules", response_model=Page[ScheduleOut])
async def list_schedules(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [render(s) for s in await rt.schedules.list(who)], "nextPageToken": None})


@router.get("/schedules/stats", response_model=ScheduleStatsOut)
async def schedule_stats(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await rt.schedules.stats(who))


@router.post("/schedules", status_code=201, response_model=ScheduleOut, responses=ERRORS)
async def create_schedule(body: ScheduleIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    row = await rt.schedules.create(
        name=body.name, schedule=body.schedule, timezone=body.timezone, enabled=body.enabled,
        job_template=body.jobTemplate.model_dump(), misfire_policy=body.misfirePolicy, who=caller,
    )  # fmt: skip
    return JSONResponse(render(row), status_code=201)


@router.get("/schedules/{schedule_id}", response_model=ScheduleOut, responses=ERRORS)
async def get_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.schedules.get(schedule_id, who)))


@router.put("/schedules/{schedule_id}", response_model=ScheduleOut, responses=ERRORS)
async def replace_schedule(schedule_id: str, body: ScheduleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.schedules.update(schedule_id, who, **_changes(body))))


@router.patch("/schedules/{schedule_id}", response_model=ScheduleOut, responses=ERRORS)
async def update_schedule(schedule_id: str, body: SchedulePatch, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.schedules.update(schedule_id, who, **_changes(body))))


@router.delete("/schedules/{schedule_id}", status_code=204, responses=ERRORS)
async def delete_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.schedules.delete(schedule_id, who)
    return Response(status_code=204)


@router.post("/schedules/{schedule_id}/enable", response_model=ScheduleOut, responses=ERRORS)
async def enable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.schedules.update(schedule_id, who, enabled=True)))


@router.post("/schedules/{schedule_id}/disable", response_model=ScheduleOut, responses=ERRORS)
async def disable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.schedules.update(schedule_id, who, enabled=False)))


@router.post("/schedules/{schedule_id}/trigger", response_model=TriggerOut, responses=ERRORS)
async def trigger_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Run the schedule's request now (its timetable is unchanged)."""
    return JSONResponse(await rt.schedules.trigger(schedule_id, who))
