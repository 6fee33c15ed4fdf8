"""The `remote` driver: a node run by `vmplane agent` on another host, reached over HTTP.

Every contract method is one request to the agent (`drivers/remote_wire.py` has the shapes); the
agent answers with what its own driver (qemu or sim) did, and an error keeps its type across
the wire (a `DriverError` stays one, an `InvalidState` stays one). The serial console is a
WebSocket bridged to a local socket pair, so callers get the (StreamReader, StreamWriter) the
contract promises; disks travel as sparse streams; long calls (template files, migrations)
answer with NDJSON progress.

When the control plane marks the node offline (missed heartbeats), calls fail at once with a
DriverError that says so, and calls in flight are abandoned with the same error.

A changing call made by a run of a task carries its order (`base.call_order`, header
`wire.ORDER_HEADER`): the agent refuses one older than a call it already took on the same
resource (`Superseded`), so a request a slow network held back past its run's lease cannot
land after the work of the run that took over (a create after the VM's delete, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from .. import ids
from ..domain import BootSetup, Resources, VmSpec
from ..domain.network import Firewall, Nic
from ..errors import DriverError, InvalidRequest, NodeUnreachable
from ..http_clients import link_client
from ..wsconsole import RFB_CHUNK
from . import remote_wire as wire
from .base import (
    Capabilities,
    ExecResult,
    GuestState,
    HypervisorDriver,
    ImageInfo,
    MigrationTarget,
    NodeInfo,
    Progress,
    TemplateFiles,
    VmRuntime,
    VmStats,
    call_order,
)

log = logging.getLogger("vmplane.drivers.remote")

CONNECT_TIMEOUT = 3.0
CALL_TIMEOUT = 120.0
"""How long a plain call may take (a QEMU start waits up to 30 s for QMP)."""
STREAM_IDLE_TIMEOUT = 60.0
"""Long calls send a line at least every few seconds; this much silence means the agent is gone."""
PUSH_CHUNK = 1 << 20

_digests: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> tuple[str, int]:
    """(SHA-256 hex, size) of a file, computed once per version of it (blocking: call in a thread)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 << 20):
                sha.update(chunk)
        _digests[key] = sha.hexdigest()
    return _digests[key], st.st_size


class RemoteDriver(HypervisorDriver):
    """One agent's node. `key` is the control-plane key the agent verifies."""

    def __init__(
        self, node_id: str, url: str, key: str, capabilities: Capabilities, *, serves_templates: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        self.node_id = node_id
        self.serves_templates = serves_templates
        """the control plane serves template files to agents (they fetch them); without it they are pushed"""
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._offline: str | None = None
        self._gone: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.url = url
        self.key = key
        self.capabilities = wire.remote_capabilities(capabilities)
        """the agent's driver's, as a node of another host (`hypervisor` says qemu or sim)"""

    def update(self, url: str, key: str, capabilities: Capabilities) -> None:
        """The agent re-registered (new address, key or capabilities)."""
        if (url, key) != (self.url, self.key) and self._client is not None:
            old, self._client = self._client, None
            self._background(old.aclose())
        self.url, self.key = url, key
        self.capabilities = wire.remote_capabilities(capabilities)

    # -- liveness ------------------------------------------------------------------------

    @property
    def offline(self) -> str | None:
        return self._offline

    def forward_host(self) -> str:
        """The agent's host, as the control plane reaches it."""
        return urlparse(self.url).hostname or "127.0.0.1"

    def set_offline(self, reason: str | None) -> None:
        """Mark the node offline (calls fail at once, calls in flight are abandoned) or, with
        None, online again."""
        self._offline = reason
        if reason is not None and self._gone is not None:
            self._gone.set()
        elif reason is None:
            self._gone = None

    def _check_online(self) -> None:
        if self._offline is not None:
            raise NodeUnreachable(f"node {self.node_id} is offline: {self._offline}", node_id=self.node_id)

    # -- HTTP --------------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = link_client(
                base_url=self.url.rstrip("/") + wire.AGENT_PREFIX,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=httpx.Timeout(CALL_TIMEOUT, connect=CONNECT_TIMEOUT, pool=None),
                limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
                transport=self._transport,
            )
        return self._client

    async def _race(self, coro: Any, what: str) -> Any:
        """Await `coro` unless the node goes offline first."""
        if self._offline is not None:
            if asyncio.iscoroutine(coro):
                coro.close()
            self._check_online()
        if self._gone is None:
            self._gone = asyncio.Event()
        gone = self._gone
        task = asyncio.ensure_future(coro)
        waiter = asyncio.ensure_future(gone.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            waiter.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise NodeUnreachable(f"node {self.node_id} went offline during {what}: {self._offline}", node_id=self.node_id)
        try:
            return task.result()
        except httpx.TimeoutException as exc:
            raise NodeUnreachable(f"node {self.node_id}: its agent did not answer {what} in time ({type(exc).__name__})", node_id=self.node_id) from exc
        except httpx.ConnectError as exc:
            raise NodeUnreachable(f"node {self.node_id} is unreachable at {self.url}: {exc}", node_id=self.node_id) from exc
        except httpx.HTTPError as exc:
            raise NodeUnreachable(f"node {self.node_id}: the connection to its agent broke during {what}: {exc!r}", node_id=self.node_id) from exc

    @staticmethod
    def _order() -> dict[str, str]:
        """The header that tells the agent this call's order, when a run of a task makes it."""
        order = call_order.get()
        if order is None or not ids.looks_like_id(order.resource):
            return {}
        return {wire.ORDER_HEADER: wire.order_to_wire(order)}

    async def _call(self, method: str, path: str, *, body: Any = None, timeout: float | None = None, what: str = "") -> httpx.Response:
        """One request; an error answer is raised as the agent's exception."""
        req = self._http().build_request(
            method, path, json=body, headers=self._order(),
            timeout=httpx.Timeout(timeout or CALL_TIMEOUT, connect=CONNECT_TIMEOUT, pool=None),
        )  # fmt: skip
        resp: httpx.Response = await self._race(self._http().send(req), what or f"{method} {path}")
        if resp.status_code >= 400:
            raise self._error(resp.status_code, resp.content)
        return resp

    def _error(self, status: int, content: bytes) -> Exception:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        return wire.error_from_wire(status, body, self.node_id)

    async def _long_call(self, path: str, body: Any, progress: Progress | None, what: str) -> dict[str, Any]:
        """A long call: NDJSON progress lines, then the result (or the error, raised)."""

        async def run() -> dict[str, Any]:
            req = self._http().build_request(
                "POST", path, json=body, headers=self._order(), timeout=httpx.Timeout(STREAM_IDLE_TIMEOUT, connect=CONNECT_TIMEOUT, pool=None)
            )
            resp = await self._http().send(req, stream=True)
            try:
                if resp.status_code >= 400:
                    raise self._error(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    if "progress" in msg and progress is not None:
                        await progress(int(msg["progress"]), str(msg.get("message", "")))
                    elif "result" in msg:
                        return dict(msg["result"])
                    elif "error" in msg:
                        raise wire.error_from_wire(500, msg, self.node_id)
            finally:
                await resp.aclose()
            raise NodeUnreachable(f"node {self.node_id}: the agent ended {what} without an outcome", node_id=self.node_id)

        result: dict[str, Any] = await self._race(run(), what)
        return result

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the contract ------------------------------------------------------------------------

    async def open(self) -> None:
        self._http()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def node_info(self) -> NodeInfo:
        resp = await self._call("GET", "/info", what="node info")
        return wire.node_info_from_wire(resp.json()["node"])

    async def create_vm(self, spec: VmSpec) -> None:
        await self._call("POST", "/vms", body=wire.spec_to_wire(spec), what=f"create of {spec.id}")

    async def start_vm(self, vm_id: str) -> None:
        await self._call("POST", f"/vms/{vm_id}/start", what=f"start of {vm_id}")

    async def stop_vm(self, vm_id: str) -> None:
        await self._call("POST", f"/vms/{vm_id}/stop", what=f"stop of {vm_id}")

    async def shutdown_vm(self, vm_id: str, timeout: float) -> bool:
        resp = await self._call("POST", f"/vms/{vm_id}/shutdown", body={"timeout": timeout}, timeout=timeout + 60, what=f"shutdown of {vm_id}")
        return bool(resp.json()["graceful"])

    async def reboot_vm(self, vm_id: str) -> None:
        await self._call("POST", f"/vms/{vm_id}/reboot", what=f"reboot of {vm_id}")

    async def power_cycle_vm(self, vm_id: str) -> None:
        await self._call("POST", f"/vms/{vm_id}/power-cycle", what=f"power cycle of {vm_id}")

    async def delete_vm(self, vm_id: str) -> None:
        await self._call("DELETE", f"/vms/{vm_id}", what=f"delete of {vm_id}")

    async def set_boot(self, vm_id: str, boot: BootSetup) -> None:
        raise DriverError(f"{self.node_id} is a node of another host: ISOs are not copied to agents, so its VMs have no CD-ROM", vm_id=vm_id)

    async def resize_vm(self, vm_id: str, resources: Resources) -> None:
        await self._call("PUT", f"/vms/{vm_id}/resources", body=resources.to_wire(), what=f"resize of {vm_id}")

    async def get_vm(self, vm_id: str) -> VmRuntime | None:
        resp = await self._call("GET", f"/vms/{vm_id}", what=f"state of {vm_id}")
        r = resp.json()["runtime"]
        return None if r is None else wire.runtime_from_wire(r)

    async def list_vms(self) -> list[VmRuntime]:
        resp = await self._call("GET", "/vms", what="the list of VMs")
        return [wire.runtime_from_wire(r) for r in resp.json()["items"]]

    async def guest_state(self, vm_id: str, wait: float = 0.0) -> GuestState:
        """The agent's driver's answer (its own waiting, up to `GUEST_WAIT_MAX` per request)."""
        wait = min(max(0.0, wait), wire.GUEST_WAIT_MAX)
        resp = await self._call("GET", f"/vms/{vm_id}/guest?wait={wait:g}", timeout=wait + CALL_TIMEOUT, what=f"guest state of {vm_id}")
        return wire.guest_from_wire(resp.json())

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        body = {"argv": list(argv), "timeout": timeout, "maxOutput": max_output}
        resp = await self._call("POST", f"/vms/{vm_id}/exec", body=body, timeout=timeout + 60, what=f"exec in {vm_id}")
        return wire.exec_from_wire(resp.json())

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        resp = await self._call("GET", f"/vms/{vm_id}/console/log?maxBytes={int(max_bytes)}", what=f"console log of {vm_id}")
        return resp.content

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._open_stream(vm_id, "console", "the console", 4096)

    async def open_vnc(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self._open_stream(vm_id, "vnc", "the VNC server", RFB_CHUNK)

    async def screenshot(self, vm_id: str, max_bytes: int) -> bytes:
        resp = await self._call("GET", f"/vms/{vm_id}/screenshot?maxBytes={int(max_bytes)}", what=f"screenshot of {vm_id}")
        if len(resp.content) > max_bytes:
            raise DriverError(f"node {self.node_id}: the screenshot of {vm_id} is more than {max_bytes} bytes", node_id=self.node_id)
        return resp.content

    async def _open_stream(self, vm_id: str, path: str, what: str, chunk: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to one of the VM's consoles on the agent (its WebSocket `path`),
        through a local socket pair pumped both ways."""
        self._check_online()
        u = urlparse(self.url.rstrip("/") + wire.AGENT_PREFIX + f"/vms/{vm_id}/{path}")
        url = u._replace(scheme="wss" if u.scheme == "https" else "ws").geturl()
        try:
            ws = await connect(
                url, additional_headers={"Authorization": f"Bearer {self.key}"}, open_timeout=CONNECT_TIMEOUT + 10,
                max_size=None, compression=None, proxy=None, ping_interval=20,
            )  # fmt: skip
            first = json.loads(await asyncio.wait_for(ws.recv(), 30))
        except (OSError, WebSocketException, TimeoutError, ValueError) as exc:
            raise DriverError(f"node {self.node_id}: cannot reach {what} of {vm_id}: {exc}", node_id=self.node_id) from exc
        if not isinstance(first, dict) or not first.get("ok"):
            await ws.close()
            raise wire.error_from_wire(409, first, self.node_id)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=ours, limit=max(chunk, 1 << 16))
        pump_r, pump_w = await asyncio.open_connection(sock=theirs)

        async def ws_to_local() -> None:
            async for msg in ws:
                pump_w.write(msg if isinstance(msg, bytes) else msg.encode())
                await pump_w.drain()

        async def local_to_ws() -> None:
            while data := await pump_r.read(chunk):
                await ws.send(data)

        async def pump() -> None:
            tasks = [asyncio.ensure_future(ws_to_local()), asyncio.ensure_future(local_to_ws())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await ws.close()
                pump_w.close()

        self._background(pump())
        return reader, writer

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        async def run() -> int:
            req = self._http().build_request("GET", f"/vms/{vm_id}/disk", timeout=httpx.Timeout(600.0, connect=CONNECT_TIMEOUT, pool=None))
            resp = await self._http().send(req, stream=True)
            try:
                if resp.status_code >= 400:
                    raise self._error(resp.status_code, await resp.aread())
                writer = wire.SparseWriter(dest)
                try:
                    async for chunk in resp.aiter_raw(1 << 20):
                        await asyncio.to_thread(writer.feed, chunk)
                    writer.close()
                except BaseException:
                    writer.abort()
                    raise
                return writer.size
            finally:
                await resp.aclose()

        try:
            return int(await self._race(run(), f"export of the disk of {vm_id}"))
        except InvalidRequest as exc:
            raise DriverError(f"node {self.node_id}: exporting the disk of {vm_id}: {exc.message}", vm_id=vm_id) from exc

    async def import_disk(self, vm_id: str, source: Path) -> None:
        if not Path(source).is_file():
            raise DriverError(f"disk image {Path(source).name} does not exist", vm_id=vm_id)
        req = self._http().build_request(
            "PUT", f"/vms/{vm_id}/disk", content=wire.async_sparse_chunks(source), headers=self._order(),
            timeout=httpx.Timeout(600.0, connect=CONNECT_TIMEOUT, pool=None),
        )  # fmt: skip
        resp = await self._race(self._http().send(req), f"import of the disk of {vm_id}")
        if resp.status_code >= 400:
            raise self._error(resp.status_code, resp.content)

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        body = {"nics": [n.to_wire() for n in nics], "firewall": firewall.to_wire()}
        await self._call("PUT", f"/vms/{vm_id}/network", body=body, what=f"network of {vm_id}")

    async def stats_vm(self, vm_id: str) -> VmStats:
        return wire.stats_from_wire((await self._call("GET", f"/vms/{vm_id}/stats", what=f"stats of {vm_id}")).json())

    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        resp = await self._call("POST", f"/vms/{vm_id}/snapshots/{snapshot_id}", timeout=600, what=f"snapshot of {vm_id}")
        return wire.image_from_wire(resp.json())

    async def revert_vm(self, vm_id: str, snapshot_image: str) -> None:
        await self._call("POST", f"/vms/{vm_id}/revert", body={"image": snapshot_image}, timeout=600, what=f"revert of {vm_id}")

    async def delete_snapshot(self, snapshot_id: str) -> None:
        await self._call("DELETE", f"/snapshots/{snapshot_id}", what=f"delete of snapshot {snapshot_id}")

    # -- images ------------------------------------------------------------------------------

    async def _push(self, template_id: str, name: str, path: Path, progress: Progress | None) -> None:
        """Stream one file to the agent, which checks it against its SHA-256."""
        try:
            sha, size = await asyncio.to_thread(file_sha256, path)
        except OSError as exc:
            raise DriverError(f"cannot read {path.name}: {exc.strerror}", template_id=template_id) from exc

        async def body() -> AsyncIterator[bytes]:
            sent = last = 0
            with open(path, "rb") as f:
                while chunk := await asyncio.to_thread(f.read, PUSH_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    pct = sent * 100 // max(1, size)
                    if progress is not None and pct >= last + 10:
                        last = pct
                        await progress(pct, f"{name}: sent {sent} of {size} bytes to {self.node_id}")

        req = self._http().build_request(
            "PUT", f"/images/{template_id}/files/{name}", content=body(),
            headers={"x-vmplane-sha256": sha, "content-length": str(size), **self._order()},
            timeout=httpx.Timeout(600.0, connect=CONNECT_TIMEOUT, pool=None),
        )  # fmt: skip
        resp = await self._race(self._http().send(req), f"upload of {name} of template {template_id}")
        if resp.status_code >= 400:
            raise self._error(resp.status_code, resp.content)

    async def import_image(self, template_id: str, source: Path, progress: Progress) -> ImageInfo:
        await self._push(template_id, "disk", Path(source), progress)
        resp = await self._call("POST", f"/images/{template_id}/import", timeout=600, what=f"import of template {template_id}")
        info = wire.image_from_wire(resp.json())
        await progress(100, f"{info.format} image checked on {self.node_id}")
        return info

    async def provide_template(self, files: TemplateFiles, progress: Progress) -> tuple[str, dict[str, str] | None]:
        """The agent fetches what it lacks (from the control plane's download endpoint, or the
        template's source URL), each file checked against its SHA-256; files it has no source
        for are pushed to it."""
        local = {"disk": Path(files.image)}
        boot = files.boot or {}
        for name in ("kernel", "initrd"):
            if boot.get(name):
                local[name] = Path(boot[name])
        wanted: dict[str, dict[str, Any]] = {}
        for name, path in local.items():
            try:
                sha, size = await asyncio.to_thread(file_sha256, path)
            except OSError as exc:
                raise DriverError(f"template {files.template_id}: cannot read its {name}: {exc.strerror}") from exc
            entry: dict[str, Any] = {"sha256": sha, "size": size}
            if self.serves_templates:
                entry["path"] = f"{wire.CONTROL_PREFIX}/templates/{files.template_id}/files/{name}"
            source = files.source_url or ""
            if name == "disk" and files.checksum == f"sha256:{sha}" and urlparse(source).scheme in ("http", "https"):
                entry["url"] = source
            wanted[name] = entry
        body = {"files": wanted, "cmdline": boot.get("cmdline")}
        call = f"/images/{files.template_id}/provide"
        result = await self._long_call(call, body, progress, f"the files of template {files.template_id}")
        if result.get("missing"):
            for name in result["missing"]:
                if name not in local:
                    raise DriverError(f"node {self.node_id} asks for an unknown file {name!r}")
                await self._push(files.template_id, name, local[name], progress)
            result = await self._long_call(call, body, progress, f"the files of template {files.template_id}")
        if "image" not in result:
            raise DriverError(f"node {self.node_id} could not get the files of template {files.template_id}: {result}")
        return str(result["image"]), result.get("boot")

    async def delete_image(self, template_id: str) -> None:
        await self._call("DELETE", f"/images/{template_id}", what=f"delete of template {template_id}")

    # -- live migration ------------------------------------------------------------------------

    async def migrate_prepare(self, spec: VmSpec) -> MigrationTarget:
        resp = await self._call("POST", f"/migrations/{spec.id}/prepare", body=wire.spec_to_wire(spec), what=f"incoming migration of {spec.id}")
        return wire.target_from_wire(resp.json())

    async def migrate_send(self, vm_id: str, target: MigrationTarget, progress: Progress) -> None:
        await self._long_call(f"/migrations/{vm_id}/send", wire.target_to_wire(target), progress, f"migration of {vm_id}")

    async def migrate_finish(self, vm_id: str) -> None:
        await self._call("POST", f"/migrations/{vm_id}/finish", what=f"resume of {vm_id} after its migration")

    async def migrate_cancel(self, vm_id: str) -> None:
        await self._call("POST", f"/migrations/{vm_id}/cancel", what=f"cancel of the migration of {vm_id}")
