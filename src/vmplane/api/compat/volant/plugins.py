"""The Volant face's plugin, per-VM OpenAPI and MCP endpoints, in Volant's shapes:
`/api/v1/plugins` (`{"plugins": [names]}`; install answers 201 with the manifest),
`/api/v1/plugins/{plugin}` (the manifest), `/api/v1/plugins/{plugin}/enabled`,
`/api/v1/vms/{name}/openapi` (the guest's document, else the manifest's URL, 502 when that
fetch fails, else 404 `openapi spec unavailable`) and `/api/v1/mcp` (`{command, params}` →
200 `{result, error?}`). Everything is done by rt.plugins and the MCP command set (api/mcp_commands.py); core errors are
rendered by the face's handler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from ....errors import DriverError
from ...deps import CallerDep, RuntimeDep, authorize
from ...mcp_commands import command, command_body

router = APIRouter()
"""every route needs credentials; the plugin routes also the right to write (POST, DELETE)"""
WRITE = [Depends(authorize)]


def manifest_of(row: Any) -> dict[str, Any]:
    return {**row.manifest, "enabled": row.enabled}


@router.get("/api/v1/plugins", dependencies=WRITE)
async def list_plugins(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"plugins": [r.name for r in await rt.plugins.list(who)]})


@router.post("/api/v1/plugins", dependencies=WRITE)
async def install_plugin(rt: RuntimeDep, who: CallerDep, manifest: Any = Body(...)) -> JSONResponse:
    """201 with the manifest as installed (defaults filled in); its image is fetched after."""
    return JSONResponse(manifest_of(await rt.plugins.install(manifest, who)), status_code=201)


@router.get("/api/v1/plugins/{plugin}", dependencies=WRITE)
async def get_plugin(plugin: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(manifest_of(await rt.plugins.get(plugin, who)))


@router.delete("/api/v1/plugins/{plugin}", dependencies=WRITE)
async def remove_plugin(plugin: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """204; 409 while VMs made from the plugin exist."""
    await rt.plugins.delete(plugin, who)
    return Response(status_code=204)


class EnabledIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    enabled: bool


@router.post("/api/v1/plugins/{plugin}/enabled", dependencies=WRITE)
async def set_plugin_enabled(plugin: str, body: EnabledIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.plugins.set_enabled(plugin, body.enabled, who)
    return JSONResponse({"name": row.name, "enabled": row.enabled})


@router.get("/api/v1/vms/{name}/openapi")
async def vm_openapi(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await rt.vms.by_name(name, who)
    try:
        return JSONResponse(await rt.plugins.openapi(vm.id, who))
    except DriverError as exc:  # the daemon answers 502 when the manifest's URL fails
        return JSONResponse({"error": exc.message, "details": {}}, status_code=502)


@router.post("/api/v1/mcp")
async def mcp_command(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Always 200 `{result, error?}`; 400 only for a body that is not a JSON object."""
    body = await command_body(request)
    return JSONResponse(await command(rt, body.get("command"), body.get("params"), who))
