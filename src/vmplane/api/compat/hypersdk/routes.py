"""The HyperSDK endpoints (hypersdk-api.md next to this file), each a call into the core.

Jobs are vmplane imports (rt.imports): a job's id is the import's id, its definition is what
the client sent (credentials left out), its status and progress are the import's. Schedules
and webhooks are the core's, marked as the face's own (a schedule's `origin`, a webhook's
`hypersdk` format): the face lists and addresses only those. VM discovery and power are
rt.vsphere, with the connection given per request or as a stored profile.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import Field

from .... import __version__, clock
from ....auth import Principal
from ....errors import InvalidRequest, NotFound, VmplaneError
from ....events import formats
from ....events.bus import GoingAway, SlowConsumer
from ...deps import CallerDep, RuntimeDep, authorize, hold_ws_stream, principal
from . import jobs as hjobs
from . import wire
from .wire import JobDefIn

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])
"""endpoints that need credentials (X-API-Key, as HyperSDK's client sends its api_key, or Bearer)"""
open_router = APIRouter()
"""health, and the WebSocket (it checks credentials itself)"""

ORIGIN = "hypersdk"
STATUS_INTERVAL = 2.0
"""seconds between `status` messages on /ws, as the daemon sends them"""


def ok(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse({**data, "timestamp": wire.now()} if "timestamp" not in data else data, status_code=status)


# -- health and status ---------------------------------------------------------------------


@open_router.get("/openapi.yaml")
async def openapi() -> FileResponse:
    """An OpenAPI document of this face, written by vmplane from the markdown contract."""
    return FileResponse(Path(__file__).with_name("openapi.yaml"), media_type="application/yaml")


@open_router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok", "timestamp": wire.now()})


async def status_data(request_app: Any, rt: Runtime, who: Principal) -> dict[str, Any]:
    counts = await hjobs.counts(rt, who)
    uptime = clock.now() - request_app.state.started_at
    return {
        "total_jobs": sum(counts.values()), "pending_jobs": counts["pending"], "running_jobs": counts["running"],
        "completed_jobs": counts["completed"], "failed_jobs": counts["failed"], "cancelled_jobs": counts["cancelled"],
        "worker_count": rt.settings.job_concurrency, "active_workers": rt.engine.running_count,
        "version": __version__, "uptime": wire.go_duration(uptime), "uptime_seconds": round(uptime, 1), "timestamp": wire.now(),
    }  # fmt: skip


@router.get("/status")
async def status(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await status_data(request.app, rt, who))


# -- jobs ----------------------------------------------------------------------------------


@router.post("/jobs/submit")
async def submit(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """One definition, an array, or `{jobs: [...]}`; JSON or YAML. Each is submitted on its
    own: the answer says which were accepted and why the others were not."""
    raw = wire.job_defs(await wire.body(request))
    if not raw:
        raise InvalidRequest("no job definitions given", field="jobs")
    if len(raw) > 100:
        raise InvalidRequest("at most 100 job definitions per request", field="jobs")
    job_ids: list[str] = []
    errors: list[str] = []
    warnings: list[str] = []
    for i, item in enumerate(raw):
        where = "body" if len(raw) == 1 else f"jobs[{i}]"
        try:
            d = wire.model(JobDefIn, item, where)
            job_id, warned = await hjobs.submit(rt, who, d, where)
            job_ids.append(job_id)
            warnings += warned if len(raw) == 1 else [f"{where}: {w}" for w in warned]
        except VmplaneError as exc:
            errors.append(exc.message if len(raw) == 1 else f"{where}: {exc.message}")
    answer: dict[str, Any] = {
        "job_ids": job_ids, "accepted": len(job_ids), "rejected": len(errors), "errors": errors, "timestamp": wire.now(),
    }  # fmt: skip
    if warnings:
        answer["warnings"] = warnings
    if not job_ids:
        return JSONResponse({"error": errors[0] if len(errors) == 1 else "no job was accepted: " + "; ".join(errors[:5]), **answer}, status_code=400)
    answer["job_id"] = job_ids[0]
    answer["message"] = "job submitted successfully" if len(job_ids) == 1 else f"{len(job_ids)} jobs submitted"
    return JSONResponse(answer, status_code=201)


def _statuses(value: Any) -> set[str] | None:
    if value is None or value == "" or value == []:
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    out = set()
    for s in items:
        s = str(s).strip().lower()
        if s not in wire.STATUSES:
            raise InvalidRequest(f"status {s!r} is not one of {', '.join(wire.STATUSES)}", field="status")
        out.add(s)
    return out


def _ids(value: Any, field: str = "job_ids") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value) or len(value) > 1000:
        raise InvalidRequest(f"{field} must be a list of job ids (at most 1000)", field=field)
    return value


def _limit(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        raise InvalidRequest("limit must be a whole number", field="limit")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest("limit must be a whole number", field="limit") from None
    if isinstance(value, bool) or n < 0 or n > 100_000:
        raise InvalidRequest("limit must be between 0 and 100000 (0: no limit)", field="limit")
    return n or None


async def _query(rt: Runtime, who: Principal, job_ids: list[str] | None, statuses: set[str] | None, limit: int | None) -> JSONResponse:
    jobs = await hjobs.query(rt, who, job_ids=job_ids, statuses=statuses, limit=limit)
    return JSONResponse({"jobs": jobs, "total": len(jobs), "timestamp": wire.now()})


@router.get("/jobs/query")
async def query_get(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`?all=true` (every job), `?status=running`, `?job_ids=a,b`, `?limit=N`."""
    q = request.query_params
    if q.get("all", "true").lower() not in ("true", "false", "1", "0", ""):
        raise InvalidRequest("all must be true or false", field="all")
    ids = [i for i in q.get("job_ids", q.get("id", "")).split(",") if i] or None
    return await _query(rt, who, ids, _statuses(q.get("status")), _limit(q.get("limit")))


@router.post("/jobs/query")
async def query_post(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`{job_ids, status (one or a list), all, limit}`; no filter is every job."""
    data = await wire.body(request)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object such as {\"all\": true}", field="body")
    if "all" in data and not isinstance(data["all"], bool):
        raise InvalidRequest("all must be true or false", field="all")
    return await _query(rt, who, _ids(data.get("job_ids")), _statuses(data.get("status")), _limit(data.get("limit")))


@router.post("/jobs/cancel")
async def cancel(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`{job_ids}` (and/or `status`: every job of that status). Answers the client's
    `{cancelled, failed, errors}` and the document's `{message, count}`."""
    data = await wire.body(request)
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object such as {\"job_ids\": [...]}", field="body")
    ids = _ids(data.get("job_ids"))
    statuses = _statuses(data.get("status"))
    if ids is None and statuses is None:
        raise InvalidRequest("give job_ids or a status", field="job_ids")
    if ids is None:
        ids = [j["definition"]["id"] for j in await hjobs.query(rt, who, job_ids=None, statuses=statuses, limit=None)]
    cancelled, failed, errors = [], [], {}
    for job_id in ids:
        try:
            await hjobs.cancel(rt, who, job_id)
            cancelled.append(job_id)
        except VmplaneError as exc:
            failed.append(job_id)
            errors[job_id] = exc.message
    message = "jobs cancelled successfully" if cancelled and not failed else (f"{len(cancelled)} cancelled, {len(failed)} failed" if ids else "no job to cancel")
    return JSONResponse({"cancelled": cancelled, "failed": failed, "errors": errors, "message": message, "count": len(cancelled), "timestamp": wire.now()})


@router.get("/jobs/progress/{job_id}")
async def job_progress(job_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The job's progress alone (what HyperSDK's client fetches for get_job_progress)."""
    return JSONResponse((await hjobs.get(rt, who, job_id))["progress"])


@router.get("/jobs/logs/{job_id}")
async def job_logs(job_id: str, rt: RuntimeDep, who: CallerDep) -> PlainTextResponse:
    """The import's log lines, as text."""
    return PlainTextResponse(await hjobs.logs(rt, who, job_id))


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await hjobs.get(rt, who, job_id))


# -- schedules -----------------------------------------------------------------------------


async def _schedules(rt: Runtime, who: Principal) -> list[Any]:
    return await rt.schedules.made_by(ORIGIN, who)


async def _schedule(rt: Runtime, who: Principal, schedule_id: str) -> Any:
    return await rt.schedules.by_origin(ORIGIN, schedule_id, who)


class _ScheduleIn(wire.Open):
    id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=2048)
    schedule: str | None = Field(None, max_length=128)
    enabled: bool | None = None
    job_template: dict[str, Any] | None = None
    tags: list[str] | None = None


@router.get("/schedules")
async def list_schedules(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [wire.render_schedule(s) for s in await _schedules(rt, who)]
    return JSONResponse({"schedules": items, "total": len(items), "timestamp": wire.now()})


@router.get("/schedules/stats")
async def schedule_stats(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    rows = await _schedules(rt, who)
    enabled = sum(1 for s in rows if s.enabled)
    return JSONResponse({
        "total_schedules": len(rows), "enabled_schedules": enabled, "disabled_schedules": len(rows) - enabled,
        "total_runs": sum(s.run_count for s in rows), "successful_runs": sum(s.success_count for s in rows),
        "failed_runs": sum(s.failure_count for s in rows), "timestamp": wire.now(),
    })  # fmt: skip


@router.post("/schedules")
async def create_schedule(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    s = wire.model(_ScheduleIn, await wire.body(request), "body")
    if not s.id or not wire.SCHEDULE_ID_RE.match(s.id):
        raise InvalidRequest("id is required: 1-64 letters, digits, '.', '_' or '-'", field="id")
    if not s.schedule:
        raise InvalidRequest("schedule is required (cron: minute hour day month weekday)", field="schedule")
    if s.job_template is None:
        raise InvalidRequest("job_template is required (a job definition)", field="job_template")
    await rt.schedules.check_origin_free(ORIGIN, s.id, who)
    native, echo = await hjobs.template(rt, who, wire.model(JobDefIn, s.job_template, "job_template"), "job_template")
    origin = {"face": ORIGIN, "id": s.id, "description": s.description or "", "tags": s.tags or [], "job_template": echo}
    row = await rt.schedules.create(
        name=s.name or s.id, schedule=s.schedule, timezone="UTC", enabled=True if s.enabled is None else s.enabled,
        job_template=native, misfire_policy="run_once", who=who, origin=origin,
    )  # fmt: skip
    out = wire.render_schedule(row)
    return JSONResponse({**out, "message": "schedule created successfully", "schedule": out, "timestamp": wire.now()}, status_code=201)


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(wire.render_schedule(await _schedule(rt, who, schedule_id)))


@router.put("/schedules/{schedule_id}")
async def update_schedule(schedule_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    s = wire.model(_ScheduleIn, await wire.body(request), "body")
    if s.id is not None and s.id != schedule_id:
        raise InvalidRequest("id cannot be changed", field="id")
    origin = dict(row.origin)
    changes: dict[str, Any] = {"name": s.name, "schedule": s.schedule, "enabled": s.enabled}
    if s.job_template is not None:
        changes["job_template"], origin["job_template"] = await hjobs.template(rt, who, wire.model(JobDefIn, s.job_template, "job_template"), "job_template")
    if s.description is not None:
        origin["description"] = s.description
    if s.tags is not None:
        origin["tags"] = s.tags
    if origin != row.origin:
        changes["origin"] = origin
    if all(v is None for v in changes.values()):
        raise InvalidRequest("give at least one field to change", field="body")
    row = await rt.schedules.update(row.id, who, **changes)
    out = wire.render_schedule(row)
    return JSONResponse({**out, "message": "schedule updated successfully", "schedule": out, "timestamp": wire.now()})


@router.delete("/schedules/{schedule_id}")
async def delete_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.delete(row.id, who)
    return ok({"message": "schedule deleted successfully"})


@router.post("/schedules/{schedule_id}/enable")
async def enable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.update(row.id, who, enabled=True)
    return ok({"message": "schedule enabled successfully"})


@router.post("/schedules/{schedule_id}/disable")
async def disable_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    await rt.schedules.update(row.id, who, enabled=False)
    return ok({"message": "schedule disabled successfully"})


@router.post("/schedules/{schedule_id}/trigger")
async def trigger_schedule(schedule_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await _schedule(rt, who, schedule_id)
    fired = await rt.schedules.trigger(row.id, who)
    if fired.get("error"):
        raise InvalidRequest(f"the schedule's job was not submitted: {fired['error']}", field="job_template")
    return ok({"message": "schedule triggered successfully", "job_id": await hjobs.hypersdk_id(rt, who, fired.get("jobId"))})


# -- webhooks ------------------------------------------------------------------------------


async def _webhooks(rt: Runtime, who: Principal) -> list[Any]:
    return [h for h in await rt.webhooks.list(who) if h.format == formats.HYPERSDK]


class _WebhookIn(wire.Open):
    url: str | None = Field(None, max_length=2048)
    events: Any = None
    enabled: bool | None = None
    timeout: float | None = Field(None, gt=0, le=300)
    retry_count: int | None = Field(None, ge=0, le=20)
    headers: dict[str, str] | None = None
    event: str | None = Field(None, max_length=64)


@router.get("/webhooks")
async def list_webhooks(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [wire.render_webhook(h) for h in await _webhooks(rt, who)]
    return JSONResponse({"webhooks": items, "total": len(items), "timestamp": wire.now()})


@router.post("/webhooks")
async def add_webhook(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    w = wire.model(_WebhookIn, await wire.body(request), "body")
    if not w.url:
        raise InvalidRequest("url is required", field="url")
    row = await rt.webhooks.create(
        url=w.url, events=wire.webhook_events(w.events), enabled=True if w.enabled is None else w.enabled,
        timeout_sec=w.timeout or 30.0, retry_count=3 if w.retry_count is None else w.retry_count, headers=w.headers or {},
        who=who, format=formats.HYPERSDK,
    )  # fmt: skip
    return ok({"message": "webhook added successfully", "webhook": wire.render_webhook(row)}, status=201)


@router.post("/webhooks/test")
async def test_webhook(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """POSTs one `{event, timestamp, data}` to `url` now. A receiver that fails answers 400
    naming what went wrong (the face itself did not fail)."""
    w = wire.model(_WebhookIn, await wire.body(request), "body")
    if not w.url:
        raise InvalidRequest("url is required", field="url")
    result = await rt.webhooks.test_url(
        url=w.url, fmt=formats.HYPERSDK, event=w.event or "test", headers=w.headers or {}, timeout_sec=w.timeout or 10.0, who=who
    )  # fmt: skip
    if not result["ok"]:
        raise InvalidRequest(f"test webhook failed: {result['error']}", field="url")
    return ok({"message": "test webhook sent", "status_code": result["statusCode"], "duration_ms": result["durationMs"]})


@router.delete("/webhooks/{index}")
async def delete_webhook(index: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """By 0-based index in the list (webhooks have no id in HyperSDK)."""
    if not index.isdigit() or len(index) > 6:
        raise InvalidRequest("index must be a whole number (0-based position in GET /webhooks)", field="index")
    hooks = await _webhooks(rt, who)
    i = int(index)
    if i >= len(hooks):
        raise NotFound(f"webhook index {i} out of range (there are {len(hooks)})")
    await rt.webhooks.delete(hooks[i].id, who)
    return ok({"message": "webhook deleted successfully"})


# -- VM discovery and control (vSphere) ------------------------------------------------------


class _VmIn(wire.VCenterIn):
    vm_path: str | None = Field(None, max_length=1024)
    vcenter: wire.VCenterIn | None = None
    profile: str | None = Field(None, max_length=63)
    timeout: float | None = Field(None, ge=0, le=3600)


async def _vm_request(request: Request) -> Any:
    data: dict[str, Any] = dict(request.query_params)
    for key in ("insecure",):
        if key in data:
            data[key] = data[key].lower() in ("1", "true", "yes", "on")
    if request.method == "POST":
        b = await wire.body(request)
        if b is not None:
            if not isinstance(b, dict):
                raise InvalidRequest("the body must be a JSON object", field="body")
            data.update(b)
    return wire.model(_VmIn, data, "body")


async def _connection(rt: Runtime, who: Principal, v: Any) -> Any:
    c = v.vcenter or v
    url = c.vcenter_url or c.server or c.url or v.vcenter_url or v.server or v.url
    return await rt.vsphere.connection(
        who, profile=v.profile, url=url, username=c.username or v.username, password=c.password or v.password,
        insecure=c.insecure if c.insecure is not None else v.insecure,
    )  # fmt: skip


def _vm_out(vm: Any) -> dict[str, Any]:
    return {
        "name": vm.name, "path": vm.path, "power_state": vm.power_state, "guest_os": vm.guest_os, "memory_mb": vm.memory_mb,
        "num_cpu": vm.num_cpu, "storage": vm.storage_bytes, "ip_address": vm.ip_address, "uuid": vm.uuid,
    }  # fmt: skip


def _need_path(v: _VmIn) -> str:
    if not v.vm_path:
        raise InvalidRequest("vm_path is required", field="vm_path")
    return v.vm_path


@router.api_route("/vms/list", methods=["GET", "POST"])
async def list_vms(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """GET with query parameters (the daemon) or POST with a body (its Python client)."""
    v = await _vm_request(request)
    c = await _connection(rt, who, v)
    dc = (v.vcenter.datacenter if v.vcenter else None) or v.datacenter
    vms = [_vm_out(vm) for vm in await rt.vsphere.list_vms(c, dc)]
    return JSONResponse({"vms": vms, "total": len(vms), "timestamp": wire.now()})


@router.api_route("/vms/info", methods=["GET", "POST"])
async def vm_info(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    info = await rt.vsphere.vm_info(await _connection(rt, who, v), _need_path(v))
    out = {
        **_vm_out(info.vm), "datacenter": info.datacenter, "firmware": info.firmware, "guest_id": info.guest_id,
        "hardware": {"num_cpu": info.vm.num_cpu, "memory_mb": info.vm.memory_mb, "num_virtual_disks": len(info.disks)},
        "disks": [{"label": d.label, "capacity_kb": d.capacity_bytes // 1024, "capacity_bytes": d.capacity_bytes, "file_path": d.file_path} for d in info.disks],
        "nics": [{"label": n.label, "network": n.network, "mac_address": n.mac} for n in info.nics],
        "cdroms": list(info.cdroms),
    }  # fmt: skip
    return JSONResponse({**out, "success": True, "message": "VM info retrieved", "vm": dict(out), "timestamp": wire.now()})


@router.post("/vms/shutdown")
async def vm_shutdown(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    off = await rt.vsphere.shutdown(await _connection(rt, who, v), _need_path(v), v.timeout)
    message = "VM shutdown initiated" if v.timeout is None else ("VM shut down" if off else f"VM still on after {v.timeout:g} s")
    return ok({"success": True, "message": message, "powered_off": off if v.timeout is not None else None})


@router.post("/vms/poweroff")
async def vm_poweroff(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    await rt.vsphere.power_off(await _connection(rt, who, v), _need_path(v))
    return ok({"success": True, "message": "VM powered off"})


@router.post("/vms/remove-cdrom")
async def vm_remove_cdrom(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    v = await _vm_request(request)
    n = await rt.vsphere.remove_cdroms(await _connection(rt, who, v), _need_path(v))
    return ok({"success": True, "message": "CD-ROM devices removed", "removed": n})


# -- WebSocket -----------------------------------------------------------------------------


async def _send(ws: WebSocket, type_: str, data: dict[str, Any]) -> None:
    await ws.send_text(json.dumps({"type": type_, "timestamp": wire.now(), "data": data}, separators=(",", ":")))


@open_router.websocket("/ws")
async def ws(websocket: WebSocket) -> None:
    """`status` and `jobs` on connect, `status` every 2 s, `job_update` and `schedule_event` as
    they happen; a text `ping` (or `{"type":"ping"}`) is answered `{"type":"pong"}`.
    Credentials as on HTTP (X-API-Key, Bearer), or as the subprotocols `vmplane,
    apikey.<key>` / `vmplane, ticket.<ws ticket>`, or `?apiKey=` (api/identity.py)."""
    rt = websocket.app.state.rt
    try:
        who = principal(websocket)  # type: ignore[arg-type]
    except VmplaneError as exc:
        await websocket.send_denial_response(JSONResponse({"error": exc.message, "timestamp": wire.now()}, status_code=wire.STATUS[exc.reason]))
        return
    slot = await hold_ws_stream(websocket, who)  # one of the credential's open streams (429 beyond)
    if slot is None:
        return
    with slot:
        await _serve_ws(websocket, rt, who)


async def _serve_ws(websocket: WebSocket, rt: Runtime, who: Principal) -> None:
    await websocket.accept()
    app = websocket.app
    send_lock = asyncio.Lock()

    async def send(type_: str, data: dict[str, Any]) -> None:
        async with send_lock:
            await _send(websocket, type_, data)

    async def statuses() -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            await send("status", await status_data(app, rt, who))

    async def events(sub: Any) -> None:
        last: dict[str, float] = {}
        while True:
            event = await sub.get()
            if event is None:
                continue
            if event.type.startswith("job."):
                if (event.data or {}).get("type") != hjobs.job_type():
                    continue
                job = await hjobs.by_native_job(rt, who, event.resource)
                if job is not None:
                    await send("job_update", job)
                    last[event.resource] = time.monotonic()
            elif event.type.startswith("schedule."):
                try:
                    sch = await rt.schedules.get(event.resource, who)
                except NotFound:  # deleted meanwhile
                    continue
                if (sch.origin or {}).get("face") != ORIGIN:
                    continue
                await send("schedule_event", {
                    "schedule_id": sch.origin.get("id"), "event": event.type.split(".", 1)[1], "schedule": wire.render_schedule(sch),
                    "job_id": await hjobs.hypersdk_id(rt, who, (event.data or {}).get("jobId")), "error": (event.data or {}).get("error"),
                })  # fmt: skip

    async def imports_progress() -> None:
        """Byte progress of running imports between job events (jobs announce tenths only)."""
        seen: dict[str, tuple[Any, ...]] = {}
        while True:
            await asyncio.sleep(1.0)
            for job in await hjobs.query(rt, who, job_ids=None, statuses={"running"}, limit=50):
                key = (job["progress"]["stage"], job["progress"]["current_bytes"], job["status"])
                if seen.get(job["definition"]["id"]) != key:
                    seen[job["definition"]["id"]] = key
                    await send("job_update", job)

    async def receive() -> None:
        while True:
            text = await websocket.receive_text()
            if text.strip().lower() in ("ping", '{"type":"ping"}') or '"ping"' in text:
                await send("pong", {})

    async with rt.events.subscribe(types=("job.*", "schedule.*"), org_id=who.org_id, team_id=who.team_id) as sub:
        await send("status", await status_data(app, rt, who))
        await send("jobs", {"jobs": await hjobs.query(rt, who, job_ids=None, statuses=None, limit=None)})
        tasks = [asyncio.create_task(c) for c in (statuses(), events(sub), imports_progress(), receive())]
        code = 1000
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                exc = t.exception()
                if isinstance(exc, GoingAway):
                    code = 1001  # the server is shutting down
                elif exc is not None and not isinstance(exc, (WebSocketDisconnect, SlowConsumer, RuntimeError)):
                    raise exc
        except (WebSocketDisconnect, SlowConsumer):
            pass
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    try:
        await websocket.close(code)
    except (RuntimeError, WebSocketDisconnect):  # the client went first
        pass
