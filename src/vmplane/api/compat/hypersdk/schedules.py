"""The HyperSDK schedules endpoints: the core's schedules, marked as the face's own (a
schedule's `origin`); the face lists and addresses only those, by the id the client gave."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ....auth import Principal
from ....errors import InvalidRequest
from ...deps import CallerDep, RuntimeDep, authorize
from . import jobs as hjobs
from . import wire
from .shared import ORIGIN, ok
from .wire import JobDefIn

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


async def _schedules(rt: Runtime, who: Principal) -> list[Any]:
    return await rt.schedules.made_by(ORIGIN, who)


async def _schedule(rt: Runtime, who: Principal, schedule_id: str) -> Any:
    return await rt.schedules.by_origin(ORIGIN, schedule_id, who)


class _ScheduleIn(wire.Open):
    id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=2048)
    schedule: str | None = Field(None, max_length=128)
    enabled: bool | None = None
    job_template: dict[str, Any] | None = None
    tags: list[str] | None = None


@router.get("/schedules")
async def list_schedules(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [wire.render_schedule(s) for s in await _schedules(rt, who)]
    return JSONResponse({"schedules": items, "total": len(items), "timestamp": wire.now()})


@router.get("/schedules/stats")
async def schedule_stats(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    rows = await _schedules(rt, who)
    enabled = sum(1 for s in rows if s.enabled)
    return JSONResponse({
        "total_schedules": len(rows), "enabled_schedules": enabled, "disabled_schedules": len(rows) - enabled,
        "total_runs": sum(s.run_count for s in rows), "successful_runs": sum(s.success_count for s in rows),
        "failed_runs": sum(s.failure_count for s in rows), "timestamp": wire.now(),
    })  # fmt: skip


@router.post("/schedules")
async def create_schedule(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    s = wire.model(_ScheduleIn, await wire.body(request), "body")
    if not s.id or not wire.SCHEDULE_ID_RE.match(s.id):
        raise InvalidRequest("id is required: 1-64 letters, digits, '.', '_' or '-'", field="id")
    if not s.schedule:
        raise InvalidRequest("schedule is required (cron: minute hour day month weekday)", field="schedule")
    if s.job_template is None:
        raise InvalidRequest("job_template is required (a job definition)", field="job_template")
    await rt.schedules.check_origin_free(ORIGIN, s.id, who)
    native, echo = await hjobs.template(rt, who, wire.model(JobDefIn, s.job_template, "job_template"), "job_template")
    origin = {"face": ORIGIN, "id": s.id, "description": s.description or "", "tags": s.tags or [], "job_template": echo}
    row = await rt.schedules.create(
        name=s.name or s.id, schedule=s.schedule, timezone="UTC", enabled=True if s.enabled is None else s.enabled,
        job_template=native, misfire_policy="run_once", who=who, origin=origin,
    )  # fmt: skip
    out = wire.render_schedule(row)
    return JSONResponse({**out, "message": "schedule created successfully", "schedule": out, "timestamp": wire.now()}, status_code=201)


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(wire.render_schedule(await _schedule(rt, who, schedule_id)))


@router.put("/schedules/{schedule_id}")
async def update_schedule(schedule_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    s = wire.model(_ScheduleIn, await wire.body(request), "body")
    if s.id is not None and s.id != schedule_id:
        raise InvalidRequest("id cannot be changed", field="id")
    origin = dict(row.origin)
    changes: dict[str, Any] = {"name": s.name, "schedule": s.schedule, "enabled": s.enabled}
    if s.job_template is not None:
        changes["job_template"], origin["job_template"] = await hjobs.template(rt, who, wire.model(JobDefIn, s.job_template, "job_template"), "job_template")
    if s.description is not None:
        origin["description"] = s.description
    if s.tags is not None:
        origin["tags"] = s.tags
    if origin != row.origin:
        changes["origin"] = origin
    if all(v is None for v in changes.values()):
        raise InvalidRequest("give at least one field to change", field="body")
    row = await rt.schedules.update(row.id, who, **changes)
    out = wire.render_schedule(row)
    return JSONResponse({**out, "message": "schedule updated successfully", "schedule": out, "timestamp": wire.now()})


@router.delete("/schedules/{schedule_id}")
async def delete_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.delete(row.id, who)
    return ok({"message": "schedule deleted successfully"})


@router.post("/schedules/{schedule_id}/enable")
async def enable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.update(row.id, who, enabled=True)
    return ok({"message": "schedule enabled successfully"})


@router.post("/schedules/{schedule_id}/disable")
async def disable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.update(row.id, who, enabled=False)
    return ok({"message": "schedule disabled successfully"})


@router.post("/schedules/{schedule_id}/trigger")
async def trigger_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    fired = await rt.schedules.trigger(row.id, who)
    if fired.get("error"):
        raise InvalidRequest(f"the schedule's job was not submitted: {fired['error']}", field="job_template")
    return ok({"message": "schedule triggered successfully", "job_id": await hjobs.hypersdk_id(rt, who, fired.get("jobId"))})
