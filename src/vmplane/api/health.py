"""/healthz, /livez, /readyz at the root of every listener."""

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .schemas import HealthOut

if TYPE_CHECKING:
    from ..runtime import Runtime

HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"model": HealthOut}, 503: {"model": HealthOut}}

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=HEALTH_RESPONSES)
@router.get("/livez", responses=HEALTH_RESPONSES)
async def live() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok", "checks": {}})


async def readiness(rt: "Runtime") -> dict[str, str]:
    """What readiness depends on, each `ok` or why not: the store answers, the runtime
    finished starting (store migrated, nodes registered)."""
    checks = {"store": "ok", "nodes": "ok" if rt.ready else "starting"}
    try:
        await rt.store.ping()
    except Exception as exc:  # any store failure means not ready
        checks["store"] = f"error: {type(exc).__name__}"
    return checks


@router.get("/readyz", responses=HEALTH_RESPONSES)
async def ready(request: Request) -> JSONResponse:
    """503 until the store is migrated and the nodes are registered."""
    checks = await readiness(request.app.state.rt)
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
