"""/api/v1/vms/{id}/snapshots, /api/v1/snapshots, /api/v1/vms/{id}/revert."""

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ... import clock
from ..deps import CallerDep, RuntimeDep
from ..schemas import In, Page
from .deps import ACCEPTED, ERRORS, accepted

router = APIRouter(tags=["snapshots"])


class SnapshotIn(In):
    name: str = Field(..., min_length=1, max_length=63, description="display text: printable characters, spaces and any script; no control characters")


class RevertIn(In):
    snapshotId: str = Field(..., min_length=1, max_length=64)


class SnapshotOut(BaseModel):
    id: str
    uuid: str
    name: str
    vmId: str
    vmName: str
    nodeId: str | None
    templateId: str | None
    status: str
    sizeBytes: int
    resources: dict[str, int]
    firewall: dict[str, Any] | None = Field(None, description="the VM's firewall when the snapshot was taken; its clones take it")
    createdAt: str
    updatedAt: str


def render(s: Any) -> dict[str, Any]:
    return {
        "id": s.id, "uuid": s.uuid, "name": s.name, "vmId": s.vm_id, "vmName": s.vm_name, "nodeId": s.node_id, "templateId": s.template_id,
        "status": s.status, "sizeBytes": s.size_bytes, "resources": s.config["resources"], "firewall": s.config.get("firewall"),
        "createdAt": clock.rfc3339(s.created_at), "updatedAt": clock.rfc3339(s.updated_at),
    }  # fmt: skip


@router.post("/vms/{vm_id}/snapshots", status_code=202, responses=ACCEPTED)
async def create_snapshot(vm_id: str, body: SnapshotIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Snapshot the VM's disk and configuration; live when it runs (it keeps running)."""
    job_id, snap_id = await rt.snapshots.create(vm_id, body.name, who)
    return accepted(job_id, snapshotId=snap_id)


@router.get("/snapshots", response_model=Page[SnapshotOut], responses=ERRORS)
async def list_snapshots(rt: RuntimeDep, who: CallerDep, vmId: str | None = Query(None, max_length=64)) -> JSONResponse:
    return JSONResponse({"items": [render(s) for s in await rt.snapshots.list(who, vmId)], "nextPageToken": None})


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotOut, responses=ERRORS)
async def get_snapshot(snapshot_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.snapshots.get(snapshot_id, who)))


@router.patch("/snapshots/{snapshot_id}", response_model=SnapshotOut, responses=ERRORS)
async def rename_snapshot(snapshot_id: str, body: SnapshotIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.snapshots.rename(snapshot_id, body.name, who)))


@router.delete("/snapshots/{snapshot_id}", status_code=202, responses=ACCEPTED)
async def delete_snapshot(snapshot_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Refused (409) while VMs cloned from the snapshot exist: their disks build on it."""
    return accepted(await rt.snapshots.delete(snapshot_id, who))


@router.post("/vms/{vm_id}/revert", status_code=202, responses=ACCEPTED)
async def revert_vm(vm_id: str, body: RevertIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Restore the VM's disk to one of its snapshots (stopping and restarting it if it runs)."""
    return accepted(await rt.snapshots.revert(vm_id, body.snapshotId, who))
