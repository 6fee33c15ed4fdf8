"""The native API (`/api/v1`), one router per resource."""

from fastapi import APIRouter, Depends

from ..deps import authorize
from . import (
    agents,
    backups,
    cluster,
    deployments,
    events,
    guest,
    imports,
    isos,
    jobs,
    mcp,
    networks,
    plugins,
    schedules,
    snapshots,
    stats_history,
    templates,
    tenancy,
    vms,
    vsphere,
    webhooks,
)  # fmt: skip


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1", dependencies=[Depends(authorize)])
    ws = APIRouter(prefix="/api/v1")
    ws.include_router(guest.ws_router)
    ws.include_router(events.ws_router)
    ws.include_router(mcp.router)  # read-only keys may run the commands that read
    ws.include_router(agents.agent_router)  # node agents authenticate by themselves
    # agents before cluster: /nodes/tokens is not /nodes/{node_id}
    for module in (
        vms, deployments, guest, networks, snapshots, backups, templates, isos, jobs, agents, cluster, events, webhooks, schedules, tenancy,
        plugins, imports, vsphere, stats_history,
    ):  # fmt: skip
        r.include_router(module.router)
    outer = APIRouter()
    outer.include_router(r)
    outer.include_router(ws)
    return outer
