"""The Blue Lobster health endpoint, open to anyone (no credentials)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .... import clock
from ...health import readiness
from .shared import offerings_of

open_router = APIRouter()


@open_router.get("/api/v1/health")
async def health(request: Request) -> JSONResponse:
    """`api`, `database` and `hypervisor` (some node online), each operational or degraded."""
    rt = request.app.state.rt
    checks = await readiness(rt)
    database = "operational" if checks.get("store") == "ok" else "degraded"
    try:
        online = any(n.status == "online" for n in await offerings_of(request).nodes())
    except Exception:  # the store is down: the database component already says so
        online = False
    components = {"api": "operational", "database": database, "hypervisor": "operational" if online and rt.ready else "degraded"}
    bad = [k for k, v in components.items() if v != "operational"]
    status = "healthy" if not bad else ("unhealthy" if "database" in bad else "degraded")
    return JSONResponse({"status": status, "timestamp": clock.rfc3339(clock.now()), "components": components})
