"""A Blue Lobster instance's IP addresses: listed, one more assigned, an additional one
released; configured on the VM's node before the answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ....domain import Vm
from ....errors import Conflict, InvalidRequest, NotFound
from ...deps import CallerDep, RuntimeDep, authorize
from .shared import applied, find_instance
from .wire import BlError

router = APIRouter(dependencies=[Depends(authorize)])


def _ips_out(vm: Vm, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "instance_id": vm.uuid,
        "ips": [
            {"ip_address": a["ip"], "primary": a["primary"], "network": a["network"], "mac": a["mac"], "nic": a["nic"], "created_at": a["createdAt"]}
            for a in addresses
        ],
    }


@router.get("/api/v1/instances/{instance_id}/ips")
async def list_ips(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await find_instance(rt, instance_id, who)
    return JSONResponse(_ips_out(vm, await rt.networks.addresses(vm.id, who)))


@router.post("/api/v1/instances/{instance_id}/ips")
async def assign_ip(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """One more address on the VM's first NIC, from its network; configured before the answer."""
    vm = await find_instance(rt, instance_id, who)
    try:
        change = await rt.networks.add_ip(vm.id, None, who)
    except (Conflict, InvalidRequest) as exc:
        raise BlError(400, "invalid_request", exc.message) from None
    await applied(rt, change.job_id, vm, who, "address")
    out = _ips_out(vm, await rt.networks.addresses(vm.id, who))
    return JSONResponse({"status": "success", "message": "IP address assigned", "ip_address": change.address, **out})


@router.delete("/api/v1/instances/{instance_id}/ips/{ip_address}")
async def release_ip(instance_id: str, ip_address: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Release an additional address (not a NIC's primary one, nor the last one)."""
    vm = await find_instance(rt, instance_id, who)
    try:
        change = await rt.networks.release_ip(vm.id, ip_address, who)
    except (Conflict, InvalidRequest) as exc:
        raise BlError(400, "invalid_request", exc.message) from None
    except NotFound:
        raise BlError(404, "ip_not_found", f"IP address {ip_address} is not assigned to instance {instance_id}") from None
    await applied(rt, change.job_id, vm, who, "address change")
    return JSONResponse({"status": "success", "message": f"IP address {change.address} released", "ip_address": change.address, "instance_id": vm.uuid})
