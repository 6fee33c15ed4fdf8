"""A Blue Lobster instance's firewall: its options and its rules by position. Each change is
enforced on the VM's node before the answer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ....errors import InvalidRequest, NotFound
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import applied, find_instance
from .wire import BlError

router = APIRouter(dependencies=[Depends(authorize)])


def _firewall_out(fw: Any) -> dict[str, Any]:
    """The core's firewall in the contract's shape (the core uses Blue Lobster's field names)."""
    wire_fw = fw.to_wire()
    return {"enabled": wire_fw["enabled"], "policy_in": wire_fw["policyIn"], "policy_out": wire_fw["policyOut"], "rules": wire_fw["rules"]}


@router.get("/api/v1/instances/{instance_id}/firewall")
async def get_firewall(instance_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await find_instance(rt, instance_id, who)
    return JSONResponse(_firewall_out(await rt.networks.firewall(vm.id, who)))


@router.put("/api/v1/instances/{instance_id}/firewall")
async def set_firewall_options(instance_id: str, body: wire.FirewallOptionsIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Enable/disable the firewall and set its default policies; enforced before the answer."""
    vm = await find_instance(rt, instance_id, who)
    try:
        fw, job_id = await rt.networks.set_options(vm.id, who, body.enable, body.policy_in, body.policy_out)
    except InvalidRequest as exc:  # the contract lists no 400 here: a bad policy is a validation error
        return JSONResponse({"detail": [{"loc": ["body", exc.field or "body"], "msg": exc.message, "type": "value_error"}]}, status_code=422)
    await applied(rt, job_id, vm, who, "firewall")
    return JSONResponse({"status": "success", "message": "Firewall options updated", "firewall": _firewall_out(fw)})


@router.post("/api/v1/instances/{instance_id}/firewall/rules")
async def add_firewall_rule(instance_id: str, body: wire.FirewallRuleIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Append a rule (positions count from 0, first match decides); enforced before the answer."""
    vm = await find_instance(rt, instance_id, who)
    try:
        fw, pos, job_id = await rt.networks.add_rule(vm.id, who, body.model_dump(exclude_none=True))
    except InvalidRequest as exc:
        raise BlError(400, "invalid_rule", exc.message) from None
    await applied(rt, job_id, vm, who, "rule")
    return JSONResponse({"status": "success", "message": "Firewall rule added", "rule": fw.rules[pos].to_wire(pos)})


@router.get("/api/v1/instances/{instance_id}/firewall/rules/{pos}")
async def get_firewall_rule(instance_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    vm = await find_instance(rt, instance_id, who)
    fw = await rt.networks.firewall(vm.id, who)
    try:
        return JSONResponse(fw.rule_at(pos).to_wire(pos))
    except NotFound:
        raise BlError(404, "rule_not_found", f"Rule at position {pos} not found") from None


@router.delete("/api/v1/instances/{instance_id}/firewall/rules/{pos}")
async def delete_firewall_rule(instance_id: str, pos: int, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Rules after it move up one position; enforced before the answer."""
    vm = await find_instance(rt, instance_id, who)
    try:
        _fw, job_id = await rt.networks.delete_rule(vm.id, who, pos)
    except NotFound:
        raise BlError(404, "rule_not_found", f"Rule at position {pos} not found") from None
    await applied(rt, job_id, vm, who, "firewall")
    return JSONResponse({"status": "success", "message": f"Firewall rule at position {pos} deleted"})
