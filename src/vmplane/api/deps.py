"""FastAPI dependencies every face shares: the process's Runtime, the caller (401 without
credentials), the write rule, and the caller's stream slots (SSE and WebSocket). A face's own
wire conventions stay in the face (the native API's: api/native/deps.py)."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request, WebSocket

from ..auth import Principal
from ..errors import Forbidden, RateLimited, Unauthorized
from ..runtime import Runtime
from ..streams import StreamSlot
from .errors import NATIVE, retry_after
from .middleware import error_response

# Dependencies are `async def`: FastAPI runs plain `def` ones in a thread pool, a thread hop
# each (measured: the single-VM GET went from 1,528 to 907 req/s with three of them).


async def get_runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.rt  # app.py puts it there
    return rt


def principal(request: Request) -> Principal:
    """Who is acting (401 without valid credentials)."""
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):  # None: the auth middleware accepted no credentials
        raise Unauthorized(getattr(request.state, "auth_error", None) or "credentials required: send X-API-Key or Authorization: Bearer")
    return who


async def get_caller(request: Request) -> Principal:
    return principal(request)


async def authorize(request: Request) -> None:
    """Router-wide rule: anyone in the organization reads; viewers and read-only keys do not write."""
    who = principal(request)
    if request.method not in ("GET", "HEAD", "OPTIONS") and not who.can_write:
        raise Forbidden(f"your role ({who.role}{', read-only key' if who.read_only else ''}) cannot change anything")


async def stream_slot(request: Request) -> AsyncIterator[None]:
    """For a route that answers with a stream (SSE): one of the caller's stream slots, held
    until the response has been sent or abandoned (429 when none is free). WebSockets take
    theirs with hold_ws_stream, consoles with their token (services/guest.open_console)."""
    with request.app.state.rt.streams.hold(principal(request)):
        yield


async def hold_ws_stream(websocket: WebSocket, who: Principal) -> StreamSlot | None:
    """For a WebSocket route (an event stream): one of the caller's stream slots, or None
    after refusing the handshake with 429 (in the face's error shape) when none is free.
    Release it when the WebSocket ends (`with slot:`)."""
    rt: Runtime = websocket.app.state.rt
    try:
        return rt.streams.hold(who)
    except RateLimited as exc:
        await deny_websocket(websocket, 429, exc.message, NATIVE[exc.reason][1], retry_after(exc))
        return None


async def deny_websocket(websocket: WebSocket, status: int, message: str, code: str, headers: dict[str, str] | None = None) -> None:
    """Refuse a WebSocket's handshake with an HTTP answer in the face's shape (close 1008
    where the server cannot send one); a 429 passes its `retry_after(exc)` as `headers`."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(websocket.scope, status, message, code, headers))
    else:
        await websocket.close(1008, message[:120])


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
CallerDep = Annotated[Principal, Depends(get_caller)]
StreamSlotDep = Annotated[None, Depends(stream_slot)]
