"""/api/v1/templates: list, get, import (job) from a URL or an uploaded file, update (job),
bulk delete (job)."""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ...errors import InvalidRequest
from .. import render
from ..deps import CallerDep, RuntimeDep
from ..schemas import Page, TemplateCreateIn, TemplateDeleteIn, TemplateOut, TemplateUpdateIn
from .deps import ACCEPTED, ERRORS, Limit, PageToken, accepted

router = APIRouter(tags=["templates"])


@router.get("/templates", response_model=Page[TemplateOut], responses=ERRORS)
async def list_templates(rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    rows, token = await rt.templates.list(who, limit=limit, page_token=pageToken)
    return JSONResponse({"items": [render.template(r) for r in rows], "nextPageToken": token})


@router.get("/templates/{template_id}", response_model=TemplateOut, responses=ERRORS)
async def get_template(template_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render.template(await rt.templates.get(template_id, who)))


@router.post("/templates", status_code=202, responses=ACCEPTED)
async def create_template(body: TemplateCreateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    job_id, tpl_id = await rt.templates.create(
        name=body.name, os_=body.os, node_id=body.nodeId, source_url=body.sourceUrl, who=caller, login_user=body.loginUser
    )
    return accepted(job_id, templateId=tpl_id)


UPLOAD_PATH = "/api/v1/templates/upload"
"""the one request whose body is not read whole before the route runs (api/middleware.BodyLimit
lets it through: the route streams it to disk with its own limits)"""


async def request_body(request: Request, idle: float) -> AsyncIterator[bytes]:
    """The request body as it arrives; InvalidRequest (`body`) when the client goes away or
    sends nothing for `idle` seconds (a trickle cannot hold the upload open for ever)."""
    stream = request.stream().__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except ClientDisconnect:
            raise InvalidRequest("the upload stopped before the whole body arrived", field="body") from None
        except TimeoutError:
            raise InvalidRequest(f"the upload sent nothing for {idle:g} s", field="body") from None
        if chunk:
            yield chunk


@router.post(
    "/templates/upload", status_code=202, responses={**ACCEPTED, 413: {"description": "larger than VMPLANE_MAX_DOWNLOAD_BYTES"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)  # fmt: skip
async def upload_template(
    request: Request, rt: RuntimeDep, caller: CallerDep,
    name: Annotated[str, Query(min_length=1, max_length=63)],
    os: Annotated[str, Query(min_length=1, max_length=32)] = "linux",
    loginUser: Annotated[str | None, Query(max_length=64)] = None,
    nodeId: Annotated[str | None, Query(max_length=64)] = None,
) -> JSONResponse:  # fmt: skip
    """A template from the image file sent as the body (application/octet-stream: qcow2, raw,
    vmdk, vhdx or vhd), streamed to disk as it arrives; then the same template-create job as
    a URL import (202 + jobId, templateId), whose image intake refuses what a URL's would."""
    length = request.headers.get("content-length")
    if length is not None and not length.isdigit():
        raise InvalidRequest("Content-Length must be a whole number", field="Content-Length")
    job_id, tpl_id = await rt.templates.upload(
        request_body(request, rt.settings.body_timeout_seconds), name=name, os_=os, node_id=nodeId, who=caller, login_user=loginUser,
        length=int(length) if length is not None else None,
    )  # fmt: skip
    return accepted(job_id, templateId=tpl_id)


@router.patch("/templates/{template_id}", status_code=202, responses=ACCEPTED)
async def update_template(template_id: str, body: TemplateUpdateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    return accepted(await rt.templates.update(template_id, name=body.name, os_=body.os, who=caller, login_user=body.loginUser))


@router.delete("/templates", status_code=202, responses=ACCEPTED)
async def delete_templates(rt: RuntimeDep, caller: CallerDep, body: TemplateDeleteIn = Body(...)) -> JSONResponse:
    return accepted(await rt.templates.delete(body.templateIds, caller))
