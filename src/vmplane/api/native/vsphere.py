"""/api/v1/vsphere: stored vCenter connection profiles (credentials sealed, never shown) and
discovery and control of vSphere VMs through a profile or ad-hoc credentials."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ...domain.vsphere import Connection
from ..deps import CallerDep, RuntimeDep
from ..schemas import In
from .deps import ERRORS

if TYPE_CHECKING:
    from ...runtime import Runtime

router = APIRouter(tags=["vsphere"])


class ProfileIn(In):
    name: str = Field(..., min_length=1, max_length=63)
    url: str = Field(..., min_length=1, max_length=2048, description="vCenter or ESXi: host name or https://host[:port][/sdk]")
    username: str = Field(..., min_length=1, max_length=256)
    password: str = Field(..., max_length=1024)
    insecure: bool = Field(False, description="skip TLS certificate verification")


class ProfileOut(BaseModel):
    id: str
    name: str
    url: str
    insecure: bool
    createdBy: str
    createdAt: str
    updatedAt: str


class ConnectionIn(In):
    """Which vCenter: a stored profile, or ad-hoc credentials (used once, never stored)."""

    profile: str | None = Field(None, max_length=63)
    vcenterUrl: str | None = Field(None, max_length=2048)
    username: str | None = Field(None, max_length=256)
    password: str | None = Field(None, max_length=1024)
    insecure: bool | None = None


class VmListIn(ConnectionIn):
    datacenter: str | None = Field(None, max_length=256)


class VmActionIn(ConnectionIn):
    vmPath: str = Field(..., min_length=1, max_length=4096)
    timeoutSec: float | None = Field(None, gt=0, le=3600, description="shutdown: wait this long for power-off")


class ActionOut(BaseModel):
    success: bool
    message: str


async def _connection(rt: "Runtime", who: Any, body: ConnectionIn) -> Connection:
    conn: Connection = await rt.vsphere.connection(
        who, profile=body.profile, url=body.vcenterUrl, username=body.username, password=body.password, insecure=body.insecure
    )
    return conn


@router.post("/vsphere/profiles", status_code=201, response_model=ProfileOut, responses=ERRORS)
async def create_profile(body: ProfileIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    p = await rt.vsphere.create_profile(who, name=body.name, url=body.url, username=body.username, password=body.password, insecure=body.insecure)
    return JSONResponse(p.to_wire(), status_code=201)


@router.get("/vsphere/profiles")
async def list_profiles(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [p.to_wire() for p in await rt.vsphere.list_profiles(who)], "nextPageToken": None})


@router.get("/vsphere/profiles/{name}", response_model=ProfileOut, responses=ERRORS)
async def get_profile(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse((await rt.vsphere.get_profile(who, name)).to_wire())


@router.delete("/vsphere/profiles/{name}", status_code=204, responses=ERRORS)
async def delete_profile(name: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.vsphere.delete_profile(who, name)
    return Response(status_code=204)


@router.post("/vsphere/vms/list", responses=ERRORS)
async def list_vms(body: VmListIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vms = await rt.vsphere.list_vms(await _connection(rt, who, body), body.datacenter)
    return JSONResponse({"items": [v.to_wire() for v in vms], "nextPageToken": None})


@router.post("/vsphere/vms/info", responses=ERRORS)
async def vm_info(body: VmActionIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse((await rt.vsphere.vm_info(await _connection(rt, who, body), body.vmPath)).to_wire())


@router.post("/vsphere/vms/shutdown", response_model=ActionOut, responses=ERRORS)
async def shutdown(body: VmActionIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    stopped = await rt.vsphere.shutdown(await _connection(rt, who, body), body.vmPath, body.timeoutSec)
    if body.timeoutSec is None:
        return JSONResponse({"success": True, "message": "VM shutdown initiated"})
    message = "VM shut down" if stopped else f"the guest did not power off within {body.timeoutSec:g} s"
    return JSONResponse({"success": stopped, "message": message})


@router.post("/vsphere/vms/poweroff", response_model=ActionOut, responses=ERRORS)
async def power_off(body: VmActionIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    await rt.vsphere.power_off(await _connection(rt, who, body), body.vmPath)
    return JSONResponse({"success": True, "message": "VM powered off"})


@router.post("/vsphere/vms/poweron", response_model=ActionOut, responses=ERRORS)
async def power_on(body: VmActionIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    await rt.vsphere.power_on(await _connection(rt, who, body), body.vmPath)
    return JSONResponse({"success": True, "message": "VM powered on"})


@router.post("/vsphere/vms/remove-cdrom", response_model=ActionOut, responses=ERRORS)
async def remove_cdrom(body: VmActionIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    n = await rt.vsphere.remove_cdroms(await _connection(rt, who, body), body.vmPath)
    return JSONResponse({"success": True, "message": f"{n} CD-ROM device(s) removed" if n else "the VM has no CD-ROM device"})
