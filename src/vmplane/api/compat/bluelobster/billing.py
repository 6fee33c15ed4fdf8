"""The Blue Lobster billing log: the account's instances billed in a period, from vmplane's
usage metering."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .... import clock
from ....domain import StoredSpec
from ....errors import InvalidRequest, Reason
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import nodes_by_id, offerings_of

router = APIRouter(dependencies=[Depends(authorize)])


def _ts(value: datetime) -> float:
    """A datetime from the request as epoch seconds (naive ones are UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@router.post("/api/v1/instances/log")
async def instance_log(body: wire.InstanceLogIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The account's instances billed between start_time and end_time (at most 90 days), with
    hours and cents from vmplane's usage metering, newest first."""
    start, end = _ts(body.start_time), _ts(body.end_time)
    try:
        report = await rt.billing.report(who, start, end)
    except InvalidRequest as exc:  # the contract lists 422 only: a bad range is a validation error
        if exc.reason == Reason.OVER_LIMIT:
            field, msg = "end_time", exc.message
        else:  # the period ends before it starts
            field, msg = "start_time", "end_time must be after start_time"
        return JSONResponse({"detail": [{"loc": ["body", field], "msg": msg, "type": "value_error"}]}, status_code=422)
    off = offerings_of(request)
    nodes = await nodes_by_id(off)
    vms = {v.id: v for v in await rt.vms.every(who)}
    records = []
    for item in report["items"]:
        vm = vms.get(item["vmId"])
        spans = item["spans"]
        last = spans[-1]
        first_billed, last_billed = min(sp["from"] for sp in spans), max(sp["to"] for sp in spans)
        node = nodes.get(vm.node_id) if vm is not None and vm.node_id else None
        status = "deleted" if vm is None else ("creating" if vm.status == "provisioning" else "rented")
        deleted_at = last_billed if vm is None and last_billed < report["end"] else None
        spec = vm.spec if vm is not None else StoredSpec()
        ip = vm.first_ipv4 if vm is not None else None
        records.append(
            {
                "uuid": vm.uuid if vm is not None else item["vmId"],
                "name": item["name"],
                "host_id": off.host_of(node),
                "vmid": item["vmId"],
                "status": status,
                "ip_address": ip,
                "cpu_cores": last["cpu"],
                "memory_gb": last["ramMb"] // 1024,
                "disk_gb": vm.disk_gb if vm is not None else None,
                "gpu_count": len(spec.pci_passthrough),
                "instance_type": last["instanceType"],
                "template_name": (spec.source_name or "").upper() or None,
                "price_cents_per_hour": last["centsPerHour"],
                "created_at": clock.rfc3339(vm.created_at) if vm is not None else first_billed,
                "updated_at": clock.rfc3339(vm.updated_at) if vm is not None else last_billed,
                "deleted_at": deleted_at,
                "total_billed_cents": item["costCents"],
                "total_hours_billed": item["hours"],
                "first_billed_at": first_billed,
                "last_billed_at": last_billed,
            }
        )
    records.sort(key=lambda r: r["created_at"], reverse=True)
    return JSONResponse({"total_records": len(records), "time_range": {"start": report["start"], "end": report["end"]}, "instances": records})
