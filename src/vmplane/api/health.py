"""/healthz, /livez, /readyz at the root of every listener."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .schemas import HealthOut

HEALTH_RESPONSES: dict[int | str, dict] = {200: {"model": HealthOut}, 503: {"model": HealthOut}}

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=HEALTH_RESPONSES)
@router.get("/livez", responses=HEALTH_RESPONSES)
async def live() -> JSONResponse:
    """The process is up and serving."""
    return JSONResponse({"status": "ok", "checks": {}})


@router.get("/readyz", responses=HEALTH_RESPONSES)
async def ready(request: Request) -> JSONResponse:
    """503 until the store is migrated and the nodes are registered."""
    rt = request.app.state.rt
    checks = {"store": "ok", "nodes": "ok" if rt.ready else "starting"}
    try:
        await rt.store.ping()
    except Exception as exc:  # any store failure means not ready
        checks["store"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)
