"""The HyperSDK jobs endpoints (submit, query, cancel, progress, logs, one job); the
translation of a job into a vmplane import is jobs.py.

Jobs are vmplane imports (rt.imports): a job's id is the import's id, its definition is what
the client sent (credentials left out), its status and progress are the import's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ....auth import Principal
from ....errors import InvalidRequest, VmplaneError
from ...deps import CallerDep, RuntimeDep, authorize
from . import jobs as hjobs
from . import wire
from .wire import JobDefIn

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/jobs/submit")
async def submit(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """One definition, an array, or `{jobs: [...]}`; JSON or YAML. Each is submitted on its
    own: the answer says which were accepted and why the others were not."""
    raw = wire.job_defs(await wire.body(request))
    if not raw:
        raise InvalidRequest("no job definitions given", field="jobs")
    if len(raw) > 100:
        raise InvalidRequest("at most 100 job definitions per request", field="jobs")
    job_ids: list[str] = []
    errors: list[str] = []
    warnings: list[str] = []
    for i, item in enumerate(raw):
        where = "body" if len(raw) == 1 else f"jobs[{i}]"
        try:
            d = wire.model(JobDefIn, item, where)
            job_id, warned = await hjobs.submit(rt, who, d, where)
            job_ids.append(job_id)
            warnings += warned if len(raw) == 1 else [f"{where}: {w}" for w in warned]
        except VmplaneError as exc:
            errors.append(exc.message if len(raw) == 1 else f"{where}: {exc.message}")
    answer: dict[str, Any] = {
        "job_ids": job_ids, "accepted": len(job_ids), "rejected": len(errors), "errors": errors, "timestamp": wire.now(),
    }  # fmt: skip
    if warnings:
        answer["warnings"] = warnings
    if not job_ids:
        return JSONResponse({"error": errors[0] if len(errors) == 1 else "no job was accepted: " + "; ".join(errors[:5]), **answer}, status_code=400)
    answer["job_id"] = job_ids[0]
    answer["message"] = "job submitted successfully" if len(job_ids) == 1 else f"{len(job_ids)} jobs submitted"
    return JSONResponse(answer, status_code=201)


def _statuses(value: Any) -> set[str] | None:
    if value is None or value == "" or value == []:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    out = set()
    for s in items:
        s = str(s).strip().lower()
        if s not in wire.STATUSES:
            raise InvalidRequest(f"status {s!r} is not one of {', '.join(wire.STATUSES)}", field="status")
        out.add(s)
    return out


def _ids(value: Any, field: str = "job_ids") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value) or len(value) > 1000:
        raise InvalidRequest(f"{field} must be a list of job ids (at most 1000)", field=field)
    return value


def _limit(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        raise InvalidRequest("limit must be a whole number", field="limit")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest("limit must be a whole number", field="limit") from None
    if isinstance(value, bool) or n < 0 or n > 100_000:
        raise InvalidRequest("limit must be between 0 and 100000 (0: no limit)", field="limit")
    return n or None


async def _query(rt: Runtime, who: Principal, job_ids: list[str] | None, statuses: set[str] | None, limit: int | None) -> JSONResponse:
    jobs = await hjobs.query(rt, who, job_ids=job_ids, statuses=statuses, limit=limit)
    return JSONResponse({"jobs": jobs, "total": len(jobs), "timestamp": wire.now()})


@router.get("/jobs/query")
async def query_get(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`?all=true` (every job), `?status=running`, `?job_ids=a,b`, `?limit=N`."""
    q = request.query_params
    if q.get("all", "true").lower() not in ("true", "false", "1", "0", ""):
        raise InvalidRequest("all must be true or false", field="all")
    ids = [i for i in q.get("job_ids", q.get("id", "")).split(",") if i] or None
    return await _query(rt, who, ids, _statuses(q.get("status")), _limit(q.get("limit")))


@router.post("/jobs/query")
async def query_post(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`{job_ids, status (one or a list), all, limit}`; no filter is every job."""
    data = await wire.body(request)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object such as {\"all\": true}", field="body")
    if "all" in data and not isinstance(data["all"], bool):
        raise InvalidRequest("all must be true or false", field="all")
    return await _query(rt, who, _ids(data.get("job_ids")), _statuses(data.get("status")), _limit(data.get("limit")))


@router.post("/jobs/cancel")
async def cancel(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`{job_ids}` (and/or `status`: every job of that status). Answers the client's
    `{cancelled, failed, errors}` and the document's `{message, count}`."""
    data = await wire.body(request)
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object such as {\"job_ids\": [...]}", field="body")
    ids = _ids(data.get("job_ids"))
    statuses = _statuses(data.get("status"))
    if ids is None and statuses is None:
        raise InvalidRequest("give job_ids or a status", field="job_ids")
    if ids is None:
        ids = [j["definition"]["id"] for j in await hjobs.query(rt, who, job_ids=None, statuses=statuses, limit=None)]
    cancelled, failed, errors = [], [], {}
    for job_id in ids:
        try:
            await hjobs.cancel(rt, who, job_id)
            cancelled.append(job_id)
        except VmplaneError as exc:
            failed.append(job_id)
            errors[job_id] = exc.message
    message = "jobs cancelled successfully" if cancelled and not failed else (f"{len(cancelled)} cancelled, {len(failed)} failed" if ids else "no job to cancel")
    return JSONResponse({"cancelled": cancelled, "failed": failed, "errors": errors, "message": message, "count": len(cancelled), "timestamp": wire.now()})


@router.get("/jobs/progress/{job_id}")
async def job_progress(job_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The job's progress alone (what HyperSDK's client fetches for get_job_progress)."""
    return JSONResponse((await hjobs.get(rt, who, job_id))["progress"])


@router.get("/jobs/logs/{job_id}")
async def job_logs(job_id: str, rt: RuntimeDep, who: CallerDep) -> PlainTextResponse:
    """The import's log lines, as text."""
    return PlainTextResponse(await hjobs.logs(rt, who, job_id))


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await hjobs.get(rt, who, job_id))
