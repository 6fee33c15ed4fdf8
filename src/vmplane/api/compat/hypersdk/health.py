"""The HyperSDK health and status endpoints: the face's OpenAPI document and /health, open to
anyone (no credentials); /metrics (the document's `hypersdk_*` metrics, for operators or the
scrape token, as vmplane's own /metrics); and /status."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ....errors import NotFound
from ...deps import CallerDep, RuntimeDep, authorize
from ...metrics import check_access
from . import wire
from .shared import status_data

open_router = APIRouter()
router = APIRouter(dependencies=[Depends(authorize)])
"""/status needs credentials (X-API-Key, as HyperSDK's client sends its api_key, or Bearer)"""


@open_router.get("/openapi.yaml")
async def openapi() -> FileResponse:
    """An OpenAPI document of this face, written by vmplane from the markdown contract."""
    return FileResponse(Path(__file__).with_name("openapi.yaml"), media_type="application/yaml")


@open_router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok", "timestamp": wire.now()})


@open_router.get("/metrics")
async def metrics(request: Request) -> Response:
    """The document's metrics (Prometheus text): `hypersdk_api_requests_total`,
    `hypersdk_api_request_duration_seconds`, `hypersdk_jobs_total`, `hypersdk_workers_active`,
    `hypersdk_build_info`. Installation-wide, so for whoever may read the root's /metrics."""
    check_access(request, "the HyperSDK face's /metrics")
    document = request.app.state.hypersdk_metrics
    if document is None:  # the face built without the application's metrics
        raise NotFound("metrics are not enabled")
    return Response(await document.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/status")
async def status(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await status_data(request.app, rt, who))
