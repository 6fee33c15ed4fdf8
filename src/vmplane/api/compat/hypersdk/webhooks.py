"""The HyperSDK webhooks endpoints: the core's webhooks in the `hypersdk` format; the face
lists and addresses only those, by their position in the list (HyperSDK's have no id)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from ....auth import Principal
from ....errors import InvalidRequest, NotFound
from ....events import formats
from ...deps import CallerDep, RuntimeDep, authorize
from . import wire
from .shared import ok

if TYPE_CHECKING:
    from ....runtime import Runtime

router = APIRouter(dependencies=[Depends(authorize)])


async def _webhooks(rt: Runtime, who: Principal) -> list[Any]:
    return [h for h in await rt.webhooks.list(who) if h.format == formats.HYPERSDK]


class _WebhookIn(wire.Open):
    url: str | None = Field(None, max_length=2048)
    events: Any = None
    enabled: bool | None = None
    timeout: int | None = Field(None, gt=0, le=300)
    """whole seconds, as the daemon's `int` (30.0 is 30; 2.5 is refused)"""
    retry_count: int | None = Field(None, ge=0, le=20)
    headers: dict[str, str] | None = None
    event: str | None = Field(None, max_length=64)


@router.get("/webhooks")
async def list_webhooks(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [wire.render_webhook(h) for h in await _webhooks(rt, who)]
    return JSONResponse({"webhooks": items, "total": len(items), "timestamp": wire.now()})


@router.post("/webhooks")
async def add_webhook(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    w = wire.model(_WebhookIn, await wire.body(request), "body")
    if not w.url:
        raise InvalidRequest("url is required", field="url")
    row = await rt.webhooks.create(
        url=w.url, events=wire.webhook_events(w.events), enabled=True if w.enabled is None else w.enabled,
        timeout_sec=float(w.timeout or 30), retry_count=3 if w.retry_count is None else w.retry_count, headers=w.headers or {},
        who=who, format=formats.HYPERSDK,
    )  # fmt: skip
    return ok({"message": "webhook added successfully", "webhook": wire.render_webhook(row)}, status=201)


@router.post("/webhooks/test")
async def test_webhook(request: Request, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """POSTs one `{event, timestamp, data}` to `url` now. A receiver that fails answers 400
    naming what went wrong (the face itself did not fail)."""
    w = wire.model(_WebhookIn, await wire.body(request), "body")
    if not w.url:
        raise InvalidRequest("url is required", field="url")
    result = await rt.webhooks.test_url(
        url=w.url, fmt=formats.HYPERSDK, event=w.event or "test", headers=w.headers or {}, timeout_sec=float(w.timeout or 10), who=who
    )  # fmt: skip
    if not result["ok"]:
        raise InvalidRequest(f"test webhook failed: {result['error']}", field="url")
    return ok({"message": "test webhook sent", "status_code": result["statusCode"], "duration_ms": result["durationMs"]})


@router.delete("/webhooks/{index}")
async def delete_webhook(index: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """By 0-based index in the list (webhooks have no id in HyperSDK)."""
    if not index.isdigit() or len(index) > 6:
        raise InvalidRequest("index must be a whole number (0-based position in GET /webhooks)", field="index")
    hooks = await _webhooks(rt, who)
    i = int(index)
    if i >= len(hooks):
        raise NotFound(f"webhook index {i} out of range (there are {len(hooks)})")
    await rt.webhooks.delete(hooks[i].id, who)
    return ok({"message": "webhook deleted successfully"})
