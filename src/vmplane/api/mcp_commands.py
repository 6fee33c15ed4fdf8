"""Volant's MCP command set, a face of its own: the core's operations for AI agents as
commands (`{command, params}` → `{result, error?}`, POST /api/v1/mcp on the native API and
the Volant face) and as Model Context Protocol tools (api/mcp.py: streamable HTTP at /mcp;
`vmplane mcp` over stdio). Each operation has a JSON schema for its params.

It translates only, as a face does: params checked against their schema, the services called
as the Volant face calls them, results rendered in Volant's shapes (a VM summary is `{id,
name, status, ip_address, cpu_cores, memory_mb}`, `id` being the VM's integer sequence number
as on the Volant face; status words and deployments: api/volant_shapes.py). It imports no
face, since two faces serve it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
from fastapi import Request
from sqlalchemy import Row

from ..auth import Principal
from ..domain import Vm
from ..errors import Forbidden, InvalidRequest, VmplaneError
from .middleware import json_body
from .volant_shapes import VM_STATUS, about_vm, deployment

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("vmplane.mcp")

NAME = {"type": "string", "minLength": 1, "maxLength": 63, "description": "the VM's name"}
Handler = Callable[["Runtime", Principal, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    command: str
    """Volant's command name (`volant.vms.list`)"""
    description: str
    params: dict[str, Any]
    """JSON schema of the params object"""
    run: Handler
    writes: bool = False

    @property
    def tool(self) -> str:
        """The MCP tool's name: the command without `volant.`, dots as underscores."""
        return self.command.removeprefix("volant.").replace(".", "_")


def _schema(properties: dict[str, Any] | None = None, required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties or {}, "required": list(required), "additionalProperties": False}


# -- Volant shapes --------------------------------------------------------------------------


def vm_summary(row: Vm) -> dict[str, Any]:
    return {
        "id": row.vmid,
        "name": row.name,
        "status": VM_STATUS.get(row.status, "crashed"),
        "ip_address": row.primary_ip or "",
        "cpu_cores": row.cpu,
        "memory_mb": row.ram_mb,
        "runtime": row.spec.runtime,
    }


async def _finish(rt: Runtime, job_id: str, what: str) -> None:
    await rt.jobs.finish(job_id, rt.settings.compat_wait_seconds, what)


# -- operations -----------------------------------------------------------------------------


async def vms_list(rt: Runtime, who: Principal, p: dict[str, Any]) -> list[dict[str, Any]]:
    out = [vm_summary(r) for r in await rt.vms.every(who)]
    if p.get("status"):
        out = [v for v in out if v["status"] == p["status"]]
    if p.get("runtime"):
        out = [v for v in out if v["runtime"] == p["runtime"]]
    return out


async def vms_get(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    return vm_summary(await rt.vms.by_name(p["name"], who))


async def vms_create(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    """As the Volant face's create: the VM's config from the params, then wait for it."""
    config: dict[str, Any] = dict(p.get("config") or {})
    resources = {k: p[k] for k in ("cpu_cores", "memory_mb") if p.get(k) is not None}
    if resources:
        config["resources"] = {**(config.get("resources") or {}), **resources}
    for key in ("runtime", "plugin", "kernel_cmdline"):
        if p.get(key):
            config[key] = p[key]
    return vm_summary(await rt.vm_configs.create(p["name"], config, who, rt.settings.compat_wait_seconds, "params.config"))


def _power(action: str) -> Handler:
    async def run(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
        vm = await rt.vms.by_name(p["name"], who)
        with about_vm(vm, action):
            await _finish(rt, await rt.vms.power(vm.id, action, who), f"{action} of VM {vm.name}")
        return vm_summary(await rt.vms.get(vm.id, who))

    return run


async def vms_delete(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    vm = await rt.vms.by_name(p["name"], who)
    if vm.status != "deleting":
        with about_vm(vm, "delete"):
            await _finish(rt, await rt.vms.delete([vm.id], who), f"deleting VM {vm.name}")
    return {"name": vm.name, "deleted": True}


async def vms_action(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    vm = await rt.vms.by_name(p["name"], who)
    body = p.get("body")
    out = await rt.plugins.call_action(vm.id, p["action"], who, body=body.encode() if body else b"", content_type="application/json" if body else None)
    return {"status": out.status, "content_type": out.content_type, "body": out.body.decode("utf-8", "replace")}


async def plugins_list(rt: Runtime, who: Principal, p: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": r.name, "runtime": r.runtime, "version": r.version, "enabled": r.enabled, "actions": sorted(r.manifest.get("actions") or {})} for r in await rt.plugins.list(who)]


async def _deployment_out(rt: Runtime, row: Row[Any]) -> dict[str, Any]:
    return deployment(row, await rt.deployments.ready_count(row))


async def deployments_list(rt: Runtime, who: Principal, p: dict[str, Any]) -> list[dict[str, Any]]:
    return [await _deployment_out(rt, d) for d in await rt.deployments.list(who)]


async def deployments_get(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    return await _deployment_out(rt, await rt.deployments.get(p["name"], who))


async def deployments_create(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    return await _deployment_out(rt, await rt.deployments.create(p["name"], p.get("replicas", 1), p.get("config"), who))


async def deployments_scale(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    return await _deployment_out(rt, await rt.deployments.update(p["name"], who, replicas=p["replicas"]))


async def deployments_delete(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    await rt.deployments.delete(p["name"], who)
    return {"name": p["name"], "deleted": True}


async def get_capabilities(rt: Runtime, who: Principal, p: dict[str, Any]) -> dict[str, Any]:
    return {"capabilities": [{"name": op.command, "description": op.description, "params": op.params} for op in OPERATIONS]}


DEPLOYMENT = {"type": "string", "minLength": 1, "maxLength": 48, "description": "the deployment's name"}
REPLICAS = {"type": "integer", "minimum": 0, "maximum": 100}

OPERATIONS: tuple[Operation, ...] = (
    Operation("volant.vms.list", "List VMs: name, status, IP address, vCPUs, memory.",
              _schema({"status": {"type": "string", "enum": ["pending", "starting", "running", "stopping", "stopped", "crashed"]},
                       "runtime": {"type": "string", "maxLength": 63}}), vms_list),
    Operation("volant.vms.get", "Get one VM by name.", _schema({"name": NAME}, ("name",)), vms_get),
    Operation("volant.vms.create",
              "Create a VM and start it; `runtime` (or `plugin`) names an installed, enabled plugin whose resources, image and cloud-init it takes.",
              _schema({"name": NAME, "runtime": {"type": "string", "maxLength": 63}, "plugin": {"type": "string", "maxLength": 63},
                       "cpu_cores": {"type": "integer", "minimum": 1, "maximum": 512},
                       "memory_mb": {"type": "integer", "minimum": 64, "maximum": 4194304},
                       "kernel_cmdline": {"type": "string", "maxLength": 4096},
                       "config": {"type": "object", "description": "a full VM config (Volant's Config)"}}, ("name",)),
              vms_create, writes=True),
    Operation("volant.vms.start", "Start a stopped VM.", _schema({"name": NAME}, ("name",)), _power("start"), writes=True),
    Operation("volant.vms.stop", "Stop (power off) a VM.", _schema({"name": NAME}, ("name",)), _power("stop"), writes=True),
    Operation("volant.vms.delete", "Delete a VM and its disk.", _schema({"name": NAME}, ("name",)), vms_delete, writes=True),
    Operation("volant.vms.action", "Call an action of the plugin a VM was made from (proxied to the workload in the guest).",
              _schema({"name": NAME, "action": {"type": "string", "minLength": 1, "maxLength": 63},
                       "body": {"type": "string", "maxLength": 1048576, "description": "JSON text sent as the request body"}}, ("name", "action")),
              vms_action, writes=True),
    Operation("volant.plugins.list", "List installed plugins (runtimes) and their actions.", _schema(), plugins_list),
    Operation("volant.deployments.list", "List deployments with desired and ready replicas.", _schema(), deployments_list),
    Operation("volant.deployments.get", "Get one deployment.", _schema({"name": DEPLOYMENT}, ("name",)), deployments_get),
    Operation("volant.deployments.create", "Create a deployment: `replicas` VMs <name>-1.. from one config, kept running.",
              _schema({"name": DEPLOYMENT, "replicas": REPLICAS, "config": {"type": "object"}}, ("name",)), deployments_create, writes=True),
    Operation("volant.deployments.scale", "Change a deployment's number of replicas.",
              _schema({"name": DEPLOYMENT, "replicas": REPLICAS}, ("name", "replicas")), deployments_scale, writes=True),
    Operation("volant.deployments.delete", "Delete a deployment and its replicas.", _schema({"name": DEPLOYMENT}, ("name",)), deployments_delete, writes=True),
    Operation("volant.system.get_capabilities", "The commands this endpoint understands, with their params.", _schema(), get_capabilities),
)  # fmt: skip
BY_COMMAND = {op.command: op for op in OPERATIONS}
BY_TOOL = {op.tool: op for op in OPERATIONS}


def _check_params(op: Operation, params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest("params must be an object", field="params")
    error = next(iter(sorted(jsonschema.Draft7Validator(op.params).iter_errors(params), key=lambda e: len(e.path))), None)
    if error is not None:
        where = ".".join(["params", *map(str, error.absolute_path)])
        if error.validator == "required":
            where += "." + error.message.split("'")[1]
            raise InvalidRequest(f"{where} is required", field=where)
        raise InvalidRequest(f"{where}: {error.message}", field=where)
    return params


async def command_body(request: Request) -> dict[str, Any]:
    """The body of a `{command, params}` request (400 when it is not a JSON object)."""
    body = await json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be an object {command, params}", field="body")
    return body


async def run(rt: Runtime, op: Operation, params: Any, who: Principal) -> Any:
    """Run one operation (VmplaneError on a bad param or a failure)."""
    params = _check_params(op, params)
    if op.writes and not who.can_write:
        raise Forbidden(f"your role ({who.role}{', read-only key' if who.read_only else ''}) cannot change anything")
    return await op.run(rt, who, params)


async def command(rt: Runtime, command: Any, params: Any, who: Principal) -> dict[str, Any]:
    """Volant's `{command, params}` → `{result}` or `{result: null, error}` (never raises)."""
    op = BY_COMMAND.get(command) if isinstance(command, str) else None
    if op is None:
        return {"result": None, "error": f"unknown command: {command}"}
    try:
        return {"result": await run(rt, op, params, who)}
    except VmplaneError as exc:
        return {"result": None, "error": exc.message}
    except Exception as exc:  # an agent gets a sentence, the log the trace
        log.exception("MCP command %s failed", command)
        return {"result": None, "error": f"internal error: {type(exc).__name__}"}
