"""Dependencies shared by the native routers."""

from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse

from ...runtime import Runtime
from ..schemas import ErrorOut, JobAccepted


def get_runtime(request: Request) -> Runtime:
    return request.app.state.rt


def get_caller(request: Request) -> str:
    """Who is acting; recorded as a job's createdBy."""
    return getattr(request.state, "principal", None) or "anonymous"


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[str, Depends(get_caller)]
Limit = Annotated[int, Query(ge=1, le=500, description="page size (default 50, max 500)")]
PageToken = Annotated[str | None, Query(max_length=200, description="opaque token from nextPageToken")]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input; details.field names the field"},
    404: {"model": ErrorOut, "description": "no such resource"},
    409: {"model": ErrorOut, "description": "wrong state or conflict"},
}


def accepted(job_id: str, **extra: Any) -> JSONResponse:
    """202 with the job's id and Location."""
    body = JobAccepted(jobId=job_id, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"model": JobAccepted, "description": "job accepted"}, **ERRORS}
