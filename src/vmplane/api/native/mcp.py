"""POST /api/v1/mcp: Volant's MCP command endpoint (`{command, params}` → 200 `{result,
error?}`; 400 only for a body that is not a JSON object). The operations: api/mcp_commands.py."""


from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..deps import CallerDep, RuntimeDep
from ..mcp_commands import command, command_body
from .deps import ERRORS

router = APIRouter(tags=["mcp"])
"""not under the write rule of the other routers: read-only keys run the commands that only
read (the service refuses them the others)"""


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
    return JSONResponse(await command(rt, body.get("command"), body.get("params"), who))
