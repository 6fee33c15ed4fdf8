"""/api/v1/events: the event stream as Server-Sent Events, and the same over WebSocket;
/api/v1/ws-tickets: one-time tickets that open a WebSocket without a key in its URL."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import APIRouter, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

from ... import clock
from ...auth import Principal
from ...errors import InvalidRequest
from ...event_types import check_patterns
from ...events import wire
from ...events.bus import EventBus, GoingAway, SlowConsumer
from ..deps import CallerDep, RuntimeDep, StreamSlotDep, hold_ws_stream
from ..middleware import NO_STORE
from ..schemas import ErrorOut
from .deps import ERRORS

if TYPE_CHECKING:
    from ...runtime import Runtime

router = APIRouter(tags=["events"])
ws_router = APIRouter(tags=["events"])
"""WebSocket routes, and the tickets that open them (any role may ask for one: it is a read)"""


class WsTicketOut(BaseModel):
    ticket: str
    expiresAt: str
    subprotocols: list[str]


@ws_router.post("/ws-tickets", status_code=201, response_model=WsTicketOut, responses=ERRORS)
async def ws_ticket(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A one-time ticket that opens one WebSocket (events, HyperSDK's `/ws`) as the credential
    that asked for it, within `VMPLANE_WS_TICKET_SECONDS` (30): send it as the subprotocol
    `ticket.<ticket>` beside `vmplane` (`Sec-WebSocket-Protocol: vmplane, ticket.<ticket>`),
    or as `?wsTicket=` (query strings are kept out of the server's logs)."""
    ticket, expires = await rt.tenancy.ws_ticket(who)
    return JSONResponse(
        {"ticket": ticket, "expiresAt": clock.rfc3339(expires), "subprotocols": ["vmplane", f"ticket.{ticket}"]}, status_code=201,
        headers=NO_STORE,  # a secret: never kept for an Idempotency-Key replay
    )


def _filters(types: str | None, resource: str | None) -> tuple[tuple[str, ...] | None, str | None]:
    patterns = None
    if types:
        try:
            patterns = check_patterns([t.strip() for t in types.split(",") if t.strip()])
        except ValueError as exc:
            raise InvalidRequest(f"types: {exc}", field="types") from None
    return patterns, resource or None


def _resume_point(value: str | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise InvalidRequest(f"{field} must be an event id (a number)", field=field)
    return int(value)


def _ended(exc: SlowConsumer) -> dict[str, object]:
    """The last SSE event's data: why the stream ends; `goingAway` when the server is shutting
    down (a client reconnects with Last-Event-ID once it is back), not a slow consumer."""
    return {"reason": str(exc), "goingAway": True} if isinstance(exc, GoingAway) else {"reason": str(exc)}


@router.get(
    "/events",
    responses={200: {"content": {"text/event-stream": {}}, "description": "a stream of events"}, **ERRORS,
               429: {"model": ErrorOut, "description": "too many streams open for your credential or organization"}},
)
async def events_sse(
    request: Request,
    who: CallerDep,
    _slot: StreamSlotDep,
    types: str | None = Query(None, max_length=1000, description="comma-separated types or patterns: vm.*,job.completed"),
    resource: str | None = Query(None, max_length=64, description="only events about this resource id"),
    since: str | None = Query(None, max_length=20, description="resume after this event id (as Last-Event-ID)"),
    last_event_id: str | None = Header(None, alias="Last-Event-ID"),
) -> StreamingResponse:
    """Server-Sent Events. Resume with `Last-Event-ID` (or `since`): no gap, no duplicate. A
    stream opened without either begins with `id: N` (no data): events after N follow."""
    bus: EventBus = request.app.state.rt.events
    patterns, resource = _filters(types, resource)
    after = _resume_point(last_event_id, "Last-Event-ID")
    if after is None:
        after = _resume_point(since, "since")
    heartbeat = request.app.state.rt.settings.event_heartbeat_seconds

    async def stream() -> AsyncIterator[bytes]:
        async with bus.subscribe(patterns, resource, request.app.state.rt.settings.event_subscriber_queue, who.org_id, who.team_id) as sub:
            # a fresh stream names where it starts (`id:` with no data: no event, the resume point),
            # so a client knows the newest event id at once and can page back from it
            yield b"retry: 2000\n\n" if after is not None else b"retry: 2000\nid: %d\n\n" % sub.start_seq
            if after is not None:
                async for past in bus.history(sub, after):
                    yield wire.sse(past)
            while True:
                try:
                    event = await sub.get(timeout=heartbeat)
                    if event is None:
                        yield b": heartbeat\n\n"
                        continue
                    # what else is already queued goes out in the same write
                    yield b"".join(wire.sse(e) for e in [event, *sub.ready(500)])
                except SlowConsumer as exc:  # dropped, or the server is shutting down (GoingAway)
                    yield b"event: error\ndata: %s\n\n" % json.dumps(_ended(exc)).encode()
                    return

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@ws_router.websocket("/events/ws")
async def events_ws(websocket: WebSocket) -> None:
    """The event stream over WebSocket: `{"kind": "event", ...}` messages, plus a
    `{"kind": "status", ...}` message every `event_heartbeat_seconds`. Query: types, resource, since."""
    rt = websocket.app.state.rt
    bus: EventBus = rt.events
    who = websocket.scope.get("state", {}).get("principal")
    if who is None:
        await websocket.close(code=4401, reason=websocket.scope.get("state", {}).get("auth_error", "credentials required"))
        return
    q = websocket.query_params
    try:
        patterns, resource = _filters(q.get("types"), q.get("resource"))
        after = _resume_point(q.get("since"), "since")
    except InvalidRequest as exc:
        await websocket.close(code=4400, reason=exc.message[:120])
        return
    slot = await hold_ws_stream(websocket, who)  # one of the credential's open streams (429 beyond)
    if slot is None:
        return
    with slot:
        await _serve_events_ws(websocket, rt, bus, who, patterns, resource, after)


async def _serve_events_ws(
    websocket: WebSocket, rt: "Runtime", bus: EventBus, who: Principal, patterns: tuple[str, ...] | None, resource: str | None, after: int | None
) -> None:
    await websocket.accept()

    async def status() -> str:
        return json.dumps(
            {"kind": "status", "time": clock.rfc3339(clock.now()), "lastEventId": bus.delivered_seq,
             "subscribers": bus.subscriber_count, "runningTasks": rt.engine.running_count}  # fmt: skip
        )

    async def drain_client() -> None:  # notice disconnects; ignore what the client sends
        while True:
            if (await websocket.receive())["type"] == "websocket.disconnect":
                return

    reader = asyncio.create_task(drain_client())
    try:
        async with bus.subscribe(patterns, resource, rt.settings.event_subscriber_queue, who.org_id, who.team_id) as sub:
            await websocket.send_text(await status())
            if after is not None:
                async for past in bus.history(sub, after):
                    await websocket.send_text('{"kind":"event",' + wire.to_json(past).decode()[1:])
            while not reader.done():
                # wait for an event, or the client to leave (so its stream slot is freed now,
                # not at the next heartbeat)
                getting = asyncio.ensure_future(sub.get(timeout=rt.settings.event_heartbeat_seconds))
                await asyncio.wait({getting, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    return
                try:
                    event = getting.result()
                except SlowConsumer as exc:  # 1001: the server is going away; 4008: too slow
                    await websocket.close(code=1001 if isinstance(exc, GoingAway) else 4008, reason=str(exc)[:120])
                    return
                if event is None:
                    await websocket.send_text(await status())
                else:
                    await websocket.send_text('{"kind":"event",' + wire.to_json(event).decode()[1:])
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        reader.cancel()
