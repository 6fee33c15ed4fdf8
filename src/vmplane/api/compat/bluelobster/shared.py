"""What the Blue Lobster routers share: the face's offerings, an instance looked up in the
contract's 404, instances rendered with their node's region and host, a bounded wait for a job,
and a template found by the name the contract gives it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request
from sqlalchemy import Row

from ....auth import Principal
from ....domain import Template, Vm
from ....errors import NotFound
from ....services.jobs import JobOutcome
from ....services.offerings import Offerings
from . import wire
from .wire import BlError

if TYPE_CHECKING:
    from ....runtime import Runtime


def offerings_of(request: Request) -> Offerings:
    """The face's instance types, regions and hosts."""
    offerings: Offerings = request.app.state.offerings  # the face's build_face puts them there
    return offerings


async def find_instance(rt: Runtime, instance_id: str, who: Principal) -> Vm:
    """A VM the caller may see; the contract's 404 when there is none."""
    try:
        return await rt.vms.get(instance_id, who)
    except NotFound:
        raise BlError(404, "instance_not_found", f"Instance {instance_id} not found") from None


async def nodes_by_id(off: Offerings) -> dict[str, Row[Any]]:
    return {n.id: n for n in await off.nodes()}


def _price(off: Offerings, row: Vm) -> int | None:
    if row.spec.price_cents_per_hour is not None:
        return row.spec.price_cents_per_hour
    t = off.catalog.by_name.get(row.spec.instance_type or "")
    return t.price_cents_per_hour if t is not None else None


def render(off: Offerings, row: Vm, nodes: dict[str, Row[Any]], teams: dict[str, str] | None = None) -> dict[str, Any]:
    node = nodes.get(row.node_id) if row.node_id else None
    out = wire.instance(row, node, off.region_of(node), off.host_of(node), _price(off, row))
    if teams and row.team_id:
        out["team_name"] = teams.get(row.team_id)
    return out


async def team_names(rt: Runtime, who: Principal) -> dict[str, str]:
    return {t.id: t.name for t in await rt.tenancy.teams(who)}


async def vm_host(off: Offerings, row: Vm) -> str | None:
    return off.host_of((await nodes_by_id(off)).get(row.node_id)) if row.node_id else None


async def wait(rt: Runtime, job_id: str) -> JobOutcome:
    """The job's outcome, waiting at most `compat_wait_seconds` for it."""
    return await rt.jobs.wait(job_id, rt.settings.compat_wait_seconds)


async def applied(rt: Runtime, job_id: str, vm: Vm, who: Principal, what: str) -> None:
    """Wait (bounded) for the job that enforces a network change on the VM's node."""
    outcome = await wait(rt, job_id)
    if outcome.unsuccessful:
        await find_instance(rt, vm.uuid, who)  # deleted meanwhile: 404, as the VM is
        error = outcome.error(outcome.state)
        raise BlError(500, "apply_failed", f"the {what} was saved but applying it on the node failed: {error}", task_id=job_id)


async def every_template(rt: Runtime, who: Principal) -> list[Template]:
    rows: list[Template] = []
    token = None
    while True:
        page, token = await rt.templates.list(who, limit=500, page_token=token)
        rows += page
        if token is None:
            return rows


async def template_id_named(rt: Runtime, who: Principal, name: str | None) -> str | None:
    if name is None:
        return await rt.templates.default_id(who)
    # the organization's own template of that name first, then a shared one (names are per organization)
    for t in sorted(await every_template(rt, who), key=lambda t: t.org_id is None):
        if wire.template_name(t) == name and t.status == "ready":
            return t.id
    raise BlError(400, "invalid_request", f"template {name!r} does not exist or is not ready; see GET /api/v1/instances/templates")
