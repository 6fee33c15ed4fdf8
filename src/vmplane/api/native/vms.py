"""/api/v1/vms: list, create (bulk), get, update, delete (bulk or one), power actions."""

from typing import Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ... import clock
from ...auth import Principal
from ...domain import NewVm, Resources, VmStatus
from ...domain.network import parse_firewall
from ...errors import InvalidRequest
from ...runtime import Runtime
from ...services.readiness import parse_wait
from ...services.vms import VmChange
from .. import render
from ..deps import CallerDep, RuntimeDep
from ..middleware import json_body
from ..schemas import Page, VmCreateIn, VmDeleteIn, VmOut, VmUpdateIn
from .deps import ACCEPTED, ERRORS, Limit, PageToken, accepted
from .stats_history import latest_out

router = APIRouter(tags=["vms"])

_many = TypeAdapter(list[VmCreateIn])
_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "array", "items": {"$ref": "#/components/schemas/VmCreateIn"}, "minItems": 1},
                        {"$ref": "#/components/schemas/VmCreateIn"},
                    ]
                }
            }
        },
    }
}


@router.get("/vms", response_model=Page[VmOut], responses=ERRORS)
async def list_vms(
    rt: RuntimeDep,
    who: CallerDep,
    node: str | None = Query(None, max_length=64),
    status: str | None = Query(None, max_length=32),
    tag: str | None = Query(None, max_length=64),
    name: str | None = Query(None, max_length=63),
    limit: Limit = 50,
    pageToken: PageToken = None,
) -> JSONResponse:
    return render.Json(await vm_page(rt, who, node=node, status=status, tag=tag, name=name, limit=limit, page_token=pageToken))


async def vm_page(
    rt: Runtime, who: Principal, *, node: str | None, status: str | None, tag: str | None, name: str | None, limit: int, page_token: str | None
) -> dict[str, Any]:
    """A page of the caller's VMs as `GET /vms` answers it (served here and by api/fast_reads.py)."""
    rows, token = await rt.vms.list(who, node=node, status=status, tag=tag, name=name, limit=limit, page_token=page_token)
    now = clock.now()
    latest = await rt.stats_history.latest([r.id for r in rows if r.status == VmStatus.RUNNING])  # one query for the page
    items = [render.vm(r, now) | {"stats": latest_out(latest[r.id]) if r.id in latest else None} for r in rows]
    return {"items": items, "nextPageToken": token}


async def vm_document(rt: Runtime, who: Principal, vm_id: str) -> dict[str, Any]:
    """One of the caller's VMs as `GET /vms/{vm_id}` answers it (served here and by api/fast_reads.py)."""
    return render.vm(await rt.vms.get(vm_id, who), clock.now())


def _new_vm(spec: VmCreateIn, prefix: str = "") -> NewVm:
    r = spec.resources
    if spec.name is None and spec.displayName is None:
        raise InvalidRequest(f"{prefix}name is required (or give displayName to derive it from)", field=f"{prefix}name")
    return NewVm(
        name=spec.name,
        display_name=spec.displayName,
        resources=Resources(r.cpu, r.ramMb, r.diskGb) if r else None,
        snapshot=spec.snapshotId,
        plugin=spec.plugin,
        template_id=spec.templateId,
        node_id=spec.nodeId,
        tags=tuple(spec.tags),
        start=spec.start,
        team=spec.teamId,
        networks=tuple(n.networkId for n in spec.networks),
        pci=tuple(spec.devices.pciPassthrough) if spec.devices else (),
        firewall=parse_firewall(spec.firewall, f"{prefix}firewall") if spec.firewall is not None else None,
        cdrom=spec.cdrom.isoId if spec.cdrom is not None else None,
        boot_order=tuple(spec.bootOrder) if spec.bootOrder is not None else None,
        firmware=spec.firmware,
        extra={
            k: v
            for k, v in {
                "cloudInit": spec.cloudInit.model_dump(exclude_none=True) if spec.cloudInit else None,
                "sshKeys": list(spec.sshKeys),
                "expose": [e.model_dump() for e in spec.expose],
            }.items()
            if v
        },
    )


@router.post("/vms", status_code=202, responses=ACCEPTED, openapi_extra=_CREATE_BODY)
async def create_vms(request: Request, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    """Create one VM (an object) or many (an array): one job, one task per VM."""
    body = await json_body(request)
    if isinstance(body, list):
        rt.vms.check_bulk(len(body))  # before validating each spec
        specs = _many.validate_python(body)
    elif isinstance(body, dict):
        specs = [VmCreateIn.model_validate(body)]
    else:
        raise InvalidRequest("the body must be a VM spec object or an array of them", field="body")
    many = isinstance(body, list)
    job_id, vm_ids = await rt.vms.create([_new_vm(s, f"[{i}]." if many else "") for i, s in enumerate(specs)], caller)
    return accepted(job_id, vmIds=vm_ids)


@router.get("/vms/{vm_id}", response_model=VmOut, responses=ERRORS)
async def get_vm(
    vm_id: str,
    rt: RuntimeDep,
    who: CallerDep,
    waitReady: str | None = Query(
        None,
        max_length=32,
        description="seconds (at most 300) to wait for `guestReady`: the answer comes as soon as the guest is ready, "
        "the VM leaves the states on the way to it (stopped, error, …), or the time is up",
    ),
) -> JSONResponse:
    wait = parse_wait(waitReady)
    if wait:
        return render.Json(render.vm(await rt.readiness.wait_ready(vm_id, who, wait), clock.now()))
    return render.Json(await vm_document(rt, who, vm_id))


@router.patch("/vms/{vm_id}", status_code=202, responses=ACCEPTED)
async def update_vm(vm_id: str, body: VmUpdateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    r = body.resources
    change = VmChange(
        name=body.name,
        display_name=body.displayName,
        tags=tuple(body.tags) if body.tags is not None else None,
        cpu=r.cpu if r else None,
        ram_mb=r.ramMb if r else None,
        disk_gb=r.diskGb if r else None,
        set_cdrom="cdrom" in body.model_fields_set,
        cdrom=body.cdrom.isoId if body.cdrom is not None else None,
        boot_order=tuple(body.bootOrder) if body.bootOrder is not None else None,
        firmware=body.firmware,
    )
    if all(v is None for v in (change.name, change.display_name, change.tags, change.cpu, change.ram_mb, change.disk_gb)) and not change.boot_changes:
        raise InvalidRequest("give at least one of name, displayName, tags, resources, cdrom, bootOrder, firmware", field="body")
    return accepted(await rt.vms.update(vm_id, change, caller))


@router.delete("/vms", status_code=202, responses=ACCEPTED)
async def delete_vms(rt: RuntimeDep, caller: CallerDep, body: VmDeleteIn = Body(...)) -> JSONResponse:
    """One job, a task per VM: a VM the caller cannot see (or that is being deleted) gets a
    failed task and the others are deleted (the job ends `partial`, or `failed`)."""
    return accepted(await rt.vms.delete(body.vmIds, caller, partial=True))


@router.delete("/vms/{vm_id}", status_code=202, responses=ACCEPTED)
async def delete_vm(vm_id: str, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    vm = await rt.vms.get(vm_id, caller)
    return accepted(await rt.vms.delete([vm.id], caller))


def _power(action: str, summary: str) -> None:
    async def endpoint(vm_id: str, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
        return accepted(await rt.vms.power(vm_id, action, caller))

    endpoint.__name__ = f"vm_{action.replace('-', '_')}"
    router.add_api_route(f"/vms/{{vm_id}}/{action}", endpoint, methods=["POST"], status_code=202, responses=ACCEPTED, summary=summary)


_power("start", "Power a VM on")
_power("stop", "Hard power-off")
_power("shutdown", "Graceful shutdown (ACPI), then power-off after the timeout")
_power("reboot", "Reboot the guest")
_power("power-cycle", "Hard reset")


class VmTeamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teamId: str | None = Field(..., max_length=64, description="a team's id or name; null: no team")


@router.put("/vms/{vm_id}/team", response_model=VmOut, responses=ERRORS)
async def set_vm_team(vm_id: str, body: VmTeamIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Move a VM into a team, or out of any (owners and admins, organization-wide credentials)."""
    vm, _team = await rt.tenancy.set_vm_team(who, vm_id, body.teamId)
    return JSONResponse(render.vm(vm, clock.now()))
