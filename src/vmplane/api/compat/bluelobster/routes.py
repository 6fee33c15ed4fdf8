"""The Blue Lobster endpoints (openapi.json next to this file), each a call into the core.

Launches and power actions other than reboot answer at once with a task id (a vmplane job id)
that `GET /api/v1/tasks/{task_id}` follows; delete and reboot wait up to
`compat_wait_seconds` for their job, because the contract answers them with the outcome.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from .... import clock
from ....auth import Principal
from ....domain import NewVm, Resources, StoredSpec, Template, Vm
from ....errors import Conflict, InvalidRequest, InvalidState, NoCapacity, NotFound, Reason, VmplaneError
from ....services.backups import BackupSchedule
from ....services.jobs import JobOutcome
from ....services.offerings import InstanceType, Offerings
from ....wsconsole import bridge
from ...deps import CallerDep, RuntimeDep, authorize
from ...health import readiness
from ...middleware import NO_STORE
from . import wire
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])
"""endpoints that need credentials (X-API-Key, or a bearer token as on the native API)"""
open_router = APIRouter()
"""health"""

TASK_DAYS_MAX = 7
TASK_LIMIT_MAX = 100


def _offerings(request: Request) -> Offerings:
    offerings: Offerings = request.app.state.offerings  # the face's build_face puts them there
    return offerings


async def _instance(rt: Runtime, instance_id: str, who: Principal) -> Vm:
    try:
        return await rt.vms.get(instance_id, who)
    except NotFound:
        raise BlError(404, "instance_not_found", f"Instance {instance_id} not found") from None


async def _nodes(off: Offerings) -> dict[str, Row[Any]]:
    return {n.id: n for n in await off.nodes()}


def _price(off: Offerings, row: Vm) -> int | None:
    if row.spec.price_cents_per_hour is not None:
        return row.spec.price_cents_per_hour
    t = off.catalog.by_name.get(row.spec.instance_type or "")
    return t.price_cents_per_hour if t is not None else None


def _render(off: Offerings, row: Vm, nodes: dict[str, Row[Any]], teams: dict[str, str] | None = None) -> dict[str, Any]:
    node = nodes.get(row.node_id) if row.node_id else None
    out = wire.instance(row, node, off.region_of(node), off.host_of(node), _price(off, row))
    if teams and row.team_id:
        out["team_name"] = teams.get(row.team_id)
    return out


async def _team_names(rt: Runtime, who: Principal) -> dict[str, str]:
    return {t.id: t.name for t in await rt.tenancy.teams(who)}


async def _host(off: Offerings, row: Vm) -> str | None:
    return off.host_of((await _nodes(off)).get(row.node_id)) if row.node_id else None


# -- health --------------------------------------------------------------------------------


@open_router.get("/api/v1/health")
async def health(request: Request) -> JSONResponse:
    """`api`, `database` and `hypervisor` (some node online), each operational or degraded."""
    rt = request.app.state.rt
    checks = await readiness(rt)
    database = "operational" if checks.get("store") == "ok" else "degraded"
    try:
        online = any(n.status == "online" for n in await _offerings(request).nodes())
    except Exception:  # the store is down: the database component already says so
        online = False
    components = {"api": "operational", "database": database, "hypervisor": "operational" if online and rt.ready else "degraded"}
    bad = [k for k, v in components.items() if v != "operational"]
    status = "healthy" if not bad else ("unhealthy" if "database" in bad else "degraded")
    return JSONResponse({"status": status, "timestamp": clock.rfc3339(clock.now()), "components": components})


# -- tasks ---------------------------------------------------------------------------------


async def _task_out(rt: Runtime, off: Offerings, job: Row[Any], tasks: Sequence[Row[Any]], who: Principal) -> dict[str, Any]:
    out = wire.task(job, list(tasks))
    if len(tasks) == 1:
        try:
            vm = await rt.vms.get(tasks[0].resource_id, who)
        except NotFound:
            vm = None
        if vm is not None:
            out["params"]["vm_uuid"] = vm.uuid
            host = await _host(off, vm)
            if host is not None:
                out["params"]["host_id"] = host
    return out


@router.get("/api/v1/tasks/{task_id}")
async def get_task(task_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    try:
        job, tasks = await rt.jobs.get(task_id, who)
    except NotFound:
        return JSONResponse({"error": "task_not_found", "message": "Task not found", "task_id": task_id}, status_code=404)
    return JSONResponse(await _task_out(rt, _offerings(request), job, tasks, who))


@router.get("/api/v1/tasks")
async def list_tasks(
    request: Request,
    rt: RuntimeDep,
    who: CallerDep,
    limit: int = Query(50, ge=1, le=TASK_LIMIT_MAX),
    days: int = Query(1, ge=1, le=TASK_DAYS_MAX),
    status: Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED"] | None = None,
) -> JSONResponse:
    """The account's tasks of the last `days` days, newest first."""
    since = clock.now() - days * 86400
    picked: list[dict[str, Any]] = []
    token = None
    done = False
    while not done:
        page, token = await rt.jobs.list(who, state=None, type_=None, limit=200, page_token=token)
        for job in page:
            if job.created_at < since:
                done = True
                break
            if status is None or wire.TASK_STATUS.get(job.state) == status:
                _, tasks = await rt.jobs.get(job.id, who)
                picked.append(wire.task(job, list(tasks)))
                if len(picked) == limit:
                    done = True
                    break
        done = done or token is None
    return JSONResponse({"tasks": picked, "total": len(picked), "limit": limit, "days": days})


# -- templates and instance types ----------------------------------------------------------


async def _templates(rt: Runtime, who: Principal) -> list[Template]:
    rows: list[Template] = []
    token = None
    while True:
        page, token = await rt.templates.list(who, limit=500, page_token=token)
        rows += page
        if token is None:
            return rows


@router.get("/api/v1/instances/templates")
async def list_templates(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Ready templates under their upper-case names (`tiny-linux` is `TINY-LINUX`)."""
    out = []
    for t in await _templates(rt, who):
        name = wire.template_name(t)
        if name is not None and t.status == "ready":
            out.append({"name": name, "display_name": t.name, "os_type": t.os, "id": t.id})
    return JSONResponse({"templates": out})


async def _template_id(rt: Runtime, who: Principal, name: str | None) -> str | None:
    if name is None:
        return await rt.templates.default_id(who)
    # the organization's own template of that name first, then a shared one (names are per organization)
    for t in sorted(await _templates(rt, who), key=lambda t: t.org_id is None):
        if wire.template_name(t) == name and t.status == "ready":
            return t.id
    raise BlError(400, "invalid_request", f"template {name!r} does not exist or is not ready; see GET /api/v1/instances/templates")


def _type_out(t: InstanceType) -> dict[str, Any]:
    specs: dict[str, Any] = {"vcpus": t.vcpus, "memory_gib": t.memory_gib, "storage_gib": t.storage_gib, "gpus": t.gpus}
    if t.gpu_model:
        specs["gpu_model"] = t.gpu_model
    return {
        "name": t.name,
        "description": t.description,
        "gpu_description": t.gpu_description,
        "price_cents_per_hour": t.price_cents_per_hour,
        "specs": specs,
    }


@router.get("/api/v1/instances/available")
async def available(request: Request) -> JSONResponse:
    """Every instance type, with the regions whose nodes have room for one right now."""
    out = []
    for t, regions in await _offerings(request).available():
        out.append(
            {
                "id": t.name,
                "instance_type": _type_out(t),
                "regions_with_capacity_available": [
                    {"name": r.name, "description": r.description, "location": {"city": r.city, "state": r.state, "country": r.country}}
                    for r in regions
                ],
            }
        )
    return JSONResponse({"data": out})


# -- launch --------------------------------------------------------------------------------


def _extra(username: str, ssh_key: str | None, password: str | None, metadata: dict[str, str] | None, **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"cloudInit": {"userData": wire.cloud_init(username, ssh_key, password)}, "username": username}
    if ssh_key:
        extra["sshKeys"] = [ssh_key]
    if metadata:
        extra["metadata"] = dict(metadata)
    extra.update({k: v for k, v in more.items() if v is not None})
    return extra


async def _launch(rt: Runtime, who: Principal, spec: NewVm) -> tuple[str, Vm]:
    """Create the VM (refused at once when its node has no room) and return its job and row."""
    try:
        job_id, (vm_id,) = await rt.vms.create([spec], who, check_capacity=True)
    except NoCapacity as exc:
        raise BlError(409, "resource_conflict", f"Requested resources not available: {exc.message}") from None
    except InvalidRequest as exc:
        if exc.reason in (Reason.BEYOND_ANY_NODE, Reason.CANNOT_SHRINK):
            raise BlError(409, "resource_conflict", f"Requested resources not available: {exc.message}") from None
        raise
    except Conflict as exc:
        if exc.reason == Reason.NAME_TAKEN:
            raise BlError(409, "resource_conflict", exc.message) from None
        raise
    return job_id, await rt.vms.get(vm_id, who)


@router.post("/api/v1/instances/launch-instance")
async def launch_instance(body: wire.LaunchInstanceIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    off = _offerings(request)
    try:
        t = off.instance_type(body.instance_type)
        off.region_named(body.region)
    except InvalidRequest as exc:
        raise BlError(
            400, "invalid_request", f"Invalid instance type or region specified: {exc.message}",
            details={"valid_instance_types": list(off.catalog.by_name), "valid_regions": [r.name for r in off.catalog.regions]},
        ) from None  # fmt: skip
    if body.iso_url is not None:
        raise BlError(400, "invalid_request", "iso_url is not supported by this installation: launch from a template")
    template_id = await _template_id(rt, who, body.template_name)
    try:
        node_id = await off.place(t.demand(), body.region)
    except NoCapacity as exc:
        raise BlError(409, "resource_conflict", f"Requested resources not available in specified region: {exc.message}") from None
    spec = NewVm(
        name=body.name,
        resources=Resources(t.vcpus, t.memory_gib * 1024, t.storage_gib),
        template_id=template_id,
        node_id=node_id,
        pci=t.pci,
        extra=_extra(
            body.username, body.ssh_key, body.password, body.metadata,
            instanceType=t.name, priceCentsPerHour=t.price_cents_per_hour, gpuModel=t.gpu_model,
        ),  # fmt: skip
    )
    job_id, row = await _launch(rt, who, spec)
    return JSONResponse(
        {
            "data": {
                "instance_ids": [row.uuid],
                "task_id": job_id,
                "assigned_ip": row.first_ipv4,
                "status": "PENDING",
                "timestamp": clock.rfc3339(clock.now()),
                "next_steps": {
                    "description": "Your Instance creation request has been queued. Please check the task status endpoint to monitor progress.",
                    "task_status_endpoint": f"/api/v1/tasks/{job_id}",
                    "expected_states": {
                        "PENDING": "Task is queued for processing",
                        "PROCESSING": "Instance is being created",
                        "COMPLETED": "Instance creation successful - instance details will be available",
                        "FAILED": "Instance creation failed - check error message for details",
                    },
                },
            }
        }
    )


@router.post("/api/v1/instances/launch-custom")
async def launch_custom(body: wire.LaunchCustomIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Exact cores, memory (GiB), disk (GB) and GPUs on a named host."""
    off = _offerings(request)
    if body.iso_url is not None:
        raise BlError(400, "invalid_request", "iso_url is not supported by this installation: launch from a template")
    try:
        node = await off.node_of_host(body.host)
    except NotFound:
        raise BlError(400, "invalid_request", f"host {body.host!r} does not exist") from None
    pci: tuple[str, ...] = ()
    gpu_model = None
    if body.gpu_count:
        model = off.gpu_model_on(node)
        if model is None:
            raise BlError(409, "resource_conflict", f"host {body.host} has no GPUs of the instance types' models")
        pci = (model,) * body.gpu_count
        gpu_model = next((t.gpu_model for t in off.catalog.types if t.gpu_pci_model == model), None)
    template_id = await _template_id(rt, who, body.template_name)
    spec = NewVm(
        name=body.name,
        resources=Resources(body.cores, body.memory * 1024, body.disk_size),
        template_id=template_id,
        node_id=node.id,
        pci=pci,
        extra=_extra(
            body.username, body.ssh_key, body.password, body.metadata,
            instanceType=body.instance_type, priceCentsPerHour=body.price_cents_per_hour, gpuModel=gpu_model,
        ),
    )  # fmt: skip
    job_id, row = await _launch(rt, who, spec)
    return JSONResponse({"task_id": job_id, "vm_uuid": row.uuid, "status": "PENDING", "assigned_ip": row.first_ipv4})


# -- instances -----------------------------------------------------------------------------


@router.get("/api/v1/instances")
async def list_instances(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The account's instances (a team key's: its team's), newest first."""
    off = _offerings(request)
    nodes = await _nodes(off)
    rows = sorted(await rt.vms.every(who), key=lambda r: (r.created_at, r.seq), reverse=True)
    teams = await _team_names(rt, who)
    return JSONResponse([_render(off, r, nodes, teams) for r in rows])


@router.get("/api/v1/instances/{instance_id}")
async def get_instance(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    off = _offerings(request)
    return JSONResponse(_render(off, await _instance(rt, instance_id, who), await _nodes(off), await _team_names(rt, who)))


async def _wait(rt: Runtime, job_id: str) -> JobOutcome:
    return await rt.jobs.wait(job_id, rt.settings.compat_wait_seconds)


@router.delete("/api/v1/instances/{instance_id}")
async def delete_instance(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Waits (bounded) for the delete; `task_id` follows it if it is still going."""
    vm = await _instance(rt, instance_id, who)
    host = await _host(_offerings(request), vm)
    try:
        job_id = await rt.vms.delete([vm.id], who)
    except InvalidState as exc:
        raise BlError(400, "invalid_state", f"Instance is not in a state to delete: {exc.message}") from None
    outcome = await _wait(rt, job_id)
    if outcome.unsuccessful:
        error = outcome.error(outcome.state)
        raise BlError(500, "deletion_failed", f"Failed to delete VM: {error}", task_id=job_id)
    return JSONResponse({"status": "success", "message": "Instance deleted successfully", "instance_id": vm.uuid, "host": host, "task_id": job_id})


@router.post("/api/v1/instances/{instance_id}/reboot")
async def reboot(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A reboot of a running instance; waits (bounded) for it."""
    vm = await _instance(rt, instance_id, who)
    host = await _host(_offerings(request), vm)
    began = time.monotonic()
    try:
        job_id = await rt.vms.power(vm.id, "reboot", who)
    except InvalidState as exc:
        raise BlError(409, "operation_in_progress", f"Instance cannot be rebooted now: {exc.message}") from None
    outcome = await _wait(rt, job_id)
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
    action, words = POWER[path]
    vm = await _instance(rt, instance_id, who)
    try:
        job_id = await rt.vms.power(vm.id, action, who)
    except InvalidState as exc:
        raise BlError(409, "invalid_state", f"Cannot {words} the instance: {exc.message}") from None
    return JSONResponse(
        {"task_id": job_id, "status": "PENDING", "message": f"VM {words} queued", "instance_id": vm.uuid, "host": await _host(_offerings(request), vm)}
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
    """The contract's names are 3-64 letters, digits, '-' and '_'; vmplane's VM names are 1-63
    letters, digits and '-' (they name processes and files), so both rules apply."""
    vm = await _instance(rt, instance_id, who)
    if not wire.RENAME_RE.match(body.name):
        raise BlError(400, "invalid_name", "Name must be 3-64 characters, alphanumeric with hyphens/underscores only")
    try:
        row = await rt.vms.rename(vm.id, body.name, who)
    except (InvalidRequest, Conflict) as exc:
        raise BlError(400, "invalid_name", exc.message) from None
    return JSONResponse({"message": "Instance renamed successfully", "instance_id": row.uuid, "new_name": row.name})


# -- firewall ------------------------------------------------------------------------------


def _firewall_out(fw: Any) -> dict[str, Any]:
    """The core's firewall in the contract's shape (the core uses Blue Lobster's field names)."""
    wire_fw = fw.to_wire()
    return {"enabled": wire_fw["enabled"], "policy_in": wire_fw["policyIn"], "policy_out": wire_fw["policyOut"], "rules": wire_fw["rules"]}


async def _applied(rt: Runtime, job_id: str, vm: Vm, who: Principal, what: str) -> None:
    """Wait (bounded) for the job that enforces a network change on the VM's node."""
    outcome = await _wait(rt, job_id)
    if outcome.unsuccessful:
        await _instance(rt, vm.uuid, who)  # deleted meanwhile: 404, as the VM is
        error = outcome.error(outcome.state)
        raise BlError(500, "apply_failed", f"the {what} was saved but applying it on the node failed: {error}", task_id=job_id)


@router.get("/api/v1/instances/{instance_id}/firewall")
async def get_firewall(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _instance(rt, instance_id, who)
    return JSONResponse(_firewall_out(await rt.networks.firewall(vm.id, who)))


@router.put("/api/v1/instances/{instance_id}/firewall")
async def set_firewall_options(instance_id: str, body: wire.FirewallOptionsIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Enable/disable the firewall and set its default policies; enforced before the answer."""
    vm = await _instance(rt, instance_id, who)
    try:
        fw, job_id = await rt.networks.set_options(vm.id, who, body.enable, body.policy_in, body.policy_out)
    except InvalidRequest as exc:  # the contract lists no 400 here: a bad policy is a validation error
        return JSONResponse({"detail": [{"loc": ["body", exc.field or "body"], "msg": exc.message, "type": "value_error"}]}, status_code=422)
    await _applied(rt, job_id, vm, who, "firewall")
    return JSONResponse({"status": "success", "message": "Firewall options updated", "firewall": _firewall_out(fw)})


@router.post("/api/v1/instances/{instance_id}/firewall/rules")
async def add_firewall_rule(instance_id: str, body: wire.FirewallRuleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Append a rule (positions count from 0, first match decides); enforced before the answer."""
    vm = await _instance(rt, instance_id, who)
    try:
        fw, pos, job_id = await rt.networks.add_rule(vm.id, who, body.model_dump(exclude_none=True))
    except InvalidRequest as exc:
        raise BlError(400, "invalid_rule", exc.message) from None
    await _applied(rt, job_id, vm, who, "rule")
    return JSONResponse({"status": "success", "message": "Firewall rule added", "rule": fw.rules[pos].to_wire(pos)})


@router.get("/api/v1/instances/{instance_id}/firewall/rules/{pos}")
async def get_firewall_rule(instance_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _instance(rt, instance_id, who)
    fw = await rt.networks.firewall(vm.id, who)
    try:
        return JSONResponse(fw.rule_at(pos).to_wire(pos))
    except NotFound:
        raise BlError(404, "rule_not_found", f"Rule at position {pos} not found") from None


@router.delete("/api/v1/instances/{instance_id}/firewall/rules/{pos}")
async def delete_firewall_rule(instance_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Rules after it move up one position; enforced before the answer."""
    vm = await _instance(rt, instance_id, who)
    try:
        _fw, job_id = await rt.networks.delete_rule(vm.id, who, pos)
    except NotFound:
        raise BlError(404, "rule_not_found", f"Rule at position {pos} not found") from None
    await _applied(rt, job_id, vm, who, "firewall")
    return JSONResponse({"status": "success", "message": f"Firewall rule at position {pos} deleted"})


# -- IPs -----------------------------------------------------------------------------------


def _ips_out(vm: Vm, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "instance_id": vm.uuid,
        "ips": [
            {"ip_address": a["ip"], "primary": a["primary"], "network": a["network"], "mac": a["mac"], "nic": a["nic"], "created_at": a["createdAt"]}
            for a in addresses
        ],
    }


@router.get("/api/v1/instances/{instance_id}/ips")
async def list_ips(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _instance(rt, instance_id, who)
    return JSONResponse(_ips_out(vm, await rt.networks.addresses(vm.id, who)))


@router.post("/api/v1/instances/{instance_id}/ips")
async def assign_ip(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """One more address on the VM's first NIC, from its network; configured before the answer."""
    vm = await _instance(rt, instance_id, who)
    try:
        change = await rt.networks.add_ip(vm.id, None, who)
    except (Conflict, InvalidRequest) as exc:
        raise BlError(400, "invalid_request", exc.message) from None
    await _applied(rt, change.job_id, vm, who, "address")
    out = _ips_out(vm, await rt.networks.addresses(vm.id, who))
    return JSONResponse({"status": "success", "message": "IP address assigned", "ip_address": change.address, **out})


@router.delete("/api/v1/instances/{instance_id}/ips/{ip_address}")
async def release_ip(instance_id: str, ip_address: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Release an additional address (not a NIC's primary one, nor the last one)."""
    vm = await _instance(rt, instance_id, who)
    try:
        change = await rt.networks.release_ip(vm.id, ip_address, who)
    except (Conflict, InvalidRequest) as exc:
        raise BlError(400, "invalid_request", exc.message) from None
    except NotFound:
        raise BlError(404, "ip_not_found", f"IP address {ip_address} is not assigned to instance {instance_id}") from None
    await _applied(rt, change.job_id, vm, who, "address change")
    return JSONResponse({"status": "success", "message": f"IP address {change.address} released", "ip_address": change.address, "instance_id": vm.uuid})


# -- backups -------------------------------------------------------------------------------

STORAGE = "vmplane"
"""the name backups' storage goes by (the installation's backup store)"""


async def _backup(rt: Runtime, volid: str, who: Principal) -> Row[Any]:
    try:
        return await rt.backups.get(volid, who)
    except NotFound:
        raise BlError(404, "backup_not_found", f"Backup {volid} not found") from None


@router.post("/api/v1/instances/{instance_id}/backup")
async def create_backup(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A live backup of the whole disk; follow it with `task_id`."""
    vm = await _instance(rt, instance_id, who)
    try:
        job_id, backup_id = await rt.backups.create(vm.id, "", who)
    except Conflict as exc:  # InvalidState too: no disk yet, a backup or restore under way, no backup support
        raise BlError(409, "task_in_progress" if exc.reason == Reason.IN_PROGRESS else "backup_unavailable", f"Cannot start backup: {exc.message}") from None
    return JSONResponse({"message": "Backup started", "task_id": job_id, "instance_id": vm.uuid, "volid": backup_id})


@router.get("/api/v1/instances/{instance_id}/backups")
async def instance_backups(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The instance's finished backups, newest first, and whether a backup or restore runs."""
    vm = await _instance(rt, instance_id, who)
    busy = await rt.backups.in_progress(vm.id)
    rows = [b for b in await rt.backups.list(who, vm.id) if b.status == "succeeded"]
    return JSONResponse(
        {
            "instance_id": vm.uuid,
            "storage": STORAGE,
            "backups": [wire.backup(b, vm.uuid) for b in rows],
            "total": len(rows),
            "backup_in_progress": "backup-create" in busy,
            "restore_in_progress": "vm-restore" in busy,
        }
    )


async def _restore(rt: Runtime, volid: str, target: Vm, who: Principal) -> str:
    await _backup(rt, volid, who)
    try:
        return await rt.backups.restore(volid, target.id, who)
    except InvalidState as exc:  # the backup is not (or no longer) usable
        raise BlError(400, "invalid_backup", exc.message) from None
    except Conflict as exc:
        raise BlError(409, "task_in_progress", f"Cannot start restore: {exc.message}") from None


@router.post("/api/v1/instances/{instance_id}/restore")
async def restore_instance(instance_id: str, rt: RuntimeDep, who: CallerDep, body: dict[str, Any] | None = Body(None)) -> JSONResponse:
    """Stop the instance, replace its disk with the backup `backup_volid`, start it again."""
    vm = await _instance(rt, instance_id, who)
    volid = (body or {}).get("backup_volid")
    if not isinstance(volid, str) or not volid:
        raise BlError(400, "missing_backup_volid", "backup_volid is required")
    try:
        job_id = await _restore(rt, volid, vm, who)
    except InvalidRequest as exc:  # the disk is smaller than the backup
        raise BlError(400, "invalid_request", exc.message) from None
    return JSONResponse({"message": "Restore started", "task_id": job_id, "instance_id": vm.uuid, "backup_volid": volid})


@router.get("/api/v1/backups")
async def all_backups(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Every backup of the account (a team key's: its team's), including deleted VMs'."""
    uuids = {v.id: v.uuid for v in await rt.vms.every(who)}
    rows = await rt.backups.list(who)
    out = [{**wire.backup(b, uuids.get(b.vm_id)), "vm_deleted": b.vm_id not in uuids} for b in rows]
    return JSONResponse({"backups": out, "total": len(out), "storage": STORAGE})


@router.delete("/api/v1/backups")
async def delete_backup(rt: RuntimeDep, who: CallerDep, volid: str = Query(...)) -> JSONResponse:
    await _backup(rt, volid, who)
    try:
        job_id = await rt.backups.delete(volid, who)
    except Conflict as exc:
        raise BlError(409, "task_in_progress", exc.message) from None
    return JSONResponse({"status": "success", "message": "Backup deletion started", "task_id": job_id, "volid": volid})


@router.post("/api/v1/backups/restore")
async def restore_to_vm(
    rt: RuntimeDep,
    who: CallerDep,
    volid: str = Query(...),
    target_vm_uuid: str = Query(...),
    new_name: str | None = None,
    add_restore_prefix: bool = False,
    backup_source_name: str | None = None,
) -> JSONResponse:
    """Restore a backup into any VM whose disk is large enough, optionally renaming it
    (`new_name`, and/or the prefix `RESTORE-<yyyymmdd>-`)."""
    bkp = await _backup(rt, volid, who)
    target = await _instance(rt, target_vm_uuid, who)
    name = None
    if new_name is not None or add_restore_prefix:
        base = new_name or backup_source_name or bkp.vm_name
        name = f"RESTORE-{clock.rfc3339(clock.now())[:10].replace('-', '')}-{base}" if add_restore_prefix else base
    try:
        job_id = await rt.backups.restore_as(bkp.id, target.id, who, name)
    except (InvalidRequest, Conflict) as exc:  # the contract lists 400 here, never 409
        if exc.details.get("field") == "name":
            raise BlError(400, "invalid_name", exc.message) from None
        if isinstance(exc, InvalidState):  # the backup is not (or no longer) usable
            raise BlError(400, "invalid_backup", exc.message) from None
        if isinstance(exc, Conflict):
            raise BlError(400, "task_in_progress", f"Cannot start restore: {exc.message}") from None
        raise BlError(400, "invalid_request", exc.message) from None
    return JSONResponse({"message": "Restore started", "task_id": job_id, "volid": volid, "target_vm_uuid": target.uuid, "new_name": name})


@router.get("/api/v1/backups/storage")
async def backup_storage(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Bytes backed up (logical) and stored (what each backup added), per VM and in all."""
    s = await rt.backups.storage(who)
    return JSONResponse(
        {
            "storage": STORAGE,
            "total_bytes": s["logicalBytes"],
            "total_human": wire.human_bytes(s["logicalBytes"]),
            "stored_bytes": s["storedBytes"],
            "stored_human": wire.human_bytes(s["storedBytes"]),
            "vms": [
                {"vm_id": i["vmId"], "vm_name": i["vmName"], "backups": i["backups"], "size_bytes": i["logicalBytes"], "stored_bytes": i["storedBytes"]}
                for i in s["items"]
            ],
        }
    )


@router.put("/api/v1/backups/notes")
async def backup_notes(body: wire.BackupNotesIn, rt: RuntimeDep, who: CallerDep, volid: str = Query(...)) -> JSONResponse:
    await _backup(rt, volid, who)
    row = await rt.backups.set_notes(volid, body.notes, who)
    return JSONResponse({"status": "success", "message": "Backup notes updated", "volid": row.id, "notes": row.notes})


def _schedule_out(vm: Vm, s: BackupSchedule) -> dict[str, Any]:
    return {
        "vm_uuid": vm.uuid,
        "schedule_id": s.id,
        "frequency": s.frequency,
        "hour_utc": s.hour,
        "day_of_week": s.day_of_week,
        "day_of_month": s.day_of_month,
        "keep_last": s.keep_last,
        "enabled": s.enabled,
        "next_run": clock.rfc3339(s.next_run),
        "last_run": clock.rfc3339(s.last_run),
    }


async def _schedule(rt: Runtime, vm: Vm, who: Principal) -> BackupSchedule:
    try:
        return await rt.schedules.backup_schedule(vm.id, who)
    except NotFound:
        raise BlError(404, "schedule_not_found", f"Instance {vm.uuid} has no backup schedule") from None


@router.get("/api/v1/instances/{vm_uuid}/backup-schedule")
async def get_backup_schedule(vm_uuid: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _instance(rt, vm_uuid, who)
    return JSONResponse(_schedule_out(vm, await _schedule(rt, vm, who)))


@router.post("/api/v1/instances/{vm_uuid}/backup-schedule")
async def put_backup_schedule(vm_uuid: str, body: wire.BackupScheduleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """daily, weekly (day_of_week 0 = Sunday … 6) or monthly (day_of_month 1-28) at hour_utc;
    the service's default number of backups (seven) is kept after each run (the contract's
    schedules have no retention field). Replaces the VM's schedule."""
    vm = await _instance(rt, vm_uuid, who)
    checks = (
        (body.frequency in ("daily", "weekly", "monthly"), "frequency must be daily, weekly or monthly"),
        (0 <= body.hour_utc <= 23, "hour_utc must be from 0 to 23"),
        (body.day_of_week is None or 0 <= body.day_of_week <= 6, "day_of_week must be from 0 (Sunday) to 6"),
        (body.day_of_month is None or 1 <= body.day_of_month <= 28, "day_of_month must be from 1 to 28"),
    )
    for ok, message in checks:
        if not ok:
            raise BlError(400, "invalid_schedule", message)
    try:
        s = await rt.schedules.put_backup_schedule(
            vm.id, who, frequency=body.frequency, hour=body.hour_utc, day_of_week=body.day_of_week, day_of_month=body.day_of_month
        )
    except (InvalidRequest, Conflict) as exc:
        raise BlError(400, "invalid_schedule", exc.message) from None
    return JSONResponse({"status": "success", "message": "Backup schedule saved", "schedule": _schedule_out(vm, s)})


@router.delete("/api/v1/instances/{vm_uuid}/backup-schedule")
async def delete_backup_schedule(vm_uuid: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await _instance(rt, vm_uuid, who)
    await _schedule(rt, vm, who)
    await rt.schedules.delete_backup_schedule(vm.id, who)
    return JSONResponse({"status": "success", "message": "Backup schedule deleted", "vm_uuid": vm.uuid})


# -- stats and console ---------------------------------------------------------------------

CONSOLE_TICKET_SECONDS = 30


@router.get("/api/v1/instances/{instance_id}/stats")
async def instance_stats(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Measured by the VM's node now; zeros while the instance does not run. Disk and network
    figures are totals since the VM started (the contract's note), under its field names."""
    vm = await _instance(rt, instance_id, who)
    total = vm.ram_mb * 1024 * 1024
    out: dict[str, Any] = {
        "instance_id": vm.uuid,
        "status": wire.POWER_STATUS.get(vm.status, "unknown"),
        "cpu": {"usage_percent": 0.0, "cores": vm.cpu},
        "memory": {"used_bytes": 0, "total_bytes": total, "usage_percent": 0.0},
        "disk": {"read_bytes_sec": 0, "write_bytes_sec": 0},
        "network": {"in_bytes_sec": 0, "out_bytes_sec": 0},
        "uptime_seconds": 0,
    }
    if vm.status != "running":
        return JSONResponse(out)
    try:
        _vm, s = await rt.guest.stats(vm.id, who)
    except InvalidState:  # it stopped meanwhile
        return JSONResponse({**out, "status": "stopped"})
    total = s.memory_total_mb * 1024 * 1024 or total
    used = s.memory_mb * 1024 * 1024
    out.update(
        {
            # the core's figure is % of one core; the contract's is of the instance's cores
            "cpu": {"usage_percent": round(s.cpu_percent / max(vm.cpu, 1), 1), "cores": vm.cpu},
            "memory": {"used_bytes": used, "total_bytes": total, "usage_percent": round(100 * used / total, 1) if total else 0.0},
            "disk": {"read_bytes_sec": s.disk_read_bytes, "write_bytes_sec": s.disk_write_bytes},
            "network": {"in_bytes_sec": s.net_rx_bytes, "out_bytes_sec": s.net_tx_bytes},
            "uptime_seconds": round(s.uptime_seconds),
        }
    )
    return JSONResponse(out)


@router.post("/api/v1/instances/{instance_id}/console")
async def console_ticket(instance_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """A one-time ticket (30 s) for the serial console: open a WebSocket to `websocket_path`
    with `?ticket=TICKET` on this host and port."""
    vm = await _instance(rt, instance_id, who)
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
        await websocket.send_denial_response(JSONResponse({"error": code, "message": exc.message}, status_code=status))
        return
    with slot:
        await websocket.accept()
        await bridge(websocket, reader, writer)


# -- billing log ---------------------------------------------------------------------------


def _ts(value: datetime) -> float:
    """A datetime from the request as epoch seconds (naive ones are UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@router.post("/api/v1/instances/log")
async def instance_log(body: wire.InstanceLogIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The account's instances billed between start_time and end_time (at most 90 days), with
    hours and cents from vmplane's usage metering, newest first."""
    start, end = _ts(body.start_time), _ts(body.end_time)
    try:
        report = await rt.billing.report(who, start, end)
    except InvalidRequest as exc:  # the contract lists 422 only: a bad range is a validation error
        if exc.reason == Reason.OVER_LIMIT:
            field, msg = "end_time", exc.message
        else:  # the period ends before it starts
            field, msg = "start_time", "end_time must be after start_time"
        return JSONResponse({"detail": [{"loc": ["body", field], "msg": msg, "type": "value_error"}]}, status_code=422)
    off = _offerings(request)
    nodes = await _nodes(off)
    vms = {v.id: v for v in await rt.vms.every(who)}
    records = []
    for item in report["items"]:
        vm = vms.get(item["vmId"])
        spans = item["spans"]
        last = spans[-1]
        first_billed, last_billed = min(sp["from"] for sp in spans), max(sp["to"] for sp in spans)
        node = nodes.get(vm.node_id) if vm is not None and vm.node_id else None
        status = "deleted" if vm is None else ("creating" if vm.status == "provisioning" else "rented")
        deleted_at = last_billed if vm is None and last_billed < report["end"] else None
        spec = vm.spec if vm is not None else StoredSpec()
        ip = vm.first_ipv4 if vm is not None else None
        records.append(
            {
                "uuid": vm.uuid if vm is not None else item["vmId"],
                "name": item["name"],
                "host_id": off.host_of(node),
                "vmid": item["vmId"],
                "status": status,
                "ip_address": ip,
                "cpu_cores": last["cpu"],
                "memory_gb": last["ramMb"] // 1024,
                "disk_gb": vm.disk_gb if vm is not None else None,
                "gpu_count": len(spec.pci_passthrough),
                "instance_type": last["instanceType"],
                "template_name": (spec.source_name or "").upper() or None,
                "price_cents_per_hour": last["centsPerHour"],
                "created_at": clock.rfc3339(vm.created_at) if vm is not None else first_billed,
                "updated_at": clock.rfc3339(vm.updated_at) if vm is not None else last_billed,
                "deleted_at": deleted_at,
                "total_billed_cents": item["costCents"],
                "total_hours_billed": item["hours"],
                "first_billed_at": first_billed,
                "last_billed_at": last_billed,
            }
        )
    records.sort(key=lambda r: r["created_at"], reverse=True)
    return JSONResponse({"total_records": len(records), "time_range": {"start": report["start"], "end": report["end"]}, "instances": records})


# -- teams ---------------------------------------------------------------------------------


async def _team(rt: Runtime, team_id: str, who: Principal) -> Row[Any]:
    try:
        return await rt.tenancy.team(who, team_id)
    except NotFound:
        raise BlError(404, "team_not_found", f"Team {team_id} not found") from None


@router.put("/api/v1/instances/{instance_id}/team")
async def assign_team(instance_id: str, body: wire.TeamAssignIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Owners and admins put an instance in a team (team-scoped keys then see it)."""
    vm = await _instance(rt, instance_id, who)
    team = await _team(rt, body.team_id, who)
    vm, _ = await rt.tenancy.set_vm_team(who, vm.id, body.team_id)
    return JSONResponse(
        {"status": "success", "message": "Instance assigned to team", "instance_id": vm.uuid, "team_id": team.id, "team_name": team.name}
    )


@router.delete("/api/v1/instances/{instance_id}/team")
async def remove_team(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Owners and admins take an instance out of its team."""
    vm = await _instance(rt, instance_id, who)
    vm, _ = await rt.tenancy.set_vm_team(who, vm.id, None)
    return JSONResponse({"status": "success", "message": "Instance removed from team", "instance_id": vm.uuid, "team_id": None})


@router.get("/api/v1/teams/{team_id}/instances")
async def team_instances(team_id: str, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """The instances of a team of the account (a team-scoped key: only its own team)."""
    team = await _team(rt, team_id, who)
    off = _offerings(request)
    nodes = await _nodes(off)
    rows = sorted((r for r in await rt.vms.every(who) if r.team_id == team.id), key=lambda r: (r.created_at, r.seq), reverse=True)
    out = [{**_render(off, r, nodes), "team_name": team.name} for r in rows]
    return JSONResponse({"team_id": team.id, "team_name": team.name, "instances": out, "total": len(out)})
