"""How a webhook's deliveries are written.

`vmplane`: the native event JSON of events/wire.py, signed (services/webhook_delivery.py).
`hypersdk`: what HyperSDK's daemon posts — `{"event", "timestamp", "data"}` with
`User-Agent: HyperSDK-Webhook/1.0`. HyperSDK's jobs are VM imports, so a `hypersdk` webhook
hears only of import jobs (`data`: `job_id`, `job_name`, `vm_path`, `status`, and per event
`progress`, `error`) and of schedules (`schedule_id` is the face's id of the schedule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..event_types import Event
from ..store.tables import imports, schedules

VMPLANE = "vmplane"
HYPERSDK = "hypersdk"
FORMATS = (VMPLANE, HYPERSDK)
HYPERSDK_USER_AGENT = "HyperSDK-Webhook/1.0"
IMPORT_JOB_TYPE = "vm-import"
"""the job type of imports (services/imports.py): HyperSDK's jobs"""
HYPERSDK_JOB_STATUS = {
    "queued": "pending", "running": "running", "succeeded": "completed", "partial": "failed", "failed": "failed", "cancelled": "cancelled",
}  # fmt: skip
"""a vmplane job state as HyperSDK names it"""


@dataclass(frozen=True, slots=True)
class AdHocHook:
    """A receiver with no stored webhook (a test sent to a URL)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_sec: float = 10.0
    format: str = VMPLANE
    secret: str = "whsec_test"
    id: str = "test"


def user_agent(fmt: str) -> str | None:
    """The User-Agent a format's deliveries carry (None: vmplane's own)."""
    return HYPERSDK_USER_AGENT if fmt == HYPERSDK else None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def hypersdk_body(event: str, ts: float, data: dict[str, Any]) -> bytes:
    return _dumps({"event": event, "timestamp": clock.rfc3339(ts), "data": data})


def test_body(fmt: str, event: str, resource: str, org_id: str | None) -> bytes:
    """A test delivery's body in format `fmt`."""
    now = clock.now()
    if fmt == HYPERSDK:
        return hypersdk_body(event or "test", now, {"message": "test webhook from vmplane (HyperSDK face)"})
    return _dumps({"id": 0, "type": event or "webhook.test", "time": clock.rfc3339_ms(now), "resource": resource,
                   "data": {"message": "test delivery from vmplane"}})  # fmt: skip


async def _import_of(conn: AsyncConnection, job_id: str) -> Any:
    return (await conn.execute(select(imports).where(imports.c.job_id == job_id))).first()


async def render(conn: AsyncConnection, event: Event, fmt: str) -> bytes | None:
    """The body of a delivery of `event` in format `fmt` (not `vmplane`); None when the format
    has nothing to say about it (a HyperSDK receiver hears of import jobs and schedules only)."""
    if fmt != HYPERSDK:
        raise ValueError(f"unknown webhook format {fmt!r}")
    data = event.data or {}
    if event.type.startswith("job."):
        if data.get("type") != IMPORT_JOB_TYPE or event.resource is None:
            return None
        imp = await _import_of(conn, event.resource)
        source = dict(imp.source or {}) if imp is not None else {}
        sent = (imp.options or {}).get("origin") or {} if imp is not None else {}  # the definition as submitted
        out: dict[str, Any] = {
            "job_id": imp.id if imp is not None else event.resource,
            "job_name": sent.get("name") or (imp.name if imp is not None else None),
            "vm_path": sent.get("vm_path") or source.get("vmPath") or source.get("url") or source.get("path") or "",
            "status": HYPERSDK_JOB_STATUS.get(str(data.get("state")), str(data.get("state"))),
            "vmplane_job_id": event.resource,
        }
        if imp is not None and imp.vm_id:
            out["vm_id"] = imp.vm_id
        if event.type == "job.progress":
            out["progress"] = data.get("progress")
            if imp is not None:
                out.update(stage=imp.stage, phase=imp.stage, bytes_transferred=imp.bytes_done, total_bytes=imp.bytes_total)
        if event.type in ("job.failed", "job.cancelled") and imp is not None and imp.error:
            out["error"] = imp.error
        if event.type == "job.completed" and data.get("state") == "partial":
            return hypersdk_body("job.failed", event.ts, {**out, "error": (imp.error if imp is not None else None) or "the import did not finish"})
        return hypersdk_body(event.type, event.ts, out)
    if event.type.startswith("schedule."):
        sch = (await conn.execute(select(schedules).where(schedules.c.id == event.resource))).first() if event.resource else None
        origin = (sch.origin or {}) if sch is not None else {}
        out = {"schedule_id": origin.get("id") or event.resource, "schedule_name": data.get("name"), "vmplane_schedule_id": event.resource}
        if data.get("jobId"):
            imp = await _import_of(conn, data["jobId"])
            out["job_id"] = imp.id if imp is not None else data["jobId"]
        if data.get("error"):
            out["error"] = data["error"]
        return hypersdk_body(event.type, event.ts, out)
    return None
