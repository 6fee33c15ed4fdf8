"""A Blue Lobster instance's serial console: a one-time ticket (needs credentials), then a
WebSocket whose ticket is its credential (on the open router)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse

from .... import clock
from ....errors import Conflict, InvalidState, VmplaneError
from ....wsconsole import bridge
from ...deps import CallerDep, RuntimeDep, authorize
from ...errors import retry_after
from ...middleware import NO_STORE
from . import wire
from .shared import find_instance
from .wire import BlError

router = APIRouter(dependencies=[Depends(authorize)])
"""the ticket"""
open_router = APIRouter()
"""the WebSocket"""


CONSOLE_TICKET_SECONDS = 30


@router.post("/api/v1/instances/{instance_id}/console")
async def console_ticket(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A one-time ticket (30 s) for the serial console: open a WebSocket to `websocket_path`
    with `?ticket=TICKET` on this host and port."""
    vm = await find_instance(rt, instance_id, who)
    try:
        ticket, expires, vm = await rt.guest.console_token(vm.id, who, CONSOLE_TICKET_SECONDS)
    except InvalidState:
        raise BlError(400, "invalid_state", "Instance must be running to access console") from None
    except Conflict as exc:  # the node's driver has no console
        raise BlError(400, "console_unavailable", exc.message) from None
    url = request.url
    return JSONResponse(
        {
            "instance_id": vm.uuid,
            "ticket": ticket,
            "host": url.hostname,
            "port": url.port or (443 if url.scheme == "https" else 80),
            "expires_at": clock.rfc3339(expires),
            "type": "serial",
            # under the face's mount point, which a `--face` listener passes through as it is
            "websocket_path": f"{request.scope.get('root_path', '')}/api/v1/instances/{vm.uuid}/console/ws",
        },
        headers=NO_STORE,  # a secret: never kept for an Idempotency-Key replay
    )


@open_router.websocket("/api/v1/instances/{instance_id}/console/ws")
async def console_ws(websocket: WebSocket, instance_id: str, ticket: str = "") -> None:
    """The serial console, both ways; the ticket is the credential (good once). A refused
    upgrade answers with an HTTP status and the contract's error shape."""
    rt = websocket.app.state.rt
    try:
        if not ticket:
            raise BlError(400, "missing_ticket", "the ticket query parameter (from POST …/console) is required")
        reader, writer, slot = await rt.guest.open_console(instance_id, ticket)
    except VmplaneError as exc:
        status, code = wire.answer(exc)
        await websocket.send_denial_response(JSONResponse({"error": code, "message": exc.message}, status_code=status, headers=retry_after(exc)))
        return
    with slot:
        await websocket.accept()
        await bridge(websocket, reader, writer)
