"""POST /api/v1/mcp: Volant's MCP command endpoint (`{command, params}` → 200 `{result,
error?}`; 400 only for a body that is not a JSON object). The operations: services/mcp.py."""


from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ...errors import InvalidRequest
from ..deps import CallerDep, RuntimeDep
from ..middleware import json_body
from .deps import ERRORS

router = APIRouter(tags=["mcp"])
"""not under the write rule of the other routers: read-only keys run the commands that only
read (the service refuses them the others)"""


async def command_body(request: Request) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be an object {command, params}", field="body")
    return body


_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["command"],
            "properties": {"command": {"type": "string", "description": "e.g. volant.vms.list"}, "params": {"type": "object"}},
        }}},
    }
}  # fmt: skip


@router.post("/mcp", responses=ERRORS, openapi_extra=_BODY)
async def mcp_command(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Run one command (`volant.system.get_capabilities` lists them with their params); a
    failed command is still 200, with `error` set."""
    body = await command_body(request)
    return JSONResponse(await rt.mcp.command(body.get("command"), body.get("params"), who))
