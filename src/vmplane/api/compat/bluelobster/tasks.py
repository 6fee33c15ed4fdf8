"""Blue Lobster tasks: vmplane jobs under the contract's names and statuses, one by id (with
the VM and host of a single-VM job) or the account's recent ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from .... import clock
from ....auth import Principal
from ....errors import NotFound
from ....services.offerings import Offerings
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import offerings_of, vm_host

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


TASK_DAYS_MAX = 7
TASK_LIMIT_MAX = 100


async def _task_out(rt: Runtime, off: Offerings, job: Row[Any], tasks: Sequence[Row[Any]], who: Principal) -> dict[str, Any]:
    out = wire.task(job, list(tasks))
    if len(tasks) == 1:
        try:
            vm = await rt.vms.get(tasks[0].resource_id, who)
        except NotFound:
            vm = None
        if vm is not None:
            out["params"]["vm_uuid"] = vm.uuid
            host = await vm_host(off, vm)
            if host is not None:
                out["params"]["host_id"] = host
    return out


@router.get("/api/v1/tasks/{task_id}")
async def get_task(task_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    try:
        job, tasks = await rt.jobs.get(task_id, who)
    except NotFound:
        return JSONResponse({"error": "task_not_found", "message": "Task not found", "task_id": task_id}, status_code=404)
    return JSONResponse(await _task_out(rt, offerings_of(request), job, tasks, who))


@router.get("/api/v1/tasks")
async def list_tasks(
    request: Request,
    rt: RuntimeDep,
    who: CallerDep,
    limit: int = Query(50, ge=1, le=TASK_LIMIT_MAX),
    days: int = Query(1, ge=1, le=TASK_DAYS_MAX),
    status: Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED"] | None = None,
) -> JSONResponse:
    """The account's tasks of the last `days` days, newest first."""
    since = clock.now() - days * 86400
    picked: list[dict[str, Any]] = []
    token = None
    done = False
    while not done:
        page, token = await rt.jobs.list(who, state=None, type_=None, limit=200, page_token=token)
        for job in page:
            if job.created_at < since:
                done = True
                break
            if status is None or wire.TASK_STATUS.get(job.state) == status:
                _, tasks = await rt.jobs.get(job.id, who)
                picked.append(wire.task(job, list(tasks)))
                if len(picked) == limit:
                    done = True
                    break
        done = done or token is None
    return JSONResponse({"tasks": picked, "total": len(picked), "limit": limit, "days": days})
