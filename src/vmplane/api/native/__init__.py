"""The native API (`/api/v1`), one router per resource."""

from fastapi import APIRouter

from . import cluster, events, guest, jobs, schedules, templates, vms, webhooks


def router() -> APIRouter:
    r = APIRouter(prefix="/api/v1")
    for module in (vms, guest, templates, jobs, cluster, events, webhooks, schedules):
        r.include_router(module.router)
    return r
