"""The HyperSDK health and status endpoints: the face's OpenAPI document and /health, open to
anyone (no credentials), and /status."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse

from ...deps import CallerDep, RuntimeDep, authorize
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


@router.get("/status")
async def status(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await status_data(request.app, rt, who))
