"""The one WebSocket <-> console stream bridge: every face's serial console endpoint uses it,
the graphical console's (RFB to a VM's VNC server) too, and so does the node agent's (it lives
under both)."""

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import WebSocket, WebSocketDisconnect

from .errors import InvalidRequest, VmplaneError

CONTROL_SUBPROTOCOL = "vmplane.console"
"""A client that offers this subprotocol speaks the typed console protocol: binary frames are
keys for the guest, text frames are control messages (JSON), one kind so far:
`{"type": "resize", "rows": R, "cols": C}`; each is answered with a text frame,
`{"type": "resized", "rows": R, "cols": C}` or `{"type": "error", "error": ..., "field": ...}`.
Without it every frame, text or binary, is keys (as before)."""
RFB_SUBPROTOCOL = "binary"
"""What noVNC offers for a WebSocket carrying RFB (the VNC protocol) in binary frames."""
RFB_CHUNK = 1 << 16
"""bytes read from a VNC server per frame: a screen update is hundreds of KiB (a serial
console's 4 KiB frames would split it into hundreds)"""
ROWS = (2, 500)
COLS = (2, 1000)
_CONTROL_MAX = 256  # bytes of one control message


@dataclass(frozen=True, slots=True)
class ConsoleSize:
    rows: int
    cols: int


def parse_control(text: str) -> ConsoleSize:
    """A control message -> the size it asks for; InvalidRequest naming the bad field otherwise."""
    if len(text) > _CONTROL_MAX:
        raise InvalidRequest(f"a control message is at most {_CONTROL_MAX} bytes")
    try:
        msg = json.loads(text)
    except ValueError:
        raise InvalidRequest("a control message is a JSON object") from None
    if not isinstance(msg, dict):
        raise InvalidRequest("a control message is a JSON object")
    if msg.get("type") != "resize":
        raise InvalidRequest('type must be "resize"', field="type")
    if set(msg) - {"type", "rows", "cols"}:
        bad = sorted(set(msg) - {"type", "rows", "cols"})[0]
        raise InvalidRequest(f"{bad} is not a field of a resize message", field=bad)
    for field, (lo, hi) in (("rows", ROWS), ("cols", COLS)):
        v = msg.get(field)
        if type(v) is not int or not lo <= v <= hi:  # not bool, not float
            raise InvalidRequest(f"{field} must be a whole number from {lo} to {hi}", field=field)
    return ConsoleSize(msg["rows"], msg["cols"])


Resizer = Callable[[ConsoleSize], Awaitable[None]]


async def bridge(
    websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, resize: Resizer | None = None, *, chunk: int = 4096
) -> None:
    """Carry bytes both ways between an accepted WebSocket and a console stream until either
    side ends, or the server shuts down (close 1001) (binary frames out; text or binary frames
    in); then close both. With `resize` (the client chose CONTROL_SUBPROTOCOL) text frames are
    control messages: a valid resize calls `resize` in the background, one at a time (sizes
    that come while one runs are coalesced: only the newest is applied next, so a flood of
    messages runs at most one command at a time; keys are never held up by it) and is
    answered; an invalid one is answered with the error and changes nothing. `chunk`: the
    most bytes read from the stream per frame sent."""
    sending = asyncio.Lock()  # guest output and control answers share the socket
    resizing: asyncio.Task[None] | None = None
    wanted: ConsoleSize | None = None  # the newest size not yet applied
    wake = asyncio.Event()

    async def send_text(text: str) -> None:
        async with sending:
            await websocket.send_text(text)

    async def apply(size: ConsoleSize) -> None:
        assert resize is not None
        try:
            await resize(size)
        except VmplaneError as exc:
            await send_text(json.dumps({"type": "error", "error": exc.message}))
            return
        await send_text(json.dumps({"type": "resized", "rows": size.rows, "cols": size.cols}))

    async def control(text: str) -> None:
        nonlocal resizing, wanted
        try:
            size = parse_control(text)
        except InvalidRequest as exc:
            await send_text(json.dumps({"type": "error", "error": exc.message, "field": exc.details.get("field")}))
            return
        wanted = size
        wake.set()
        if resizing is None:
            resizing = asyncio.create_task(resizer())

    async def resizer() -> None:
        nonlocal wanted
        while True:
            await wake.wait()
            wake.clear()
            size, wanted = wanted, None
            if size is not None:
                await apply(size)

    async def guest_to_client() -> None:
        while data := await reader.read(chunk):
            async with sending:
                await websocket.send_bytes(data)

    async def client_to_guest() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if resize is not None and msg.get("text") is not None:
                await control(msg["text"])
                continue
            data = msg.get("bytes") or (msg.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    rt = getattr(websocket.app.state, "rt", None)  # None in a node agent's app: its server stops it
    stopping = rt.stopping if rt is not None else asyncio.Event()
    if rt is not None:
        rt.consoles += 1
    tasks = [asyncio.create_task(guest_to_client()), asyncio.create_task(client_to_guest()), asyncio.create_task(stopping.wait())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if resizing is not None:
            tasks.append(resizing)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()
        with contextlib.suppress(Exception, WebSocketDisconnect):
            if stopping.is_set():
                await websocket.close(1001, "the server is shutting down")  # 1001: going away
            else:
                await websocket.close()
        if rt is not None:
            rt.consoles -= 1
