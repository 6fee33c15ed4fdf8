"""The Volant endpoints (openapi.json next to this file), each a call into the core services.

VMs are addressed by name. Requests that make a job (create, delete, start, stop, restart)
wait up to `compat_wait_seconds` for it, because Volant answers with the result. The plugin,
per-VM OpenAPI and MCP endpoints live in plugins.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import Row

from .... import clock, pci
from ....domain import Vm
from ....errors import DriverError, Forbidden, InvalidRequest
from ....events.bus import SlowConsumer
from ....hoststats import CpuMeter, mem_percent
from ....store import templates as tpl_q
from ....store import vms as vm_q
from ... import volant_shapes
from ...deps import CallerDep, RuntimeDep, StreamSlotDep, authorize
from ...health import readiness
from ...middleware import json_body
from . import wire

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])
"""endpoints that need credentials (X-Volant-API-Key, X-API-Key, api_key=, or Bearer)"""
open_router = APIRouter()
"""/healthz"""

CPU = CpuMeter()


def _wait(rt: Runtime) -> float:
    return rt.settings.compat_wait_seconds


async def _finish(rt: Runtime, job_id: str, what: str) -> None:
    """Wait (bounded) for a job; DriverError (500) if it failed."""
    await rt.jobs.finish(job_id, _wait(rt), what)


class _Renderer:
    """Renders VMs, looking up what a list needs once (template command lines) and asking
    local QEMU nodes for the process id and serial socket."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.cmdlines: dict[str, str] = {}

    async def __call__(self, row: Vm) -> dict[str, Any]:
        if row.template_id and row.template_id not in self.cmdlines:
            async with self.rt.store.read() as conn:
                tpl = await tpl_q.get_template(conn, row.template_id)
            self.cmdlines[row.template_id] = (tpl.boot or {}).get("cmdline", "") if tpl is not None else ""
        pid = serial = None
        if row.node_id and row.node_id in self.rt.registry:  # QEMU on this host: its process and console socket
            pid, serial = self.rt.registry.driver(row.node_id).host_process(row.id)
        return wire.vm(row, cmdline=self.cmdlines.get(row.template_id or "", ""), pid=pid, serial=serial)


async def _render(rt: Runtime, row: Vm) -> dict[str, Any]:
    return await _Renderer(rt)(row)


# -- health and system -----------------------------------------------------------------------


@open_router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    checks = await readiness(request.app.state.rt)
    bad = {k: v for k, v in checks.items() if v != "ok"}
    if bad:
        return JSONResponse({"error": "not ready", "details": {k: str(v) for k, v in bad.items()}}, status_code=503)
    return JSONResponse({"status": "ok"})


def _host_ip() -> str:
    """The address this host reaches the outside from (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
            return str(s.getsockname()[0])  # (address, port) for AF_INET
    except OSError:
        return "127.0.0.1"


@router.get("/api/v1/system/info")
async def system_info(request: Request) -> JSONResponse:
    server = request.scope.get("server") or ("127.0.0.1", 0)
    listen = f"{server[0]}:{server[1]}"
    host = request.headers.get("host") or listen
    return JSONResponse({"status": "ok", "api_listen_addr": listen, "api_advertise_addr": host, "host_ip": await asyncio.to_thread(_host_ip)})


@router.get("/api/v1/system/status")
async def system_status(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The host's CPU and memory use now, and how many VMs the caller has."""
    vms = await rt.vms.every(who)
    cpu = await CPU.percent()
    return JSONResponse({"cpu_percent": cpu, "mem_percent": await asyncio.to_thread(mem_percent), "vm_count": len(vms)})


# -- VMs -----------------------------------------------------------------------------------


@router.get("/api/v1/vms")
async def list_vms(
    rt: RuntimeDep,
    who: CallerDep,
    status: str | None = Query(None, max_length=32),
    runtime: str | None = Query(None, max_length=128),
    plugin: str | None = Query(None, max_length=128),
    q: str | None = Query(None, max_length=128),
    limit: int | None = Query(None, ge=0, le=10000),
    offset: int = Query(0, ge=0),
    sort: str = Query("created_at", max_length=32),
    order: str = Query("asc", max_length=8),
) -> JSONResponse:
    """A bare array; X-Total-Count is how many match the filters before limit/offset."""
    if sort not in wire.SORT_KEYS:
        raise InvalidRequest(f"sort must be one of {', '.join(wire.SORT_KEYS)}", field="sort")
    if order.lower() not in ("asc", "desc"):
        raise InvalidRequest("order must be asc or desc", field="order")
    rows = await rt.vms.every(who)
    if plugin:
        rows = [r for r in rows if r.spec.plugin_name == plugin]
    render = _Renderer(rt)
    items = [await render(r) for r in rows]
    if status:
        items = [i for i in items if i["status"] == status.lower()]
    if runtime:
        items = [i for i in items if i["runtime"] == runtime]
    if q:
        needle = q.lower()
        items = [i for i in items if needle in i["name"].lower() or needle in i["runtime"].lower()]
    items.sort(key=lambda i: wire.sort_value(i, sort), reverse=order.lower() == "desc")
    total = len(items)
    items = items[offset:]
    if limit:
        items = items[:limit]
    return JSONResponse(items, headers={"X-Total-Count": str(total)})


@router.post("/api/v1/vms")
async def create_vm(body: wire.CreateVmIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """201 with the VM once it runs, or as it is when the wait ends (pending/starting)."""
    row = await rt.vm_configs.create(body.name, body.full_config(), who, _wait(rt))
    return JSONResponse(await _render(rt, row), status_code=201)


@router.get("/api/v1/vms/{name}")
async def get_vm(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await _render(rt, await rt.vms.by_name(name, who)))


@router.delete("/api/v1/vms/{name}")
async def delete_vm(name: str, rt: RuntimeDep, who: CallerDep) -> Response:
    vm = await rt.vms.by_name(name, who)
    with volant_shapes.about_vm(vm, "delete"):
        job_id = await rt.vms.delete_once(vm.id, who)
        if job_id is not None:  # else already on its way
            await _finish(rt, job_id, "deleting the VM")
    return Response(status_code=204)


async def _power(rt: Runtime, name: str, who: Any, action: str) -> JSONResponse:
    vm = await rt.vms.by_name(name, who)
    with volant_shapes.about_vm(vm, action):
        await _finish(rt, await rt.vms.power(vm.id, action, who), f"{action} of the VM")
    return JSONResponse(await _render(rt, await rt.vms.get(vm.id, who)))


@router.post("/api/v1/vms/{name}/start")
async def start_vm(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return await _power(rt, name, who, "start")


@router.post("/api/v1/vms/{name}/stop")
async def stop_vm(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return await _power(rt, name, who, "stop")


@router.post("/api/v1/vms/{name}/restart")
async def restart_vm(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Stop (if it runs) and start again (services/vms.restart): a new VM process, which takes
    a changed config's resources; never seen stopped with nothing to do (a deployment would
    replace it)."""
    vm = await rt.vms.by_name(name, who)
    with volant_shapes.about_vm(vm, "restart"):
        stop, start = await rt.vms.restart(vm.id, who)
        if stop is not None:
            await _finish(rt, stop, "stopping the VM")
        await _finish(rt, start, "starting the VM")
    return JSONResponse(await _render(rt, await rt.vms.get(vm.id, who)))


# -- VM config -----------------------------------------------------------------------------


@router.get("/api/v1/vms/{name}/config")
async def get_config(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(wire.config_version(await rt.vm_configs.current(await rt.vms.by_name(name, who))))


@router.patch("/api/v1/vms/{name}/config")
async def patch_config(name: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A JSON merge patch of the config: a new version (see docs/volant.md)."""
    vm = await rt.vms.by_name(name, who)
    with volant_shapes.about_vm(vm, "change the config of"):
        change = await rt.vm_configs.patch(vm, await json_body(request), who)
    return JSONResponse(
        wire.config_version(
            change.current, restart_required=change.restart_required, applied=change.applied, not_applied=change.not_applied
        )
    )


@router.get("/api/v1/vms/{name}/config/history")
async def config_history(name: str, rt: RuntimeDep, who: CallerDep, limit: int = Query(20, ge=1, le=500)) -> JSONResponse:
    versions = await rt.vm_configs.history(await rt.vms.by_name(name, who), limit)
    return JSONResponse([wire.history_item(v) for v in versions])


# -- deployments ---------------------------------------------------------------------------


async def _deployment_out(rt: Runtime, row: Row[Any]) -> dict[str, Any]:
    return volant_shapes.deployment(row, await rt.deployments.ready_count(row))


@router.get("/api/v1/deployments")
async def list_deployments(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse([await _deployment_out(rt, d) for d in await rt.deployments.list(who)])


@router.post("/api/v1/deployments")
async def create_deployment(body: wire.CreateDeploymentIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.deployments.create(body.name, body.replicas, body.config, who)
    return JSONResponse(await _deployment_out(rt, row), status_code=201)


@router.get("/api/v1/deployments/{name}")
async def get_deployment(name: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await _deployment_out(rt, await rt.deployments.get(name, who)))


@router.patch("/api/v1/deployments/{name}")
async def scale_deployment(name: str, body: wire.ScaleDeploymentIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await _deployment_out(rt, await rt.deployments.update(name, who, replicas=body.replicas)))


@router.delete("/api/v1/deployments/{name}")
async def delete_deployment(name: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """204 at once; the replicas are deleted by a job (GET /api/v1/vms shows them go)."""
    await rt.deployments.delete(name, who)
    return Response(status_code=204)


# -- events --------------------------------------------------------------------------------


async def sse_event(rt: Runtime, event: Any) -> bytes | None:
    """A vmplane VM event as Volant writes it: `event: TYPE` and `data: {...}`; no id line.
    The VM's addresses (and its QEMU pid when it runs on this host) when it still exists."""
    kind = wire.SSE_TYPES.get(event.type)
    if kind is None:
        return None
    type_, status, message = kind
    data = event.data or {}
    payload: dict[str, Any] = {
        "type": type_,
        "name": data.get("name") or event.resource,
        "status": status,
        "timestamp": clock.rfc3339(event.ts),
        "message": message if message is not None else (data.get("error") or "vm crashed"),
    }
    if type_ != "VM_DELETED" and event.resource:
        async with rt.store.read() as conn:
            row = await vm_q.get_vm(conn, event.resource)
        if row is not None:
            vm = wire.vm(row)
            payload.update({k: vm[k] for k in ("ip_address", "mac_address") if vm[k]})
    node_id = data.get("nodeId")
    if type_ == "VM_RUNNING" and isinstance(node_id, str) and node_id in rt.registry:
        pid = rt.registry.driver(node_id).host_process(event.resource)[0]
        if pid is not None:
            payload["pid"] = pid
    return f"event: {type_}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


@router.get("/api/v1/events/vms")
async def vm_events(request: Request, rt: RuntimeDep, who: CallerDep, _slot: StreamSlotDep) -> StreamingResponse:
    bus = rt.events
    heartbeat = rt.settings.event_heartbeat_seconds

    async def stream() -> AsyncIterator[bytes]:
        async with bus.subscribe(tuple(wire.SSE_TYPES), None, rt.settings.event_subscriber_queue, who.org_id, who.team_id) as sub:
            yield b": connected\n\n"
            while True:
                try:
                    event = await sub.get(timeout=heartbeat)
                except SlowConsumer as exc:  # a last comment says why the stream ends (Volant's events have no error type)
                    yield b": %s\n\n" % str(exc).encode()
                    return
                if event is None:
                    yield b": heartbeat\n\n"
                    continue
                out = [await sse_event(rt, e) for e in [event, *sub.ready(500)]]
                chunk = b"".join(x for x in out if x)
                if chunk:
                    yield chunk

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- VFIO ----------------------------------------------------------------------------------
# On the control plane's own host (Volant's daemon is one host); pci.py does the sysfs work.


def _address(rt: Runtime, value: str, field: str) -> str:
    try:
        return pci.check_address(value)
    except DriverError as exc:
        raise InvalidRequest(f"{field}: {exc.message}", field=field) from None


async def _device(rt: Runtime, address: str, field: str) -> pci.PciDevice:
    try:
        return await asyncio.to_thread(pci.read_device, rt.settings.sysfs_root, _address(rt, address, field))
    except DriverError as exc:
        raise InvalidRequest(f"{field}: {exc.message}", field=field) from None


@router.post("/api/v1/vfio/devices/info")
async def vfio_info(body: wire.PciAddressIn, rt: RuntimeDep) -> JSONResponse:
    d = await _device(rt, body.pci_address, "pci_address")
    return JSONResponse(
        {
            "address": d.address, "vendor": d.vendor, "device": d.device, "driver": d.driver or "",
            "iommu_group": "" if d.iommu_group is None else str(d.iommu_group), "numa_node": "" if d.numa_node is None else str(d.numa_node),
        }  # fmt: skip
    )


@router.post("/api/v1/vfio/devices/validate")
async def vfio_validate(body: wire.ValidateIn, rt: RuntimeDep) -> JSONResponse:
    """Each address well formed, present on this host, not host plumbing, and admitted by
    the allowlist given (else the operator's, VMPLANE_PCI_ALLOWLIST)."""
    try:
        allow = pci.Allowlist(body.allowlist) if body.allowlist is not None else pci.Allowlist(rt.settings.pci_allowlist)
    except ValueError as exc:
        raise InvalidRequest(f"allowlist: {exc}", field="allowlist") from None
    errors: list[str] = []
    for i, address in enumerate(body.pci_addresses):
        try:
            d = await asyncio.to_thread(pci.read_device, rt.settings.sysfs_root, pci.check_address(address))
        except DriverError as exc:
            errors.append(f"pci_addresses[{i}]: {exc.message}")
            continue
        if pci.never_offered(d):
            errors.append(f"{d.address} is a bridge of the host; it is never passed through")
        elif not allow.admits(d):
            errors.append(f"{d.address} ({d.model}) is not in the allowlist")
    valid = not errors and bool(body.pci_addresses)
    if not body.pci_addresses:
        errors.append("pci_addresses is empty")
    return JSONResponse({"valid": valid, "errors": errors, "message": "all devices are valid" if valid else f"{len(errors)} problem(s)"})


@router.post("/api/v1/vfio/devices/iommu-groups")
async def vfio_groups(body: wire.ValidateIn, rt: RuntimeDep) -> JSONResponse:
    groups: dict[str, list[str]] = {}
    for i, address in enumerate(body.pci_addresses):
        field = f"pci_addresses[{i}]"
        d = await _device(rt, address, field)
        if d.iommu_group is None:
            raise InvalidRequest(f"{field}: {d.address} is in no IOMMU group (the IOMMU is off)", field=field)
        members = await asyncio.to_thread(pci.group_devices, rt.settings.sysfs_root, d.address)
        groups[str(d.iommu_group)] = [m.address for m in members]
    return JSONResponse([{"id": k, "devices": v} for k, v in groups.items()])


@router.post("/api/v1/vfio/devices/group-paths")
async def vfio_group_paths(body: wire.PciAddressesIn, rt: RuntimeDep) -> JSONResponse:
    paths: list[str] = []
    for i, address in enumerate(body.pci_addresses):
        field = f"pci_addresses[{i}]"
        d = await _device(rt, address, field)
        if d.iommu_group is None:
            raise InvalidRequest(f"{field}: {d.address} is in no IOMMU group (the IOMMU is off)", field=field)
        path = str(pci.vfio_group_path(d.iommu_group))
        if path not in paths:
            paths.append(path)
    return JSONResponse({"group_paths": paths})


async def _bind(rt: Runtime, who: Any, addresses: list[str], bind: bool) -> list[str]:
    """Operators only: moves host devices between drivers. Only devices the operator's
    allowlist offers, never the host's bridges."""
    if not who.operator:
        raise Forbidden("binding host devices is for the operators of this installation")
    allow = pci.Allowlist(rt.settings.pci_allowlist)
    devices = [await _device(rt, a, f"pci_addresses[{i}]") for i, a in enumerate(addresses)]
    for i, d in enumerate(devices):
        if pci.never_offered(d) or not allow.admits(d):
            raise InvalidRequest(f"pci_addresses[{i}]: {d.address} is not offered for passthrough (VMPLANE_PCI_ALLOWLIST)", field=f"pci_addresses[{i}]")
    done = []
    for d in devices:
        fn = pci.bind_vfio if bind else pci.unbind_vfio
        if await asyncio.to_thread(fn, rt.settings.sysfs_root, d.address):
            done.append(d.address)
    return done


@router.post("/api/v1/vfio/devices/bind")
async def vfio_bind(body: wire.PciAddressesIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    done = await _bind(rt, who, body.pci_addresses, True)
    return JSONResponse({"success": True, "bound_devices": done, "message": f"{len(done)} device(s) bound to vfio-pci"})


@router.post("/api/v1/vfio/devices/unbind")
async def vfio_unbind(body: wire.PciAddressesIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    done = await _bind(rt, who, body.pci_addresses, False)
    return JSONResponse({"success": True, "unbound_devices": done, "message": f"{len(done)} device(s) given back to their drivers"})
