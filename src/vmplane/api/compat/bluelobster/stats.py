"""A Blue Lobster instance's resource use, measured by its node now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ....errors import Conflict, DriverError, InvalidState, NotFound
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import find_instance

router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/api/v1/instances/{instance_id}/stats")
async def instance_stats(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Measured by the VM's node now; zeros while the instance does not run, or (with a
    `message` saying why) when its node cannot measure it. Disk and network
    figures are totals since the VM started (the contract's note), under its field names."""
    vm = await find_instance(rt, instance_id, who)
    total = vm.ram_mb * 1024 * 1024
    out: dict[str, Any] = {
        "instance_id": vm.uuid,
        "status": wire.POWER_STATUS.get(vm.status, "unknown"),
        "cpu": {"usage_percent": 0.0, "cores": vm.cpu},
        "memory": {"used_bytes": 0, "total_bytes": total, "usage_percent": 0.0},
        "disk": {"read_bytes_sec": 0, "write_bytes_sec": 0},
        "network": {"in_bytes_sec": 0, "out_bytes_sec": 0},
        "uptime_seconds": 0,
    }
    if vm.status != "running":
        return JSONResponse(out)
    try:
        _vm, s = await rt.guest.stats(vm.id, who)
    except InvalidState:  # it stopped meanwhile
        return JSONResponse({**out, "status": "stopped"})
    except (Conflict, DriverError, NotFound) as exc:
        # the node's driver measures nothing, or the node cannot be asked now (unreachable,
        # served by another replica): the contract lists no code for it, only zeros
        return JSONResponse({**out, "message": f"not measured: {exc.message}"})
    total = s.memory_total_mb * 1024 * 1024 or total
    used = s.memory_mb * 1024 * 1024
    out.update(
        {
            # the core's figure is % of one core; the contract's is of the instance's cores
            "cpu": {"usage_percent": round(s.cpu_percent / max(vm.cpu, 1), 1), "cores": vm.cpu},
            "memory": {"used_bytes": used, "total_bytes": total, "usage_percent": round(100 * used / total, 1) if total else 0.0},
            "disk": {"read_bytes_sec": s.disk_read_bytes, "write_bytes_sec": s.disk_write_bytes},
            "network": {"in_bytes_sec": s.net_rx_bytes, "out_bytes_sec": s.net_tx_bytes},
            "uptime_seconds": round(s.uptime_seconds),
        }
    )
    return JSONResponse(out)
