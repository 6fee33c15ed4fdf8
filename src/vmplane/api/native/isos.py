"""/api/v1/isos: the ISO library (list, get, import from a URL as a job, upload a file, delete)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ...errors import InvalidRequest
from .. import render
from ..deps import CallerDep, RuntimeDep
from ..schemas import IsoCreateIn, IsoOut, Page
from .deps import ACCEPTED, ERRORS, Limit, PageToken, accepted
from .templates import request_body

router = APIRouter(tags=["isos"])

UPLOAD_PATH = "/api/v1/isos/upload"
"""streamed as templates/upload is (api/middleware.BodyLimit lets it through; the route
streams it to disk under the limits of services/uploads.py)"""


@router.get("/isos", response_model=Page[IsoOut], responses=ERRORS)
async def list_isos(rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    rows, token = await rt.isos.list(who, limit=limit, page_token=pageToken)
    return JSONResponse({"items": [render.iso(r) for r in rows], "nextPageToken": token})


@router.get("/isos/{iso_id}", response_model=IsoOut, responses=ERRORS)
async def get_iso(iso_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render.iso(await rt.isos.get(iso_id, who)))


@router.post("/isos", status_code=202, responses=ACCEPTED)
async def import_iso(body: IsoCreateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    """An ISO fetched from `sourceUrl` by an iso-import job (202 + jobId, isoId): offered once
    its sha256 (if given) matches and it is an ISO 9660 image."""
    job_id, iso_id = await rt.isos.create(name=body.name, source_url=body.sourceUrl, sha256=body.sha256, who=caller)
    return accepted(job_id, isoId=iso_id)


@router.post(
    "/isos/upload", status_code=201, response_model=IsoOut,
    responses={**ERRORS, 413: {"description": "larger than VMPLANE_MAX_DOWNLOAD_BYTES"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)  # fmt: skip
async def upload_iso(
    request: Request, rt: RuntimeDep, caller: CallerDep,
    name: Annotated[str, Query(min_length=1, max_length=63)],
    sha256: Annotated[str | None, Query(min_length=64, max_length=64)] = None,
) -> JSONResponse:  # fmt: skip
    """An ISO from the file sent as the body (application/octet-stream), streamed to disk as
    it arrives; 201 with the ISO, ready, once it is checked (sha256 when given, the ISO 9660
    signature)."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise InvalidRequest("Content-Length must be a whole number", field="Content-Length")
    iso = await rt.isos.upload(
        request_body(request, rt.settings.body_timeout_seconds), name=name, sha256=sha256, who=caller,
        length=int(length) if length is not None else None,
    )  # fmt: skip
    return JSONResponse(render.iso(iso), status_code=201, headers={"Location": f"/api/v1/isos/{iso.id}"})


@router.delete("/isos/{iso_id}", status_code=204, responses=ERRORS)
async def delete_iso(iso_id: str, rt: RuntimeDep, caller: CallerDep) -> Response:
    """409 while a VM's CD-ROM holds it (the VMs named); 403 for a shared ISO unless an operator."""
    await rt.isos.delete(iso_id, caller)
    return Response(status_code=204)
