"""/api/v1/plugins (install, list, get, enable/disable, delete) and what plugin VMs offer:
/vms/{id}/plugin (plugin and workload health), /vms/{id}/actions/{action}, /vms/{id}/openapi."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import Field
from sqlalchemy import Row

from ... import clock
from ...store import templates as tpl_q
from ..deps import CallerDep, RuntimeDep
from ..schemas import In
from .deps import ERRORS

if TYPE_CHECKING:
    from ...runtime import Runtime

router = APIRouter(tags=["plugins"])


async def render_plugin(rt: "Runtime", row: Row[Any]) -> dict[str, Any]:
    image = None
    if row.template_id is not None:
        async with rt.store.read() as conn:
            tpl = await tpl_q.get_template(conn, row.template_id)
        image = {"templateId": row.template_id, "status": tpl.status if tpl else "missing", "error": tpl.error if tpl else None}
    return {
        "name": row.name,
        "runtime": row.runtime,
        "version": row.version,
        "enabled": row.enabled,
        "shared": row.org_id is None,  # the operators' plugin, shared with every organization
        "image": image,
        "actions": sorted(row.manifest.get("actions") or {}),
        "manifest": row.manifest,
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
    }


@router.get("/plugins", responses=ERRORS)
async def list_plugins(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Installed plugins (shared ones and the organization's own), by name."""
    return JSONResponse({"items": [await render_plugin(rt, r) for r in await rt.plugins.list(who)], "nextPageToken": None})


@router.post("/plugins", status_code=201, responses=ERRORS)
async def install_plugin(rt: RuntimeDep, who: CallerDep, manifest: dict[str, Any] = Body(..., description="a plugin manifest (plugin-manifest-v1)")) -> JSONResponse:
    """Install a plugin; its image is fetched by a template-create job (`image.status`)."""
    row = await rt.plugins.install(manifest, who)
    return JSONResponse(await render_plugin(rt, row), status_code=201, headers={"Location": f"/api/v1/plugins/{row.name}"})


@router.get("/plugins/{name}", responses=ERRORS)
async def get_plugin(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await render_plugin(rt, await rt.plugins.get(name, who)))


class EnabledIn(In):
    enabled: bool = Field(..., description="true: VMs may be created with the plugin")


@router.put("/plugins/{name}/enabled", responses=ERRORS)
@router.post("/plugins/{name}/enabled", responses=ERRORS, include_in_schema=False)
async def set_plugin_enabled(name: str, body: EnabledIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Enable or disable a plugin (a disabled one makes no new VMs; its VMs keep running)."""
    return JSONResponse(await render_plugin(rt, await rt.plugins.set_enabled(name, body.enabled, who)))


@router.delete("/plugins/{name}", status_code=204, responses=ERRORS)
async def delete_plugin(name: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """Remove a plugin; refused (409, naming them) while VMs made from it exist."""
    await rt.plugins.delete(name, who)
    return Response(status_code=204)


@router.get("/vms/{vm_id}/plugin", responses=ERRORS)
async def vm_plugin(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The plugin a VM was made from and its workload's health (null until first checked)."""
    vm = await rt.vms.get(vm_id, who)
    plugin = await rt.plugins.of_vm(vm)
    return JSONResponse(
        {"vmId": vm.id, "plugin": plugin.name, "runtime": plugin.runtime, "version": plugin.version,
         "actions": sorted(plugin.manifest.get("actions") or {}), "health": await rt.plugins.health_of(vm)}
    )  # fmt: skip


@router.post("/vms/{vm_id}/actions/{action}", responses={**ERRORS, 502: {"description": "the workload could not be reached or timed out"}})
async def vm_action(vm_id: str, action: str, request: Request, rt: RuntimeDep, who: CallerDep) -> Response:
    """Call a plugin action: the action's request goes to the workload in the guest (with
    this request's body and query string), and its answer comes back as it is."""
    raw = request.scope.get("state", {}).get("raw_body", b"") or await request.body()
    out = await rt.plugins.call_action(
        vm_id, action, who, body=raw, content_type=request.headers.get("content-type"), query=request.url.query
    )
    return Response(out.body, status_code=out.status, media_type=out.content_type)


@router.get("/vms/{vm_id}/openapi", responses={**ERRORS, 502: {"description": "the manifest's openapi URL could not be fetched"}})
async def vm_openapi(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The OpenAPI document of the VM's workload: the guest's own, else the manifest's."""
    return JSONResponse(await rt.plugins.openapi(vm_id, who))
