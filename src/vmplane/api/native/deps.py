"""The native API's own conventions for its routers: page size and token parameters, the
error answers its OpenAPI document lists, and 202 with a job's Location. What every face
shares (the Runtime, the caller, the write rule, stream slots) is api/deps.py."""

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse

from ..schemas import ErrorOut, JobAccepted

Limit = Annotated[int, Query(ge=1, le=500, description="page size (default 50, max 500)")]
PageToken = Annotated[str | None, Query(max_length=200, description="opaque token from nextPageToken")]

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "invalid input; details.field names the field"},
    401: {"model": ErrorOut, "description": "no valid credentials"},
    403: {"model": ErrorOut, "description": "your role does not allow this"},
    404: {"model": ErrorOut, "description": "no such resource"},
    409: {"model": ErrorOut, "description": "wrong state or conflict"},
}


def accepted(job_id: str, **extra: Any) -> JSONResponse:
    """202 with the job's id (and whatever ids the request created) and Location."""
    """202 with the job's id and Location."""
    body = JobAccepted(jobId=job_id, **extra).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


ACCEPTED: dict[int | str, dict[str, Any]] = {202: {"model": JobAccepted, "description": "job accepted"}, **ERRORS}
