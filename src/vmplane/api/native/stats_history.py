"""/api/v1/vms/{id}/stats/history and /api/v1/nodes/{id}/stats/history: stored stats samples."""

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ... import clock
from ..deps import CallerDep, RuntimeDep
from .deps import ERRORS
from .tenancy import parse_time

router = APIRouter(tags=["stats"])

SINCE = Query(None, max_length=64, description="RFC 3339 time; default: one hour ago (at most the retention)")


class VmSampleOut(BaseModel):
    at: str
    cpuPercent: float
    memoryMb: int
    memoryTotalMb: int
    memorySource: str | None
    diskReadBps: float | None
    diskWriteBps: float | None
    netRxBps: float | None
    netTxBps: float | None


class VmHistoryOut(BaseModel):
    vmId: str
    intervalSeconds: float
    items: list[VmSampleOut]


class NodeSampleOut(BaseModel):
    at: str
    cpuUsed: int
    cpuTotal: int
    ramMbUsed: int
    ramMbTotal: int
    hostCpuPercent: float | None
    hostMemoryPercent: float | None


class NodeHistoryOut(BaseModel):
    nodeId: str
    intervalSeconds: float
    items: list[NodeSampleOut]


def latest_out(row: Any) -> dict[str, Any]:
    """`stats` of an item of `GET /vms` (schemas.VmLatestStatsOut)."""
    return {
        "at": clock.rfc3339_ms(row.at), "cpuPercent": round(row.cpu_percent, 1), "memoryMb": row.memory_mb,
        "memoryTotalMb": row.memory_total_mb, "memorySource": row.memory_source,
    }  # fmt: skip


@router.get("/vms/{vm_id}/stats/history", response_model=VmHistoryOut, responses=ERRORS)
async def vm_history(vm_id: str, rt: RuntimeDep, who: CallerDep, since: str | None = SINCE) -> JSONResponse:
    """The VM's stored stats samples since `since` (default: the last hour), oldest first,
    one every `intervalSeconds` while it ran; disk and network as bytes/s since the sample before."""
    vm, items = await rt.stats_history.vm_history(vm_id, who, parse_time(since, "since"))
    return JSONResponse({"vmId": vm.id, "intervalSeconds": rt.stats_history.period, "items": items})


@router.get("/nodes/{node_id}/stats/history", response_model=NodeHistoryOut, responses=ERRORS)
async def node_history(node_id: str, rt: RuntimeDep, who: CallerDep, since: str | None = SINCE) -> JSONResponse:
    """The node's stored samples since `since` (default: the last hour), oldest first: claimed
    vCPUs and RAM, and for a node on the control plane's own host its measured CPU and memory use."""
    node = await rt.cluster.node(node_id)
    rows = await rt.stats_history.node_history(node.id, parse_time(since, "since"))
    items = [
        {
            "at": clock.rfc3339_ms(r.at), "cpuUsed": r.cpu_used, "cpuTotal": r.cpu_total, "ramMbUsed": r.ram_mb_used,
            "ramMbTotal": r.ram_mb_total, "hostCpuPercent": r.host_cpu_percent, "hostMemoryPercent": r.host_memory_percent,
        }  # fmt: skip
        for r in rows
    ]
    return JSONResponse({"nodeId": node.id, "intervalSeconds": rt.stats_history.period, "items": items})
