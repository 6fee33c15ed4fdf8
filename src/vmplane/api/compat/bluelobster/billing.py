"""The Blue Lobster billing log: the account's instances billed in a period, from vmplane's
usage metering (services/billing.py), which keeps what a row needs once an instance is gone.

Every refusal of a request here is the contract's 422 `{"error": "invalid_time_range",
"message"}` (the operation documents no other body for it): a range over 90 days, an end
before the start, and a body whose times are missing or not ISO date-times."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from ....errors import InvalidRequest, Reason
from ....services.billing import whole_cents
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import nodes_by_id, offerings_of

STATUS = {"provisioning": "creating", "deleted": "deleted"}
"""the core's VM status → the log's (creating, rented, deleted); any other is `rented`"""


def invalid_time_range(message: str) -> JSONResponse:
    return JSONResponse({"error": "invalid_time_range", "message": message}, status_code=422)


class TimeRangeRoute(APIRoute):
    """A route whose request validation answers the contract's `invalid_time_range`, naming
    the field, instead of the face's FastAPI-shaped 422."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {}
                loc = tuple(first.get("loc", ()))
                if len(loc) < 2 or loc[1] not in ("start_time", "end_time"):
                    return invalid_time_range("the body must be a JSON object with start_time and end_time")
                what = "is required" if first.get("type") == "missing" else "must be an ISO date-time (YYYY-MM-DDTHH:MM:SSZ)"
                return invalid_time_range(f"{loc[1]} {what}")

        return handle


router = APIRouter(dependencies=[Depends(authorize)], route_class=TimeRangeRoute)


def _ts(value: datetime) -> float:
    """A datetime from the request as epoch seconds (naive ones are UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@router.post("/api/v1/instances/log")
async def instance_log(body: wire.InstanceLogIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The account's instances billed between start_time and end_time (at most 90 days), with
    hours and whole cents from vmplane's usage metering, newest first."""
    start, end = _ts(body.start_time), _ts(body.end_time)
    try:
        report = await rt.billing.report(who, start, end)
    except InvalidRequest as exc:
        if exc.reason == Reason.OVER_LIMIT:
            return invalid_time_range("Maximum time range is 90 days")
        return invalid_time_range("start_time must be before end_time")
    off = offerings_of(request)
    nodes = await nodes_by_id(off)
    records = []
    for item in report["items"]:
        spans = item["spans"]
        node = nodes.get(item["nodeId"]) if item["nodeId"] else None
        records.append(
            {
                "uuid": item["uuid"] or item["vmId"],  # spans of VMs deleted before vmplane kept uuids
                "name": item["displayName"],  # the name the client gave (launch or rename), kept after deletion
                "host_id": off.host_of(node) if node is not None else item["nodeId"],
                "vmid": item["vmid"],
                "status": STATUS.get(item["status"], "rented"),
                "ip_address": item["ipAddress"],
                "cpu_cores": item["cpu"],
                "memory_gb": item["ramMb"] // 1024,
                "disk_gb": item["diskGb"],
                "gpu_count": item["gpuCount"],
                "instance_type": item["instanceType"],
                "template_name": (item["templateName"] or "").upper() or None,
                "price_cents_per_hour": whole_cents(item["centsPerHour"]),  # a rate with a fraction of a cent: the next cent
                "created_at": item["createdAt"],
                "updated_at": item["updatedAt"],
                "deleted_at": item["deletedAt"],
                "total_billed_cents": item["billedCents"],
                "total_hours_billed": item["hours"],
                "first_billed_at": min(sp["from"] for sp in spans),
                "last_billed_at": max(sp["to"] for sp in spans),
            }
        )
    records.sort(key=lambda r: r["created_at"], reverse=True)
    return JSONResponse({"total_records": len(records), "time_range": {"start": report["start"], "end": report["end"]}, "instances": records})
