"""/api/v1/templates: list, get, import (job), update (job), bulk delete (job)."""

from fastapi import APIRouter, Body
from fastapi.responses import JSONResponse

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


@router.patch("/templates/{template_id}", status_code=202, responses=ACCEPTED)
async def update_template(template_id: str, body: TemplateUpdateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    return accepted(await rt.templates.update(template_id, name=body.name, os_=body.os, who=caller, login_user=body.loginUser))


@router.delete("/templates", status_code=202, responses=ACCEPTED)
async def delete_templates(rt: RuntimeDep, caller: CallerDep, body: TemplateDeleteIn = Body(...)) -> JSONResponse:
    return accepted(await rt.templates.delete(body.templateIds, caller))
