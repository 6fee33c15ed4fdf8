"""Blue Lobster instances: list, get, delete, power and rename.

Power actions other than reboot answer at once with a task id (a vmplane job id) that
`GET /api/v1/tasks/{task_id}` follows; delete and reboot wait up to `compat_wait_seconds` for
their job, because the contract answers them with the outcome.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse

from ....auth import Principal
from ....domain.names import derive_name
from ....errors import Conflict, InvalidRequest, InvalidState
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import find_instance, nodes_by_id, offerings_of, render, team_names, vm_host, wait
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/api/v1/instances")
async def list_instances(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The account's instances (a team key's: its team's), newest first."""
    off = offerings_of(request)
    nodes = await nodes_by_id(off)
    rows = sorted(await rt.vms.every(who), key=lambda r: (r.created_at, r.seq), reverse=True)
    teams = await team_names(rt, who)
    return JSONResponse([render(off, r, nodes, teams) for r in rows])


@router.get("/api/v1/instances/{instance_id}")
async def get_instance(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    off = offerings_of(request)
    return JSONResponse(render(off, await find_instance(rt, instance_id, who), await nodes_by_id(off), await team_names(rt, who)))


@router.delete("/api/v1/instances/{instance_id}")
async def delete_instance(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Waits (bounded) for the delete; `task_id` follows it if it is still going."""
    vm = await find_instance(rt, instance_id, who)
    host = await vm_host(offerings_of(request), vm)
    try:
        job_id = await rt.vms.delete([vm.id], who)
    except InvalidState as exc:
        raise BlError(400, "invalid_state", f"Instance is not in a state to delete: {exc.message}") from None
    outcome = await wait(rt, job_id)
    if outcome.unsuccessful:
        error = outcome.error(outcome.state)
        raise BlError(500, "deletion_failed", f"Failed to delete VM: {error}", task_id=job_id)
    return JSONResponse({"status": "success", "message": "Instance deleted successfully", "instance_id": vm.uuid, "host": host, "task_id": job_id})


@router.post("/api/v1/instances/{instance_id}/reboot")
async def reboot(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A reboot of a running instance; waits (bounded) for it."""
    vm = await find_instance(rt, instance_id, who)
    host = await vm_host(offerings_of(request), vm)
    began = time.monotonic()
    try:
        job_id = await rt.vms.power(vm.id, "reboot", who)
    except InvalidState as exc:
        raise BlError(409, "operation_in_progress", f"Instance cannot be rebooted now: {exc.message}") from None
    outcome = await wait(rt, job_id)
    if outcome.unsuccessful:
        error = outcome.error(outcome.state)
        raise BlError(500, "reboot_failed", f"Failed to reboot Instance: {error}", task_id=job_id)
    done = outcome.state == "succeeded"
    return JSONResponse(
        {
            "status": "success" if done else "pending",
            "message": "Instance rebooted successfully" if done else "Instance reboot in progress; follow task_id",
            "instance_id": vm.uuid,
            "host": host,
            "duration_ms": round((time.monotonic() - began) * 1000),
            "task_id": job_id,
        }
    )


POWER = {
    # path: (core action, what the message says)
    "shutdown": ("shutdown", "shutdown"),
    "force-shutdown": ("stop", "force shutdown"),
    "power-on": ("start", "power on"),
    "power-cycle": ("power-cycle", "power cycle"),
}


async def _power(path: str, instance_id: str, request: Request, rt: Runtime, who: Principal) -> JSONResponse:
    """The contract answers these with a task and lists no refusal: an action the VM's state
    does not allow is a task that has already FAILED, its message the reason."""
    action, words = POWER[path]
    vm = await find_instance(rt, instance_id, who)
    job_id = await rt.vms.power(vm.id, action, who, refusal_as_job=True)
    job, tasks = await rt.jobs.get(job_id, who)
    task = wire.task(job, list(tasks))
    failed = task["status"] == "FAILED"
    message = f"Cannot {words} the instance: {task['message']}" if failed else f"VM {words} queued"
    return JSONResponse(
        {"task_id": job_id, "status": "FAILED" if failed else "PENDING", "message": message, "instance_id": vm.uuid, "host": await vm_host(offerings_of(request), vm)}
    )


@router.post("/api/v1/instances/{instance_id}/shutdown")
async def shutdown(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """An ACPI shutdown: the guest powers itself off."""
    return await _power("shutdown", instance_id, request, rt, who)


@router.post("/api/v1/instances/{instance_id}/force-shutdown")
async def force_shutdown(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Power off at once."""
    return await _power("force-shutdown", instance_id, request, rt, who)


@router.post("/api/v1/instances/{instance_id}/power-on")
async def power_on(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return await _power("power-on", instance_id, request, rt, who)


@router.post("/api/v1/instances/{instance_id}/power-cycle")
async def power_cycle(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Power off and on again (a stopped instance is powered on)."""
    return await _power("power-cycle", instance_id, request, rt, who)


@router.put("/api/v1/instances/{instance_id}/rename")
async def rename(instance_id: str, rt: RuntimeDep, who: CallerDep, body: wire.RenameIn = Body(...)) -> JSONResponse:
    """The contract's names are 3-64 letters, digits, '-' and '_': the name is the VM's display
    name, and its VM name the one derived from it (`my_vm` -> `my-vm`), unique in the account
    as the contract says (taken: 400)."""
    vm = await find_instance(rt, instance_id, who)
    if not wire.RENAME_RE.match(body.name):
        raise BlError(400, "invalid_name", "Name must be 3-64 characters, alphanumeric with hyphens/underscores only")
    try:
        row = await rt.vms.rename(vm.id, derive_name(body.name), who, display_name=body.name)
    except (InvalidRequest, Conflict) as exc:
        raise BlError(400, "invalid_name", exc.message) from None
    return JSONResponse({"message": "Instance renamed successfully", "instance_id": row.uuid, "new_name": row.display_name})
