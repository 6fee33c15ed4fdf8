"""Blue Lobster launches: an instance type in a region (placed by the face's offerings), or
exact resources on a named host. Both answer at once with a task id (a vmplane job id) that
`GET /api/v1/tasks/{task_id}` follows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .... import clock
from ....auth import Principal
from ....domain import NewVm, Resources, Vm
from ....domain.names import derive_name
from ....errors import Conflict, InvalidRequest, NoCapacity, NotFound, Reason
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import offerings_of, template_id_named
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


def _extra(username: str, ssh_keys: list[str], password: str | None, metadata: dict[str, str] | None, **more: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"cloudInit": {"userData": wire.cloud_init(username, ssh_keys, password)}, "username": username}
    if ssh_keys:
        extra["sshKeys"] = list(ssh_keys)
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


async def _source(rt: Runtime, who: Principal, template_name: str | None, iso_url: str | None) -> tuple[str | None, str | None]:
    """(template id, ISO id) a launch boots: a template, or with `iso_url` a blank disk and the
    ISO in its CD-ROM, imported through the core's ISO library (the outbound policy; the VM's
    create waits for the download). Both named: 400."""
    if iso_url is None:
        return await template_id_named(rt, who, template_name), None
    if template_name is not None:
        raise BlError(400, "invalid_request", "give template_name or iso_url, not both")
    try:
        return None, await rt.isos.from_url(iso_url, who, "iso_url")
    except InvalidRequest as exc:
        raise BlError(400, "invalid_request", exc.message) from None


def _queued(job_id: str) -> dict[str, Any]:
    """What both launches answer beside their ids: when, and how to follow the task."""
    return {
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


@router.post("/api/v1/instances/launch-instance")
async def launch_instance(body: wire.LaunchInstanceIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    off = offerings_of(request)
    type_name, ssh_keys = wire.launch_reading(body)
    try:
        t = off.instance_type(type_name)
        off.region_named(body.region)
    except InvalidRequest as exc:
        raise BlError(
            400, "invalid_request", f"Invalid instance type or region specified: {exc.message}",
            details={"valid_instance_types": list(off.catalog.by_name), "valid_regions": [r.name for r in off.catalog.regions]},
        ) from None  # fmt: skip
    template_id, iso_id = await _source(rt, who, body.template_name, body.iso_url)
    try:
        node_id = await off.place(t.demand(), body.region)
    except NoCapacity as exc:
        raise BlError(409, "resource_conflict", f"Requested resources not available in specified region: {exc.message}") from None
    spec = NewVm(
        name=derive_name(body.name) if body.name else None,  # names are unique per account: no suffix
        display_name=body.name,
        resources=Resources(t.vcpus, t.memory_gib * 1024, t.storage_gib),
        template_id=template_id,
        cdrom=iso_id,
        node_id=node_id,
        pci=t.pci,
        extra=_extra(
            body.username, ssh_keys, body.password, body.metadata,
            instanceType=t.name, priceCentsPerHour=t.price_cents_per_hour, gpuModel=t.gpu_model,
        ),  # fmt: skip
    )
    job_id, row = await _launch(rt, who, spec)
    return JSONResponse({"data": {"instance_ids": [row.uuid], "task_id": job_id, "assigned_ip": row.first_ipv4, **_queued(job_id)}})


@router.post("/api/v1/instances/launch-custom")
async def launch_custom(body: wire.LaunchCustomIn, request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Exact cores, memory (GiB), disk (GB) and GPUs on a named host."""
    off = offerings_of(request)
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
    template_id, iso_id = await _source(rt, who, body.template_name, body.iso_url)
    spec = NewVm(
        name=derive_name(body.name),  # names are unique per account: no suffix
        display_name=body.name,
        resources=Resources(body.cores, body.memory * 1024, body.disk_size),
        template_id=template_id,
        cdrom=iso_id,
        node_id=node.id,
        pci=pci,
        extra=_extra(
            body.username, [body.ssh_key] if body.ssh_key else [], body.password, body.metadata,
            instanceType=body.instance_type, priceCentsPerHour=body.price_cents_per_hour, gpuModel=gpu_model,
        ),
    )  # fmt: skip
    job_id, row = await _launch(rt, who, spec)
    return JSONResponse({"task_id": job_id, "vm_uuid": row.uuid, "assigned_ip": row.first_ipv4, **_queued(job_id)})
