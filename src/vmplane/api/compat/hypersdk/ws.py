"""The HyperSDK WebSocket, /ws: the daemon's status, job updates and schedule events as they
happen. Open to anyone on the router: it checks credentials itself."""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse

from ....auth import Principal
from ....errors import NotFound, VmplaneError
from ....events.bus import GoingAway, SlowConsumer
from ...deps import hold_ws_stream, principal
from . import jobs as hjobs
from . import wire
from .shared import ORIGIN, status_data

if TYPE_CHECKING:
    from ....runtime import Runtime

open_router = APIRouter()

STATUS_INTERVAL = 2.0
"""seconds between `status` messages on /ws, as the daemon sends them"""


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
