"""The node agent's HTTP face: its local driver, every contract method, served to the control
plane under `/agent/v1` (see `wire` for the shapes).

Every request carries the control-plane key of this node (`Authorization: Bearer vmk_…`); the
agent keeps only its SHA-256 and refuses anything else with 401. A changing call made by a run
of a task carries its order, and one older than a call already taken on the same resource is
refused with 409 `Superseded` (`calls`). Values that become paths on
this host are checked: ids by shape, and the base images a VM may be defined on must lie in
the agent's data directory (the control plane only ever names files this agent handed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..domain import VmSpec
from ..domain.network import Firewall, Nic, parse_firewall
from ..drivers import remote_wire as wire
from ..drivers.base import HypervisorDriver, PowerState
from ..errors import DriverError, InvalidRequest, InvalidState, Unauthorized, VmplaneError
from ..wsconsole import RFB_CHUNK, bridge
from .calls import CallLedger
from .images import ImageStore, WantedFile

log = logging.getLogger("vmplane.agent")

MAX_JSON = 8 << 20
KEEPALIVE_SECONDS = 5.0


@dataclass
class AgentState:
    """What the agent's HTTP face needs; `key_digest` is set once the node has joined."""

    driver: HypervisorDriver
    data_dir: Path
    images: ImageStore
    key_digest: str | None = None
    node_id: str | None = None
    extra_roots: tuple[Path, ...] = ()
    """directories besides the data dir that VM base images may come from"""
    on_request: Callable[[], None] | None = None
    tmp: Path = field(init=False)
    calls: CallLedger = field(init=False)
    """the order of the changing calls taken, per resource (stale ones are refused)"""

    def __post_init__(self) -> None:
        self.tmp = self.data_dir / "tmp"
        self.calls = CallLedger(self.data_dir / "calls.sqlite")

    def allowed(self, path: str) -> bool:
        p = Path(path).resolve()
        return any(p.is_relative_to(root.resolve()) for root in (self.data_dir, *self.extra_roots))


def create_agent_app(state: AgentState) -> FastAPI:
    app = FastAPI(title="vmplane agent", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agent = state
    d = state.driver
    P = wire.AGENT_PREFIX
    taking = state.calls.taking

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            check_key(state, request.headers)
        except Unauthorized as exc:
            return JSONResponse(wire.error_to_wire(exc), status_code=401)
        return await call_next(request)

    @app.exception_handler(VmplaneError)
    async def _known(_req: Request, exc: VmplaneError) -> JSONResponse:
        return JSONResponse(wire.error_to_wire(exc), status_code=wire.STATUS[exc.reason])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail), "code": "not_found", "type": "NotFound", "details": {}}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unknown(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("agent request failed")
        err = DriverError(f"internal error on the node agent: {exc!r}")
        return JSONResponse(wire.error_to_wire(err), status_code=500)

    def vm_id(value: str) -> str:
        return wire.check_id(value, "vmId")

    def checked_spec(body: Any) -> VmSpec:
        spec = wire.spec_from_wire(body)
        if d.capabilities.real_vms:
            paths = [spec.template_image] + list((spec.template_boot or {}).get(k) for k in ("kernel", "initrd"))
            for p in paths:
                if p and not state.allowed(p):
                    raise DriverError(f"{p} is not a base image this node handed out", vm_id=spec.id)
        return spec

    @app.get(P + "/info")
    async def info() -> JSONResponse:
        return JSONResponse(await describe(d))

    @app.get(P + "/vms")
    async def list_vms() -> JSONResponse:
        return JSONResponse({"items": [wire.runtime_to_wire(r) for r in await d.list_vms()]})

    @app.get(P + "/vms/{vid}")
    async def get_vm(vid: str) -> JSONResponse:
        r = await d.get_vm(vm_id(vid))
        return JSONResponse({"runtime": None if r is None else wire.runtime_to_wire(r)})

    @app.post(P + "/vms")
    async def create_vm(request: Request) -> Response:
        spec = checked_spec(await json_body(request))
        async with taking(request.headers, spec.id):
            await d.create_vm(spec)
        return Response(status_code=204)

    @app.post(P + "/vms/{vid}/{action}")
    async def power(vid: str, action: str, request: Request) -> Response:
        v = vm_id(vid)
        async with taking(request.headers, *(() if action == "exec" else (v,))):
            return await act(v, action, request)

    async def act(v: str, action: str, request: Request) -> Response:
        if action == "start":
            await d.start_vm(v)
        elif action == "stop":
            await d.stop_vm(v)
        elif action == "reboot":
            await d.reboot_vm(v)
        elif action == "power-cycle":
            await d.power_cycle_vm(v)
        elif action == "shutdown":
            timeout = (await json_body(request)).get("timeout")
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= 86400:
                raise InvalidRequest("timeout must be seconds from 0 to 86400", field="timeout")
            return JSONResponse({"graceful": await d.shutdown_vm(v, float(timeout))})
        elif action == "exec":
            body = await json_body(request)
            argv, timeout, max_output = body.get("argv"), body.get("timeout"), body.get("maxOutput")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise InvalidRequest("argv must be a list of strings", field="argv")
            if not isinstance(timeout, (int, float)) or not isinstance(max_output, int):
                raise InvalidRequest("timeout and maxOutput are required numbers", field="timeout")
            return JSONResponse(wire.exec_to_wire(await d.exec_vm(v, argv, float(timeout), max_output)))
        elif action == "revert":
            image = (await json_body(request)).get("image")
            if not isinstance(image, str) or (d.capabilities.real_vms and not state.allowed(image)):
                raise InvalidRequest("image must be a snapshot image of this node", field="image")
            await d.revert_vm(v, image)
        else:
            raise InvalidRequest(f"unknown action {action!r}", field="action")
        return Response(status_code=204)

    @app.delete(P + "/vms/{vid}")
    async def delete_vm(vid: str, request: Request) -> Response:
        v = vm_id(vid)
        async with taking(request.headers, v):
            await d.delete_vm(v)
        return Response(status_code=204)

    @app.put(P + "/vms/{vid}/resources")
    async def resize(vid: str, request: Request) -> Response:
        v, resources = vm_id(vid), wire.resources_from_wire(await json_body(request))
        async with taking(request.headers, v):
            await d.resize_vm(v, resources)
        return Response(status_code=204)

    @app.put(P + "/vms/{vid}/network")
    async def set_network(vid: str, request: Request) -> Response:
        body = await json_body(request)
        try:
            nics = tuple(Nic.from_wire(n) for n in body.get("nics") or ())
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequest(f"nics: {exc}", field="nics") from None
        firewall = parse_firewall(body.get("firewall")) if body.get("firewall") else Firewall()
        v = vm_id(vid)
        async with taking(request.headers, v):
            await d.set_network(v, nics, firewall)
        return Response(status_code=204)

    @app.get(P + "/vms/{vid}/guest")
    async def guest(vid: str, wait: float = 0.0) -> JSONResponse:
        if not 0 <= wait <= wire.GUEST_WAIT_MAX:
            raise InvalidRequest(f"wait must be from 0 to {wire.GUEST_WAIT_MAX:g} seconds", field="wait")
        return JSONResponse(wire.guest_to_wire(await d.guest_state(vm_id(vid), wait)))

    @app.get(P + "/vms/{vid}/stats")
    async def stats(vid: str) -> JSONResponse:
        return JSONResponse(wire.stats_to_wire(await d.stats_vm(vm_id(vid))))

    @app.get(P + "/vms/{vid}/console/log")
    async def console_log(vid: str, maxBytes: int = 65536) -> Response:
        if not 0 < maxBytes <= 64 << 20:
            raise InvalidRequest("maxBytes must be from 1 to 64 MiB", field="maxBytes")
        return Response(await d.console_log(vm_id(vid), maxBytes), media_type="application/octet-stream")

    async def stream(
        websocket: WebSocket, opening: Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]], chunk: int
    ) -> None:
        """A console stream to the control plane: a first text frame says it opened (or the
        error, then close 4000+status), then bytes both ways."""
        try:
            check_key(state, websocket.headers)
            reader, writer = await opening()
        except VmplaneError as exc:
            await websocket.accept()
            await websocket.send_json(wire.error_to_wire(exc))
            await websocket.close(code=4000 + min(999, wire.STATUS[exc.reason]))
            return
        await websocket.accept()
        await websocket.send_json({"ok": True})
        await bridge(websocket, reader, writer, chunk=chunk)

    @app.websocket(P + "/vms/{vid}/console")
    async def console(websocket: WebSocket, vid: str) -> None:
        await stream(websocket, lambda: d.open_console(vm_id(vid)), 4096)

    @app.websocket(P + "/vms/{vid}/vnc")
    async def vnc(websocket: WebSocket, vid: str) -> None:
        await stream(websocket, lambda: d.open_vnc(vm_id(vid)), RFB_CHUNK)

    @app.get(P + "/vms/{vid}/screenshot")
    async def screenshot(vid: str, maxBytes: int = 16 << 20) -> Response:
        if not 0 < maxBytes <= 64 << 20:
            raise InvalidRequest("maxBytes must be from 1 to 64 MiB", field="maxBytes")
        return Response(await d.screenshot(vm_id(vid), maxBytes), media_type="image/png")

    @app.post(P + "/vms/{vid}/snapshots/{sid}")
    async def snapshot(vid: str, sid: str, request: Request) -> JSONResponse:
        v, s = vm_id(vid), wire.check_id(sid, "snapshotId")
        async with taking(request.headers, v, s):
            return JSONResponse(wire.image_to_wire(await d.snapshot_vm(v, s)))

    @app.delete(P + "/snapshots/{sid}")
    async def delete_snapshot(sid: str, request: Request) -> Response:
        s = wire.check_id(sid, "snapshotId")
        async with taking(request.headers, s):
            await d.delete_snapshot(s)
        return Response(status_code=204)

    @app.get(P + "/vms/{vid}/disk")
    async def export_disk(vid: str) -> StreamingResponse:
        v = vm_id(vid)
        work = state.tmp / f"export-{v}-{uuid.uuid4().hex[:8]}.raw"
        state.tmp.mkdir(parents=True, exist_ok=True)
        try:
            size = await d.export_disk(v, work)
        except BaseException:
            work.unlink(missing_ok=True)
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in wire.async_sparse_chunks(work):
                    yield chunk
            finally:
                work.unlink(missing_ok=True)

        return StreamingResponse(body(), media_type="application/octet-stream", headers={"x-vmplane-disk-size": str(size)})

    @app.put(P + "/vms/{vid}/disk")
    async def import_disk(vid: str, request: Request) -> Response:
        v = vm_id(vid)
        async with taking(request.headers, v):
            return await restore(v, request)

    async def restore(v: str, request: Request) -> Response:
        runtime = await d.get_vm(v)  # refuse before gigabytes travel for nothing
        if runtime is not None and runtime.state != PowerState.STOPPED:
            raise InvalidState(f"VM {v} must be stopped to restore its disk", current=runtime.state, required="stopped")
        state.tmp.mkdir(parents=True, exist_ok=True)
        work = state.tmp / f"import-{v}-{uuid.uuid4().hex[:8]}.raw"
        writer = wire.SparseWriter(work)
        try:
            async for chunk in request.stream():
                await asyncio.to_thread(writer.feed, chunk)
            writer.close()
            await d.import_disk(v, work)
        except BaseException:
            writer.abort()
            raise
        work.unlink(missing_ok=True)
        return Response(status_code=204)

    @app.put(P + "/images/{tid}/files/{name}")
    async def push_file(tid: str, name: str, request: Request) -> Response:
        sha = request.headers.get("x-vmplane-sha256", "")
        size = request.headers.get("content-length")
        t = wire.check_id(tid, "templateId")
        async with taking(request.headers, t):
            await state.images.receive(t, name, request.stream(), sha, int(size) if size and size.isdigit() else None)
        return Response(status_code=204)

    @app.post(P + "/images/{tid}/import")
    async def import_pushed(tid: str, request: Request) -> JSONResponse:
        async def quiet(_p: int, _m: str) -> None:
            return None

        t = wire.check_id(tid, "templateId")
        async with taking(request.headers, t):
            return JSONResponse(wire.image_to_wire(await state.images.import_pushed(t, quiet)))

    @app.post(P + "/images/{tid}/provide")
    async def provide(tid: str, request: Request) -> StreamingResponse:
        template_id = wire.check_id(tid, "templateId")
        body = await json_body(request)
        files_in = body.get("files")
        if not isinstance(files_in, dict):
            raise InvalidRequest("files must be an object", field="files")
        files = {name: WantedFile.from_wire(name, f) for name, f in files_in.items()}
        cmdline = body.get("cmdline")
        if cmdline is not None and not isinstance(cmdline, str):
            raise InvalidRequest("cmdline must be a string", field="cmdline")

        async def work(progress: Callable[[int, str], Awaitable[None]]) -> dict[str, Any]:
            async with taking(request.headers, template_id):
                missing, result = await state.images.provide(template_id, files, cmdline, progress)
            if missing:
                return {"missing": missing}
            assert result is not None
            return {"image": result[0], "boot": result[1]}

        return long_call(work)

    @app.delete(P + "/images/{tid}")
    async def delete_image(tid: str, request: Request) -> Response:
        t = wire.check_id(tid, "templateId")
        async with taking(request.headers, t):
            await state.images.delete(t)
        return Response(status_code=204)

    @app.post(P + "/migrations/{vid}/prepare")
    async def migrate_prepare(vid: str, request: Request) -> JSONResponse:
        spec = checked_spec(await json_body(request))
        if spec.id != vm_id(vid):
            raise InvalidRequest("the spec is of another VM", field="spec.id")
        async with taking(request.headers, spec.id):
            return JSONResponse(wire.target_to_wire(await d.migrate_prepare(spec)))

    @app.post(P + "/migrations/{vid}/send")
    async def migrate_send(vid: str, request: Request) -> StreamingResponse:
        v = vm_id(vid)
        target = wire.target_from_wire(await json_body(request))

        async def work(progress: Callable[[int, str], Awaitable[None]]) -> dict[str, Any]:
            async with taking(request.headers, v):
                await d.migrate_send(v, target, progress)
            return {}

        return long_call(work)

    @app.post(P + "/migrations/{vid}/finish")
    async def migrate_finish(vid: str, request: Request) -> Response:
        v = vm_id(vid)
        async with taking(request.headers, v):
            await d.migrate_finish(v)
        return Response(status_code=204)

    @app.post(P + "/migrations/{vid}/cancel")
    async def migrate_cancel(vid: str, request: Request) -> Response:
        v = vm_id(vid)
        async with taking(request.headers, v):
            await d.migrate_cancel(v)
        return Response(status_code=204)

    return app


def check_key(state: AgentState, headers: Any) -> None:
    """The request comes from this node's control plane (401 otherwise)."""
    token = wire.bearer(headers)
    if state.key_digest is None:
        raise Unauthorized("this node has not joined a control plane yet")
    if token is None or not hmac.compare_digest(wire.digest(token), state.key_digest):
        raise Unauthorized("not this node's control plane: unknown key")
    if state.on_request is not None:
        state.on_request()


async def describe(driver: HypervisorDriver) -> dict[str, Any]:
    """The node as the control plane registers it."""
    return {
        "node": wire.node_info_to_wire(await driver.node_info()),
        "capabilities": wire.capabilities_to_wire(driver.capabilities),
        "version": __version__,
    }


async def json_body(request: Request) -> Any:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_JSON:
            raise InvalidRequest("request body too large", field="body")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise InvalidRequest("the request body is not valid JSON", field="body") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", field="body")
    return body


def long_call(work: Callable[[Callable[[int, str], Awaitable[None]]], Awaitable[dict[str, Any]]]) -> StreamingResponse:
    """Answer at once and stream NDJSON: progress lines, keep-alives, then the result or the
    error. The work goes on if the control plane hangs up (it then finds the outcome by
    asking again: every long call is idempotent)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def progress(pct: int, message: str) -> None:
        queue.put_nowait(wire.ndjson({"progress": int(pct), "message": message}))

    async def run() -> None:
        try:
            result = await work(progress)
            queue.put_nowait(wire.ndjson({"result": result}))
        except VmplaneError as exc:
            queue.put_nowait(wire.ndjson(wire.error_to_wire(exc)))
        except Exception as exc:
            log.exception("agent long call failed")
            queue.put_nowait(wire.ndjson(wire.error_to_wire(DriverError(f"internal error on the node agent: {exc!r}"))))
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run())

    async def body() -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(KEEPALIVE_SECONDS):  # not wait_for, which can drop a cancel (see vmplane/aio.py)
                    item = await queue.get()
            except TimeoutError:
                yield wire.ndjson({"keepalive": True})
                continue
            if item is None:
                break
            yield item
        with contextlib.suppress(BaseException):
            await task

    return StreamingResponse(body(), media_type="application/x-ndjson")


def write_private(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file only its owner can read (mode 0600), atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
