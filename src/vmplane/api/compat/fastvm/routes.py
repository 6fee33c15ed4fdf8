"""The FastVM endpoints (openapi.yaml next to this file), each a call into the core services.

Requests that make a job (create, delete, firewall, snapshot) wait up to
`compat_wait_seconds` for it, because FastVM answers with the result: a job that failed in
that time answers 502 (or `deleted: false`), one still running answers with the state so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from .... import clock
from ....domain import NewVm, Vm
from ....domain.ingress import Ipv6Ingress
from ....domain.network import Firewall
from ....errors import Conflict, DriverError, InvalidRequest, NotFound, Reason, VmplaneError
from ....wsconsole import bridge
from ...deps import CallerDep, RuntimeDep, authorize
from ...errors import retry_after
from ...health import readiness
from ...middleware import NO_STORE
from . import wire

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])
"""endpoints that need credentials (X-API-Key or Bearer, as on the native API)"""
open_router = APIRouter()
"""health, and the console WebSocket (its one-time token is the credential)"""


def _wait(rt: Runtime) -> float:
    return rt.settings.compat_wait_seconds


async def _failed(rt: Runtime, job_id: str, vm_id: str | None = None, who: Any = None) -> str | None:
    """Wait for a job (bounded); the first task's error if it failed. With `vm_id`: a job that
    failed because its VM was deleted meanwhile answers 404, as the VM does now."""
    outcome = await rt.jobs.wait(job_id, _wait(rt))
    if not outcome.failed:
        return None
    if vm_id is not None:
        await rt.vms.get(vm_id, who)
    return outcome.error("the job failed")


async def _vm_out(rt: Runtime, row: Vm) -> dict[str, Any]:
    policies = await rt.ingress.policies([row.id])
    return wire.vm(row, policies[row.id], row.spec.source_name)


async def _vm(rt: Runtime, vm_id: str, who: Any) -> Vm:
    return await rt.vms.get(wire.parse_uuid(vm_id, "id"), who)


# -- health --------------------------------------------------------------------------------


@open_router.get("/healthz")
@open_router.get("/readyz")
async def ready(request: Request) -> JSONResponse:
    checks = await readiness(request.app.state.rt)
    bad = {k: v for k, v in checks.items() if v != "ok"}
    if bad:
        return JSONResponse({"error": "not ready: " + ", ".join(f"{k} {v}" for k, v in bad.items())}, status_code=503)
    return JSONResponse({"status": "ok"})


@open_router.get("/livez")
async def live() -> JSONResponse:
    return JSONResponse({"status": "ok"})


# -- VMs -----------------------------------------------------------------------------------


@router.get("/v1/vms")
async def list_vms(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    rows = await rt.vms.every(who)
    policies = await rt.ingress.policies([r.id for r in rows])
    return JSONResponse([wire.vm(r, policies[r.id], r.spec.source_name) for r in rows])


@router.post("/v1/vms")
async def create_vm(body: wire.CreateVmIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """201 with the VM once it runs; 202 with it while it is still being provisioned."""
    if (body.machineType is None) == (body.snapshotId is None):
        both = body.machineType is not None
        raise InvalidRequest(
            "give machineType or snapshotId, not both" if both else "give machineType (c1m2, c2m4, c4m8, c8m16) or snapshotId",
            field="snapshotId" if both else "machineType",
        )
    policy = body.firewall.policy("firewall") if body.firewall is not None else None
    shown = body.name or None  # FastVM's name is the VM's display name ("" or none: named after its id)
    if body.machineType is not None:
        shape = wire.MACHINE_TYPES[body.machineType]
        spec = NewVm(
            display_name=shown, resources=shape, disk_gb=body.diskGiB, template_id=await rt.templates.default_id(who),
            ipv6_ingress=policy or Ipv6Ingress(),  # FastVM's default for a new VM: restricted, nothing allowed
        )  # fmt: skip
    else:
        snap_ref = wire.parse_uuid(body.snapshotId or "", "snapshotId")
        spec = NewVm(display_name=shown, snapshot=snap_ref, disk_gb=body.diskGiB, ipv6_ingress=policy)
    try:
        row = await rt.vms.create_and_wait(spec, who, _wait(rt))
    except NotFound as exc:  # the contract has no 404 here: a missing snapshot is bad input
        if body.snapshotId is None:
            raise
        raise InvalidRequest(f"snapshotId: {exc.message}", field="snapshotId") from None
    except InvalidRequest as exc:  # the core names the domain's fields: say them as FastVM does
        if exc.field == "displayName":
            raise wire.name_error() from None
        if exc.reason == Reason.CANNOT_SHRINK and exc.field == "resources.disk_gb":
            raise InvalidRequest(
                f"diskGiB {body.diskGiB} is smaller than the snapshot's disk ({exc.details['minimum']} GiB); disks only grow", field="diskGiB"
            ) from None
        if exc.reason == Reason.BEYOND_ANY_NODE and exc.field == "resources.disk_gb":
            raise InvalidRequest(f"diskGiB {body.diskGiB} is more than any node can hold (at most {exc.details.get('maximum')})", field="diskGiB") from None
        if exc.reason == Reason.BEYOND_ANY_NODE:
            field = "machineType" if body.machineType is not None else "snapshotId"
            raise InvalidRequest(f"{field}: that machine type is larger than any node; {exc.message}", field=field) from None
        raise
    return JSONResponse(await _vm_out(rt, row), status_code=201 if row.status == "running" else 202)


@router.get("/v1/vms/{id}")
async def get_vm(id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await _vm_out(rt, await _vm(rt, id, who)))


@router.patch("/v1/vms/{id}")
async def rename_vm(id: str, body: wire.UpdateVmIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _vm(rt, id, who)
    try:
        row = await rt.vms.rename(vm.id, None, who, display_name=body.name)
    except Conflict as exc:  # the contract answers renames with 200, 400 or 404 only
        raise InvalidRequest(exc.message, field="name") from None
    except InvalidRequest as exc:
        if exc.field == "displayName":
            raise wire.name_error() from None
        raise
    return JSONResponse(await _vm_out(rt, row))


@router.delete("/v1/vms/{id}")
async def delete_vm(id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """200 once the VM is gone, or while it is still being deleted (GET shows `deleting`)."""
    vm = await _vm(rt, id, who)
    job_id = await rt.vms.delete_once(vm.id, who)
    if job_id is None:  # already on its way
        return JSONResponse({"id": vm.uuid, "deleted": True})
    error = await _failed(rt, job_id)
    if error is not None:
        raise DriverError(f"deleting the VM failed: {error}")
    return JSONResponse({"id": vm.uuid, "deleted": True})


async def _firewall(rt: Runtime, id: str, who: Any, mode: str | None, allow: Any) -> JSONResponse:
    vm = await _vm(rt, id, who)
    _policy, job_id = await rt.ingress.change(vm.id, who, mode, allow)
    error = await _failed(rt, job_id, vm.id, who)
    if error is not None:
        raise DriverError(f"the firewall was saved but applying it on the node failed: {error}")
    return JSONResponse(await _vm_out(rt, await rt.vms.get(vm.id, who)))


@router.put("/v1/vms/{id}/firewall")
async def replace_firewall(id: str, body: wire.FirewallPolicyIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Replace the public IPv6 ingress policy (IPv4 is not affected)."""
    policy = body.policy("")
    return await _firewall(rt, id, who, policy.mode, policy.allow)


@router.patch("/v1/vms/{id}/firewall")
async def patch_firewall(id: str, body: wire.PatchFirewallIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Change the mode and/or the allow rules; what is left out keeps its value."""
    return await _firewall(rt, id, who, body.mode, body.rules())


# -- console and exec ----------------------------------------------------------------------


@router.post("/v1/vms/{id}/console-token")
async def console_token(id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _vm(rt, id, who)
    token, expires, vm = await rt.guest.console_token(vm.id, who)
    return JSONResponse(
        {
            "token": token,
            "expiresInSec": max(0, round(expires - clock.now())),
            # under the face's mount point, which a `--face` listener passes through as it is:
            # ws://HOST<websocketPath>?session=TOKEN works on either listener
            "websocketPath": f"{request.scope.get('root_path', '')}/v1/vms/{vm.uuid}/console/ws",
        },
        headers=NO_STORE,
    )


@open_router.websocket("/v1/vms/{id}/console/ws")
async def console_ws(websocket: WebSocket, id: str, session: str = "") -> None:
    """The serial console, both ways. A refused upgrade answers with HTTP status and error."""
    rt = websocket.app.state.rt
    try:
        if not session:
            raise InvalidRequest("the session query parameter (a token from console-token) is required", field="session")
        reader, writer, slot = await rt.guest.open_console(wire.parse_uuid(id, "id"), session)
    except VmplaneError as exc:
        await websocket.send_denial_response(JSONResponse({"error": exc.message}, status_code=wire.STATUS[exc.reason], headers=retry_after(exc)))
        return
    with slot:
        await websocket.accept()
        await bridge(websocket, reader, writer)


@open_router.get("/v1/vms/{id}/console/ws")
async def console_ws_plain(id: str, session: str | None = None) -> JSONResponse:
    """A plain HTTP request to the WebSocket endpoint."""
    wire.parse_uuid(id, "id")
    if session is None:
        raise InvalidRequest("the session query parameter (a token from console-token) is required", field="session")
    return JSONResponse({"error": "this endpoint speaks WebSocket: send an Upgrade request"}, status_code=426, headers={"Upgrade": "websocket"})


@router.post("/v1/vms/{id}/exec")
async def exec_vm(id: str, body: wire.ExecIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _vm(rt, id, who)
    r = await rt.guest.exec(vm.id, body.command, float(body.timeoutSec), who)
    return JSONResponse(
        {
            "exitCode": -1 if r.exit_code is None else r.exit_code,  # no exit code: it timed out
            "stdout": r.stdout.decode("utf-8", "replace"),
            "stderr": r.stderr.decode("utf-8", "replace"),
            "timedOut": r.timed_out,
            "stdoutTruncated": r.stdout_truncated,
            "stderrTruncated": r.stderr_truncated,
            "durationMs": max(0, r.duration_ms),
        }
    )


# -- snapshots -----------------------------------------------------------------------------


def _snapshot_out(row: Row[Any]) -> dict[str, Any]:
    return wire.snapshot(row, Ipv6Ingress.of(Firewall.from_wire(row.config.get("firewall"))))


async def _snapshot(rt: Runtime, id: str, who: Any) -> Row[Any]:
    row = await rt.snapshots.get(wire.parse_uuid(id, "id"), who)
    if row.status not in wire.SNAPSHOT_STATUS:  # being deleted: gone, as FastVM sees it
        raise NotFound(f"snapshot {id} does not exist")
    return row


@router.post("/v1/snapshots")
async def create_snapshot(body: wire.CreateSnapshotIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """201 with the snapshot: `ready` when it was taken in time, `creating` while it is taken."""
    vm = await rt.vms.get(wire.parse_uuid(body.vmId, "vmId"), who)
    job_id, snap_id = await rt.snapshots.create(vm.id, body.name, who)
    error = await _failed(rt, job_id, vm.id, who)
    if error is not None:
        raise DriverError(f"taking the snapshot failed: {error}")
    return JSONResponse(_snapshot_out(await rt.snapshots.get(snap_id, who)), status_code=201)


@router.get("/v1/snapshots")
async def list_snapshots(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    rows: Sequence[Row[Any]] = await rt.snapshots.list(who)
    return JSONResponse([_snapshot_out(r) for r in rows if r.status in wire.SNAPSHOT_STATUS])


@router.patch("/v1/snapshots/{id}")
async def rename_snapshot(id: str, body: wire.UpdateSnapshotIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    snap = await _snapshot(rt, id, who)
    return JSONResponse(_snapshot_out(await rt.snapshots.rename(snap.id, body.name, who)))


@router.delete("/v1/snapshots/{id}")
async def delete_snapshot(id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """`deleted: false` when the node failed to delete it; 400 while VMs cloned from it exist
    (their disks build on it) or while it is still being taken."""
    snap = await _snapshot(rt, id, who)
    try:
        job_id = await rt.snapshots.delete(snap.id, who)
    except Conflict as exc:  # the contract answers 200, 400 or 404 here
        raise InvalidRequest(exc.message, field="id") from None
    return JSONResponse({"id": snap.uuid, "deleted": await _failed(rt, job_id) is None})


# -- organization --------------------------------------------------------------------------


@router.get("/v1/org/quotas")
async def quotas(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Limits in force (the quota, else what the nodes can hold; no bound: 2^31-1) and usage."""
    q = await rt.tenancy.quotas(who)
    return JSONResponse({"orgId": q["orgId"], "limits": wire.quota_values(q["effectiveLimits"]), "usage": wire.quota_values(q["usage"])})
