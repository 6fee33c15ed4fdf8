"""The HyperSDK VM discovery and control endpoints: rt.vsphere, with the vCenter connection
given per request (query parameters or body) or as a stored profile."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ....auth import Principal
from ....errors import InvalidRequest
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import ok

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


class _VmIn(wire.VCenterIn):
    vm_path: str | None = Field(None, max_length=1024)
    vcenter: wire.VCenterIn | None = None
    profile: str | None = Field(None, max_length=63)
    timeout: float | None = Field(None, ge=0, le=3600)


async def _vm_request(request: Request) -> Any:
    data: dict[str, Any] = dict(request.query_params)
    for key in ("insecure",):
        if key in data:
            data[key] = data[key].lower() in ("1", "true", "yes", "on")
    if request.method == "POST":
        b = await wire.body(request)
        if b is not None:
            if not isinstance(b, dict):
                raise InvalidRequest("the body must be a JSON object", field="body")
            data.update(b)
    return wire.model(_VmIn, data, "body")


async def _connection(rt: Runtime, who: Principal, v: Any) -> Any:
    c = v.vcenter or v
    url = c.vcenter_url or c.server or c.url or v.vcenter_url or v.server or v.url
    return await rt.vsphere.connection(
        who, profile=v.profile, url=url, username=c.username or v.username, password=c.password or v.password,
        insecure=c.insecure if c.insecure is not None else v.insecure,
    )  # fmt: skip


def _vm_out(vm: Any) -> dict[str, Any]:
    return {
        "name": vm.name, "path": vm.path, "power_state": vm.power_state, "guest_os": vm.guest_os, "memory_mb": vm.memory_mb,
        "num_cpu": vm.num_cpu, "storage": vm.storage_bytes, "ip_address": vm.ip_address, "uuid": vm.uuid,
    }  # fmt: skip


def _need_path(v: _VmIn) -> str:
    if not v.vm_path:
        raise InvalidRequest("vm_path is required", field="vm_path")
    return v.vm_path


@router.api_route("/vms/list", methods=["GET", "POST"])
async def list_vms(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """GET with query parameters (the daemon) or POST with a body (its Python client)."""
    v = await _vm_request(request)
    c = await _connection(rt, who, v)
    dc = (v.vcenter.datacenter if v.vcenter else None) or v.datacenter
    vms = [_vm_out(vm) for vm in await rt.vsphere.list_vms(c, dc)]
    return JSONResponse({"vms": vms, "total": len(vms), "timestamp": wire.now()})


@router.api_route("/vms/info", methods=["GET", "POST"])
async def vm_info(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    info = await rt.vsphere.vm_info(await _connection(rt, who, v), _need_path(v))
    out = {
        **_vm_out(info.vm), "datacenter": info.datacenter, "firmware": info.firmware, "guest_id": info.guest_id,
        "hardware": {"num_cpu": info.vm.num_cpu, "memory_mb": info.vm.memory_mb, "num_virtual_disks": len(info.disks)},
        "disks": [{"label": d.label, "capacity_kb": d.capacity_bytes // 1024, "capacity_bytes": d.capacity_bytes, "file_path": d.file_path} for d in info.disks],
        "nics": [{"label": n.label, "network": n.network, "mac_address": n.mac} for n in info.nics],
        "cdroms": list(info.cdroms),
    }  # fmt: skip
    return JSONResponse({**out, "success": True, "message": "VM info retrieved", "vm": dict(out), "timestamp": wire.now()})


@router.post("/vms/shutdown")
async def vm_shutdown(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    off = await rt.vsphere.shutdown(await _connection(rt, who, v), _need_path(v), v.timeout)
    message = "VM shutdown initiated" if v.timeout is None else ("VM shut down" if off else f"VM still on after {v.timeout:g} s")
    return ok({"success": True, "message": message, "powered_off": off if v.timeout is not None else None})


@router.post("/vms/poweroff")
async def vm_poweroff(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    await rt.vsphere.power_off(await _connection(rt, who, v), _need_path(v))
    return ok({"success": True, "message": "VM powered off"})


@router.post("/vms/remove-cdrom")
async def vm_remove_cdrom(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    n = await rt.vsphere.remove_cdroms(await _connection(rt, who, v), _need_path(v))
    return ok({"success": True, "message": "CD-ROM devices removed", "removed": n})
