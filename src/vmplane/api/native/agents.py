"""Node agents: join tokens and node credentials (operators), cordon/uncordon/drain, and the
endpoints agents themselves call under /api/v1/agent (they authenticate with a join token or
their node credential, not as users)."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from ... import clock
from ...drivers import remote_wire as wire
from .. import render
from ..deps import CallerDep, RuntimeDep
from ..middleware import NO_STORE, json_body
from ..schemas import NodeOut
from .deps import ACCEPTED, ERRORS

router = APIRouter(tags=["nodes"])
agent_router = APIRouter(prefix=wire.CONTROL_PREFIX.removeprefix("/api/v1"), tags=["agent"])
"""What node agents call: outside the user authentication of the native API."""


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = Field("", max_length=256)
    oneTime: bool = False
    """the token joins one node, then no more"""
    expiresInSeconds: float | None = Field(None, gt=0, le=366 * 86400)


class TokenOut(BaseModel):
    id: str
    prefix: str
    description: str
    oneTime: bool
    uses: int
    createdBy: str
    createdAt: str
    expiresAt: str | None
    lastUsedAt: str | None
    revokedAt: str | None


class TokenCreatedOut(TokenOut):
    token: str
    """shown once: only its SHA-256 is kept"""


def token_out(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id, "prefix": row.prefix, "description": row.description, "oneTime": row.one_time, "uses": row.uses,
        "createdBy": row.created_by, "createdAt": clock.rfc3339(row.created_at), "expiresAt": clock.rfc3339(row.expires_at),
        "lastUsedAt": clock.rfc3339(row.last_used_at), "revokedAt": clock.rfc3339(row.revoked_at),
    }  # fmt: skip


@router.post("/nodes/tokens", status_code=201, response_model=TokenCreatedOut, responses=ERRORS)
async def create_token(body: TokenIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A join token for `vmplane agent --join-token` (operators). The token is in this answer
    only; it can be limited to one use and in time, and revoked."""
    row, token = await rt.agents.create_token(who, description=body.description, one_time=body.oneTime, expires_in=body.expiresInSeconds)
    return JSONResponse({**token_out(row), "token": token}, status_code=201, headers=NO_STORE)


@router.get("/nodes/tokens", responses=ERRORS)
async def list_tokens(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [token_out(r) for r in await rt.agents.tokens(who)], "nextPageToken": None})


@router.delete("/nodes/tokens/{token_id}", status_code=204, responses=ERRORS)
async def revoke_token(token_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """Revoke a join token: no node joins with it any more (nodes that joined stay)."""
    await rt.agents.revoke_token(who, token_id)
    return Response(status_code=204)


@router.delete("/nodes/{node_id}/credential", status_code=204, responses=ERRORS)
async def revoke_credential(node_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """Revoke a node's credential: its agent can neither call in nor be called, the node is
    offline at once and its VMs `unknown`. It joins again (same id, same VMs) with a new
    join token."""
    await rt.agents.revoke_credential(who, node_id)
    return Response(status_code=204)


@router.post("/nodes/{node_id}/cordon", response_model=NodeOut, responses=ERRORS)
async def cordon(node_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """No new VM is placed on the node (its VMs stay and keep working)."""
    return JSONResponse(render.node(await rt.cluster.set_cordon(who, node_id, True)))


@router.post("/nodes/{node_id}/uncordon", response_model=NodeOut, responses=ERRORS)
async def uncordon(node_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render.node(await rt.cluster.set_cordon(who, node_id, False)))


@router.post("/nodes/{node_id}/drain", responses=ACCEPTED)
async def drain(node_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Cordon the node and move its stopped VMs to other nodes: one `node-drain` job with a
    `vm-move` task per VM (202). With no stopped VM on it, 200 and `jobId: null`. Running
    VMs stay: migrate them (`POST /vms/{id}/migrate`) or stop them and drain again."""
    job_id, vm_ids = await rt.moves.drain(who, node_id)
    if job_id is None:
        return JSONResponse({"jobId": None, "vmIds": []})
    return JSONResponse({"jobId": job_id, "vmIds": vm_ids}, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targetNodeId: str | None = Field(None, max_length=64)


@router.post("/vms/{vm_id}/migrate", status_code=202, responses=ACCEPTED)
async def migrate(vm_id: str, body: MoveIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Live-migrate a running VM to another node of the same kind (qemu): its memory and disk
    move while it runs; the guest pauses for a moment and keeps its uptime (operators)."""
    job_id = await rt.moves.migrate(who, vm_id, body.targetNodeId)
    return JSONResponse({"jobId": job_id}, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


@router.post("/vms/{vm_id}/move", status_code=202, responses=ACCEPTED)
async def move(vm_id: str, body: MoveIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Move a stopped VM to another node (its disk copied), as a drain does (operators)."""
    job_id = await rt.moves.move(who, vm_id, body.targetNodeId)
    return JSONResponse({"jobId": job_id}, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


# -- what agents call ------------------------------------------------------------------------


@agent_router.post("/register", include_in_schema=False)
async def register(request: Request) -> JSONResponse:
    client = request.client
    remote = f"{client.host}:{client.port}" if client else None
    out = await request.app.state.rt.agents.register(wire.bearer(request.headers), await json_body(request), remote)
    return JSONResponse(out, status_code=201, headers=NO_STORE)  # the node credential


@agent_router.post("/hello", include_in_schema=False)
async def hello(request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.rt.agents.hello(wire.bearer(request.headers), await json_body(request)), headers=NO_STORE)


@agent_router.post("/heartbeat", include_in_schema=False)
async def heartbeat(request: Request) -> JSONResponse:
    return JSONResponse(await request.app.state.rt.agents.heartbeat(wire.bearer(request.headers)))


@agent_router.get("/templates/{template_id}/files/{name}", include_in_schema=False)
async def template_file(template_id: str, name: str, request: Request) -> FileResponse:
    path = await request.app.state.rt.agents.template_file(wire.bearer(request.headers), template_id, name)
    return FileResponse(path, media_type="application/octet-stream")
