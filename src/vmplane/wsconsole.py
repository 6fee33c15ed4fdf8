"""The one WebSocket <-> serial console bridge: every face's console endpoint uses it, and so does
the node agent's (it lives under both)."""

import asyncio
import contextlib

from fastapi import WebSocket, WebSocketDisconnect


async def bridge(websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Carry bytes both ways between an accepted WebSocket and a console stream until either
    side ends, or the server shuts down (close 1001) (binary frames out; text or binary frames
    in); then close both."""

    async def guest_to_client() -> None:
        while data := await reader.read(4096):
            await websocket.send_bytes(data)

    async def client_to_guest() -> None:
        while True:
            msg = await websocket.receive()
            if msg["type"] == "websocket.disconnect":
                return
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
