"""/api/v1/vms/{id}/console, console/ws, console/log, vnc, vnc/ws, screenshot, exec, stats."""

import asyncio
from collections.abc import Awaitable

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ... import clock
from ...errors import Reason, VmplaneError
from ...streams import StreamSlot
from ...wsconsole import CONTROL_SUBPROTOCOL, RFB_CHUNK, RFB_SUBPROTOCOL, ConsoleSize, bridge
from ..deps import CallerDep, RuntimeDep, deny_websocket
from ..errors import NATIVE, retry_after
from ..middleware import NO_STORE
from ..schemas import ConsoleTokenOut, ExecIn, ExecOut, VmStatsOut
from .deps import ERRORS

router = APIRouter(tags=["guest"])
ws_router = APIRouter(tags=["guest"])
"""WebSocket routes: they authenticate by themselves (a console token, or credentials)."""


@router.post("/vms/{vm_id}/console", response_model=ConsoleTokenOut, responses=ERRORS)
async def console_token(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A one-time token (60 s) for the serial console WebSocket."""
    token, expires, vm = await rt.guest.console_token(vm_id, who)
    return _token_answer(token, expires, f"/api/v1/vms/{vm.id}/console/ws")


@ws_router.websocket("/vms/{vm_id}/console/ws")
async def console_ws(websocket: WebSocket, vm_id: str, token: str = "") -> None:
    """Bridges the WebSocket to the VM's serial console, both ways (binary frames out;
    text or binary frames in). A client offering the `vmplane.console` subprotocol sends keys
    as binary frames and its terminal's size as text frames (wsconsole.CONTROL_SUBPROTOCOL)."""
    rt = websocket.app.state.rt
    opened = await _open_stream(websocket, rt.guest.open_console(vm_id, token))
    if opened is None:
        return
    reader, writer, slot = opened
    with slot:
        if CONTROL_SUBPROTOCOL in (websocket.scope.get("subprotocols") or ()):

            async def resize(size: ConsoleSize) -> None:
                await rt.guest.set_console_size(vm_id, size)

            await websocket.accept(subprotocol=CONTROL_SUBPROTOCOL)
            await bridge(websocket, reader, writer, resize)
        else:
            await websocket.accept()
            await bridge(websocket, reader, writer)


@router.post("/vms/{vm_id}/vnc", response_model=ConsoleTokenOut, responses=ERRORS)
async def vnc_token(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A one-time token (60 s) for the graphical console's WebSocket (RFB, as noVNC speaks it)."""
    token, expires, vm = await rt.guest.vnc_token(vm_id, who)
    return _token_answer(token, expires, f"/api/v1/vms/{vm.id}/vnc/ws")


def _token_answer(token: str, expires: float, websocket_path: str) -> JSONResponse:
    """A console's one-time token, when it expires, and the WebSocket path that takes it."""
    return JSONResponse(
        {"token": token, "expiresAt": clock.rfc3339(expires), "websocketPath": f"{websocket_path}?token={token}"}, headers=NO_STORE
    )


@ws_router.websocket("/vms/{vm_id}/vnc/ws")
async def vnc_ws(websocket: WebSocket, vm_id: str, token: str = "") -> None:
    """Bridges the WebSocket to the VM's VNC server: RFB both ways in binary frames. A client
    that offers the `binary` subprotocol (noVNC does) gets it back."""
    rt = websocket.app.state.rt
    opened = await _open_stream(websocket, rt.guest.open_vnc(vm_id, token))
    if opened is None:
        return
    reader, writer, slot = opened
    with slot:
        offered = websocket.scope.get("subprotocols") or ()
        await websocket.accept(subprotocol=RFB_SUBPROTOCOL if RFB_SUBPROTOCOL in offered else None)
        await bridge(websocket, reader, writer, chunk=RFB_CHUNK)


async def _open_stream(
    websocket: WebSocket, opening: Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter, StreamSlot]]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, StreamSlot] | None:
    """Spend the WebSocket's token and open its stream, or refuse the handshake (None): 429
    when the credential that asked for the token has too many streams open, 409 naming the
    state when the VM stopped since its token, close 4404/4409 otherwise."""
    try:
        return await opening
    except VmplaneError as exc:
        if exc.reason == Reason.RATE_LIMITED:  # the credential that asked for the token has too many streams open
            await deny_websocket(websocket, 429, exc.message, NATIVE[exc.reason][1], retry_after(exc))
            return None
        if exc.reason == Reason.WRONG_STATE:  # the VM stopped since its token: 409 naming its state, as the token's answer
            await deny_websocket(websocket, NATIVE[exc.reason][0], exc.message, NATIVE[exc.reason][1])
            return None
        await websocket.close(code=4404 if exc.reason == Reason.NOT_FOUND else 4409, reason=exc.message[:120])
        return None


@router.get(
    "/vms/{vm_id}/screenshot",
    response_class=Response,
    responses={**ERRORS, 200: {"content": {"image/png": {}}, "description": "the screen as a PNG"}},
)
async def screenshot(vm_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """The running VM's screen now, as a PNG (QEMU's `screendump` of its display adapter).
    Browsers may keep it 5 s (the web console's thumbnails refresh far more slowly)."""
    _vm, png = await rt.guest.screenshot(vm_id, who)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=5"})


@router.get("/vms/{vm_id}/console/log", response_class=PlainTextResponse, responses=ERRORS)
async def console_log(vm_id: str, rt: RuntimeDep, who: CallerDep, bytes_: int = Query(65536, alias="bytes", ge=1, le=4 * 1024 * 1024)) -> PlainTextResponse:
    """The recent serial output (the last `bytes` bytes)."""
    data = await rt.guest.console_log(vm_id, bytes_, who)
    return PlainTextResponse(data.decode("utf-8", "replace"))


@router.post("/vms/{vm_id}/exec", response_model=ExecOut, responses=ERRORS)
async def exec_in_guest(vm_id: str, body: ExecIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Run a command in the guest through its agent (no shell) and wait for it."""
    r = await rt.guest.exec(vm_id, body.command, body.timeoutSec, who)
    return JSONResponse(
        {
            "exitCode": r.exit_code,
            "stdout": r.stdout.decode("utf-8", "replace"),
            "stderr": r.stderr.decode("utf-8", "replace"),
            "timedOut": r.timed_out,
            "stdoutTruncated": r.stdout_truncated,
            "stderrTruncated": r.stderr_truncated,
            "durationMs": r.duration_ms,
        }
    )


@router.get("/vms/{vm_id}/stats", response_model=VmStatsOut, responses=ERRORS)
async def stats(vm_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm, s = await rt.guest.stats(vm_id, who)
    return JSONResponse(
        {
            "vmId": vm.id,
            "cpuPercent": round(s.cpu_percent, 1),
            "memoryMb": s.memory_mb,
            "memorySource": s.memory_source,
            "memoryTotalMb": s.memory_total_mb,
            "diskReadBytes": s.disk_read_bytes,
            "diskWriteBytes": s.disk_write_bytes,
            "netRxBytes": s.net_rx_bytes,
            "netTxBytes": s.net_tx_bytes,
            "uptimeSeconds": round(s.uptime_seconds, 1),
        }
    )
