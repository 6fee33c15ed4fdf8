"""The native face's error shape: {"error": sentence, "code": machine_code, "details": {...}}."""

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RateLimited, Reason, VmplaneError

log = logging.getLogger("vmplane.api")

NATIVE: dict[Reason, tuple[int, str]] = {
    Reason.INTERNAL: (500, "internal_error"),
    Reason.INVALID: (400, "invalid_request"),
    Reason.BEYOND_ANY_NODE: (409, "no_capacity"),  # a create no node could ever fit: refused at once, nothing made
    Reason.CANNOT_SHRINK: (400, "invalid_request"),
    Reason.OVER_LIMIT: (400, "invalid_request"),
    Reason.UNAUTHORIZED: (401, "unauthorized"),
    Reason.FORBIDDEN: (403, "forbidden"),
    Reason.RATE_LIMITED: (429, "rate_limited"),
    Reason.NOT_FOUND: (404, "not_found"),
    Reason.CONFLICT: (409, "conflict"),
    Reason.NAME_TAKEN: (409, "conflict"),
    Reason.IN_PROGRESS: (409, "conflict"),
    Reason.UNSUPPORTED: (409, "conflict"),
    Reason.WRONG_STATE: (409, "invalid_state"),
    Reason.QUOTA_EXCEEDED: (409, "quota_exceeded"),
    Reason.PAYLOAD_TOO_LARGE: (413, "payload_too_large"),
    Reason.BODY_TOO_LARGE: (400, "too_large"),
    Reason.OUTBOUND_REFUSED: (400, "outbound_refused"),
    Reason.NO_CAPACITY: (409, "no_capacity"),  # the request conflicts with what the nodes hold now (issue 23)
    Reason.NOT_READY: (503, "not_ready"),
    Reason.DRIVER_FAILED: (502, "driver_error"),
    Reason.IMAGE_REFUSED: (400, "image_refused"),
    Reason.VCENTER_FAILED: (502, "vcenter_error"),
    Reason.BACKUP_STORE_FAILED: (500, "backup_store_error"),
    Reason.CANCELLED: (500, "cancelled"),
}
"""the native face's answer to each reason: (HTTP status, `code`)"""

NATIVE_STATUS: dict[Reason, int] = {reason: status for reason, (status, _) in NATIVE.items()}
"""the native face's status for each reason, which the compat faces start from"""

NATIVE_FIELDS = {
    "resources.ram_mb": "resources.ramMb", "resources.disk_gb": "resources.diskGb",
    "day_of_week": "dayOfWeek", "day_of_month": "dayOfMonth",
}  # fmt: skip
"""domain field names that the native wire spells otherwise (a bulk item's `[i].` prefix kept)"""


def native_field(field: str) -> str:
    """The native wire path of a field the core names (`[0].resources.disk_gb` →
    `[0].resources.diskGb`)."""
    for domain, wire in NATIVE_FIELDS.items():
        if field == domain or field.endswith("." + domain):
            return field[: len(field) - len(domain)] + wire
    return field


def native_details(exc: VmplaneError) -> dict[str, Any]:
    field = exc.details.get("field")
    if not isinstance(field, str):
        return exc.details
    return {k: native_field(v) if k == "field" else v for k, v in exc.details.items()}


def retry_after(exc: VmplaneError) -> dict[str, str]:
    """The `Retry-After` header (whole seconds) every face sends with a rate limit's refusal;
    no header for any other error."""
    return {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}


def core_error(exc: VmplaneError) -> JSONResponse:
    """A core error in the native shape: status and `code` from the table, fields by their wire paths."""
    status, code = NATIVE[exc.reason]
    if status >= 500 and status not in (502, 503):
        log.error("error: %s", exc.message)
    return error_response(status, exc.message, code, native_details(exc), retry_after(exc))


def error_response(
    status: int, message: str, code: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, "details": details or {}}, status_code=status, headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """`("body", 0, "resources", "cpu")` → `[0].resources.cpu`; `("query", "limit")` → `limit`."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out or "body"


def validation_message(errors: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    first = errors[0]
    field = field_path(first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON", "body"
    if kind == "extra_forbidden":
        return f"{field}: unknown field", field
    if kind == "missing":
        return f"{field}: this field is required", field
    return f"{field}: {first.get('msg', 'invalid value')}", field


def validation_error(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    message, field = validation_message(errors)
    details = {
        "field": field,
        "errors": [{"field": field_path(e.get("loc", ())), "message": e.get("msg", "")} for e in errors[:20]],
    }
    return error_response(400, message, "invalid_request", details)


def install(app: FastAPI) -> None:
    @app.exception_handler(VmplaneError)
    async def _core(_req: Request, exc: VmplaneError) -> JSONResponse:
        return core_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _model(_req: Request, exc: ValidationError) -> JSONResponse:
        return validation_error(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        return error_response(exc.status_code, message, code)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        return unexpected(exc)


def unexpected(exc: Exception) -> JSONResponse:
    """The answer to an exception no route handled: a core error raised in a middleware
    (outside the routes' handlers: the store out of reach, say) as itself, anything else 500."""
    if isinstance(exc, VmplaneError):
        return core_error(exc)
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal error; see the server log", "internal_error")
