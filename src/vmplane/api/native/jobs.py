"""/api/v1/jobs: list, details with tasks, one task with its log, cancel."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from .. import render
from ..deps import CallerDep, RuntimeDep
from ..schemas import JobDetailOut, JobOut, Page, TaskDetailOut
from .deps import ERRORS, Limit, PageToken

if TYPE_CHECKING:
    from ...runtime import Runtime

router = APIRouter(tags=["jobs"])


@router.get("/jobs", response_model=Page[JobOut], responses=ERRORS)
async def list_jobs(
    rt: RuntimeDep,
    who: CallerDep,
    state: str | None = Query(None, max_length=16),
    type: str | None = Query(None, max_length=32),
    limit: Limit = 50,
    pageToken: PageToken = None,
) -> JSONResponse:
    """Newest first."""
    rows, token = await rt.jobs.list(who, state=state, type_=type, limit=limit, page_token=pageToken)
    return JSONResponse({"items": [render.job(r) for r in rows], "nextPageToken": token})


@router.get("/jobs/{job_id}", response_model=JobDetailOut, responses=ERRORS)
async def get_job(job_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    job, tasks = await rt.jobs.get(job_id, who)
    return JSONResponse({**render.job(job), "tasks": [render.task(t) for t in tasks], **await _import_progress(rt, who, job.type, job.id)})


@router.get("/jobs/{job_id}/tasks/{task_id}", response_model=TaskDetailOut, responses=ERRORS)
async def get_task(job_id: str, task_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    task, log = await rt.jobs.get_task(job_id, task_id, who)
    return JSONResponse(
        {**render.task(task), "jobId": task.job_id, "log": [render.task_log_line(ts, m) for ts, m in log], **await _import_progress(rt, who, task.type, task.job_id)}
    )


async def _import_progress(rt: "Runtime", who: Any, type_: str, job_id: str) -> dict[str, Any]:
    """vm-import jobs and tasks show the import's stage and bytes beside their percentage."""
    if type_ != "vm-import":
        return {}
    imp = await rt.imports.for_job(job_id, who)
    if imp is None:
        return {}
    return {"importProgress": {"importId": imp.id, "stage": imp.stage, "bytesDone": imp.bytes_done, "bytesTotal": imp.bytes_total}}


@router.post("/jobs/{job_id}/cancel", status_code=202, responses=ERRORS)
async def cancel_job(job_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """Cancel queued tasks at once and ask running ones to stop; poll the job to see it end."""
    await rt.jobs.cancel(job_id, who)
    job, tasks = await rt.jobs.get(job_id, who)
    return JSONResponse({**render.job(job), "tasks": [render.task(t) for t in tasks]}, status_code=202)
