"""/api/v1/webhooks: register receivers of events; inspect their deliveries."""

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ... import clock
from ...services import scopes
from ...services.webhooks import redacted_headers
from ..deps import CallerDep, RuntimeDep
from ..middleware import NO_STORE
from ..schemas import In, Page, ScopeOut
from .deps import ERRORS, Limit, PageToken

router = APIRouter(tags=["webhooks"])


class WebhookCreateIn(In):
    url: str = Field(..., min_length=1, max_length=2048)
    events: list[str] = Field(..., min_length=1, max_length=64, description="types or patterns: job.*, vm.running")
    enabled: bool = True
    timeoutSec: float = Field(10, gt=0, le=60)
    retryCount: int = Field(5, ge=0, le=20, description="attempts after the first")
    headers: dict[str, str] = Field(default_factory=dict, max_length=32)


class WebhookUpdateIn(In):
    url: str | None = Field(None, min_length=1, max_length=2048)
    events: list[str] | None = Field(None, min_length=1, max_length=64)
    enabled: bool | None = None
    timeoutSec: float | None = Field(None, gt=0, le=60)
    retryCount: int | None = Field(None, ge=0, le=20)
    headers: dict[str, str] | None = Field(None, max_length=32, description="replaces the headers; a value of *** keeps that header's value")


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    enabled: bool
    timeoutSec: float
    retryCount: int
    headers: dict[str, str] = Field(..., description="the header names; values are write-only and read as ***")
    format: str = "vmplane"
    """how deliveries are written: vmplane, or hypersdk (made through the HyperSDK face)"""
    createdAt: str
    updatedAt: str
    scope: ScopeOut
    disabledReason: str | None = Field(None, description="why it was disabled: the credential that made it was revoked or expired, or its user left")


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(..., description="shown once: verify X-Vmplane-Signature with it")


class DeliveryOut(BaseModel):
    id: str
    eventId: int
    eventType: str
    status: str
    attempts: int
    lastStatusCode: int | None
    lastError: str | None
    createdAt: str
    updatedAt: str
    deliveredAt: str | None


class WebhookTestOut(BaseModel):
    ok: bool
    statusCode: int | None
    error: str | None
    durationMs: int
    sentAt: str


def render(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "url": row.url, "events": row.events, "enabled": row.enabled, "timeoutSec": row.timeout_sec,
        "retryCount": row.retry_count, "headers": redacted_headers(row.headers), "format": row.format, "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at), **scopes.render(row),
    }  # fmt: skip


@router.get("/webhooks", response_model=Page[WebhookOut])
async def list_webhooks(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse({"items": [render(r) for r in await rt.webhooks.list(who)], "nextPageToken": None})


@router.post("/webhooks", status_code=201, response_model=WebhookCreatedOut, responses=ERRORS)
async def create_webhook(body: WebhookCreateIn, rt: RuntimeDep, caller: CallerDep) -> JSONResponse:
    row = await rt.webhooks.create(
        url=body.url, events=body.events, enabled=body.enabled, timeout_sec=body.timeoutSec,
        retry_count=body.retryCount, headers=body.headers, who=caller,
    )  # fmt: skip
    return JSONResponse({**render(row), "secret": rt.webhooks.secret_of(row)}, status_code=201, headers=NO_STORE)


@router.get("/webhooks/{webhook_id}", response_model=WebhookOut, responses=ERRORS)
async def get_webhook(webhook_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(render(await rt.webhooks.get(webhook_id, who)))


@router.patch("/webhooks/{webhook_id}", response_model=WebhookOut, responses=ERRORS)
async def update_webhook(webhook_id: str, body: WebhookUpdateIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row = await rt.webhooks.update(
        webhook_id, who, url=body.url, events=body.events, enabled=body.enabled, timeout_sec=body.timeoutSec,
        retry_count=body.retryCount, headers=body.headers,
    )  # fmt: skip
    return JSONResponse(render(row))


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=ERRORS)
async def delete_webhook(webhook_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.webhooks.delete(webhook_id, who)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/test", response_model=WebhookTestOut, responses=ERRORS)
async def test_webhook(webhook_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Send a signed `webhook.test` event now, once, and report the receiver's answer."""
    return JSONResponse(await rt.webhooks.test(webhook_id, who))


@router.get("/webhooks/{webhook_id}/deliveries", response_model=Page[DeliveryOut], responses=ERRORS)
async def deliveries(webhook_id: str, rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    """Newest first."""
    rows, token = await rt.webhooks.deliveries(webhook_id, who, limit=limit, page_token=pageToken)
    items = [
        {"id": d.id, "eventId": d.event_seq, "eventType": d.event_type, "status": d.status, "attempts": d.attempts,
         "lastStatusCode": d.last_status_code, "lastError": d.last_error, "createdAt": clock.rfc3339(d.created_at),
         "updatedAt": clock.rfc3339(d.updated_at), "deliveredAt": clock.rfc3339(d.delivered_at)}  # fmt: skip
        for d in rows
    ]
    return JSONResponse({"items": items, "nextPageToken": token})
