"""/api/v1/deployments (a desired number of replicas of one VM config, kept by a reconciler)
and /api/v1/vms/{id}/config (a VM's config, versioned; PATCH is a JSON merge patch)."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse
from pydantic import Field

from ... import clock
from ...services import scopes
from ...services.vmconfig import ConfigVersion
from ..deps import CallerDep, RuntimeDep
from ..schemas import In
from .deps import ERRORS

if TYPE_CHECKING:
    from ...runtime import Runtime

router = APIRouter(tags=["deployments"])


class DeploymentIn(In):
    name: str = Field(..., min_length=1, max_length=48, description="replicas are named <name>-<i>")
    replicas: int = Field(..., ge=0, le=100)
    config: dict[str, Any] = Field(default_factory=dict, description="what each replica is made from (Volant's Config)")


class DeploymentPatch(In):
    replicas: int | None = Field(None, ge=0, le=100)
    config: dict[str, Any] | None = Field(None, description="a JSON merge patch of the config; applies to new replicas")


async def deployment_out(rt: "Runtime", row: Any) -> dict[str, Any]:
    replicas = await rt.deployments.replicas(row)
    return {
        "id": row.id,
        "name": row.name,
        "replicas": row.replicas,
        "readyReplicas": sum(1 for r in replicas if r.vm.status == "running" and not r.lost),
        "config": row.config,
        "replicaVms": [{"name": r.vm.name, "vmId": r.vm.id, "status": r.vm.status, "nodeId": r.vm.node_id, "lost": r.lost} for r in replicas],
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
        **scopes.render(row),
    }


@router.get("/deployments", responses=ERRORS)
async def list_deployments(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [await deployment_out(rt, d) for d in await rt.deployments.list(who)], "nextPageToken": None})


@router.post("/deployments", status_code=201, responses=ERRORS)
async def create_deployment(body: DeploymentIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.deployments.create(body.name, body.replicas, body.config, who)
    return JSONResponse(await deployment_out(rt, row), status_code=201, headers={"Location": f"/api/v1/deployments/{row.name}"})


@router.get("/deployments/{name}", responses=ERRORS)
async def get_deployment(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await deployment_out(rt, await rt.deployments.get(name, who)))


@router.patch("/deployments/{name}", responses=ERRORS)
async def update_deployment(name: str, body: DeploymentPatch, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.deployments.update(name, who, replicas=body.replicas, config_patch=body.config)
    return JSONResponse(await deployment_out(rt, row))


@router.delete("/deployments/{name}", status_code=202, responses=ERRORS)
async def delete_deployment(name: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """202 with the job deleting its replicas; 204 when it had none."""
    job_id = await rt.deployments.delete(name, who)
    if job_id is None:
        return Response(status_code=204)
    return JSONResponse({"jobId": job_id}, status_code=202, headers={"Location": f"/api/v1/jobs/{job_id}"})


# -- VM config -----------------------------------------------------------------------------


def version_out(v: ConfigVersion) -> dict[str, Any]:
    return {"id": v.id, "version": v.version, "updatedAt": clock.rfc3339(v.updated_at), "config": v.config}


@router.get("/vms/{vm_id}/config", tags=["vms"], responses=ERRORS)
async def get_config(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(version_out(await rt.vm_configs.current(await rt.vms.get(vm_id, who))))


@router.patch("/vms/{vm_id}/config", tags=["vms"], responses=ERRORS)
async def patch_config(vm_id: str, rt: RuntimeDep, who: CallerDep, body: dict[str, Any]) -> JSONResponse:
    """A JSON merge patch of the config: a new version. `restartRequired`: the VM takes the
    change at its next start; `notApplied`: recorded only (see docs/deployments.md)."""
    change = await rt.vm_configs.patch(await rt.vms.get(vm_id, who), body, who)
    return JSONResponse(
        {
            **version_out(change.current),
            "applied": change.applied,
            "notApplied": change.not_applied,
            "restartRequired": change.restart_required,
            "jobId": change.job_id,
        }
    )


@router.get("/vms/{vm_id}/config/history", tags=["vms"], responses=ERRORS)
async def config_history(vm_id: str, rt: RuntimeDep, who: CallerDep, limit: int = Query(50, ge=1, le=500)) -> JSONResponse:
    versions = await rt.vm_configs.history(await rt.vms.get(vm_id, who), limit)
    return JSONResponse({"items": [version_out(v) for v in versions], "nextPageToken": None})
