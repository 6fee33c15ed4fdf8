"""What one can launch on the Blue Lobster face: ready templates under the contract's
upper-case names, and the instance types with the regions that have room for each."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ....services.offerings import InstanceType
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import every_template, offerings_of

router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/api/v1/instances/templates")
async def list_templates(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Ready templates under their upper-case names (`tiny-linux` is `TINY-LINUX`)."""
    out = []
    for t in await every_template(rt, who):
        name = wire.template_name(t)
        if name is not None and t.status == "ready":
            out.append({"name": name, "display_name": t.name, "os_type": t.os, "id": t.id})
    return JSONResponse({"templates": out})


def _type_out(t: InstanceType) -> dict[str, Any]:
    specs: dict[str, Any] = {"vcpus": t.vcpus, "memory_gib": t.memory_gib, "storage_gib": t.storage_gib, "gpus": t.gpus}
    if t.gpu_model:
        specs["gpu_model"] = t.gpu_model
    return {
        "name": t.name,
        "description": t.description,
        "gpu_description": t.gpu_description,
        "price_cents_per_hour": t.price_cents_per_hour,
        "specs": specs,
    }


@router.get("/api/v1/instances/available")
async def available(request: Request) -> JSONResponse:
    """Every instance type, with the regions whose nodes have room for one right now."""
    out = []
    for t, regions in await offerings_of(request).available():
        out.append(
            {
                "id": t.name,
                "instance_type": _type_out(t),
                "regions_with_capacity_available": [
                    {"name": r.name, "description": r.description, "location": {"city": r.city, "state": r.state, "country": r.country}}
                    for r in regions
                ],
            }
        )
    return JSONResponse({"data": out})
