"""Blue Lobster teams: an instance put in a team or taken out, and a team's instances."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from ....auth import Principal
from ....errors import NotFound
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import find_instance, nodes_by_id, offerings_of, render
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


async def _team(rt: Runtime, team_id: str, who: Principal) -> Row[Any]:
    try:
        return await rt.tenancy.team(who, team_id)
    except NotFound:
        raise BlError(404, "team_not_found", f"Team {team_id} not found") from None


@router.put("/api/v1/instances/{instance_id}/team")
async def assign_team(
    instance_id: str,
    rt: RuntimeDep,
    who: CallerDep,
    body: wire.TeamAssignIn | None = None,
    team_id: str | None = Query(None, min_length=1, max_length=64),
) -> JSONResponse:
    """Owners and admins put an instance in a team (team-scoped keys then see it). The
    contract documents no body: the team is the body's `team_id`, else the query's
    `team_id`, else the caller's own (a team-scoped key's team)."""
    vm = await find_instance(rt, instance_id, who)
    wanted = body.team_id if body is not None and body.team_id is not None else team_id or who.team_id
    if wanted is None:
        message = "Field required: give team_id in the body or the query (or use a team-scoped key)"
        raise RequestValidationError([{"type": "missing", "loc": ("body", "team_id"), "msg": message, "input": None}])
    team = await _team(rt, wanted, who)
    vm, _ = await rt.tenancy.set_vm_team(who, vm.id, team.id)
    return JSONResponse(
        {"status": "success", "message": "Instance assigned to team", "instance_id": vm.uuid, "team_id": team.id, "team_name": team.name}
    )


@router.delete("/api/v1/instances/{instance_id}/team")
async def remove_team(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Owners and admins take an instance out of its team."""
    vm = await find_instance(rt, instance_id, who)
    vm, _ = await rt.tenancy.set_vm_team(who, vm.id, None)
    return JSONResponse({"status": "success", "message": "Instance removed from team", "instance_id": vm.uuid, "team_id": None})


@router.get("/api/v1/teams/{team_id}/instances")
async def team_instances(team_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The instances of a team of the account (a team-scoped key: only its own team)."""
    team = await _team(rt, team_id, who)
    off = offerings_of(request)
    nodes = await nodes_by_id(off)
    rows = sorted((r for r in await rt.vms.every(who) if r.team_id == team.id), key=lambda r: (r.created_at, r.seq), reverse=True)
    out = [{**render(off, r, nodes), "team_name": team.name} for r in rows]
    return JSONResponse({"team_id": team.id, "team_name": team.name, "instances": out, "total": len(out)})
