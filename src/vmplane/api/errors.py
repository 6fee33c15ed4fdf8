"""The native face's error shape: {"error": sentence, "code": machine_code, "details": {...}}."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import VmplaneError

log = logging.getLogger("vmplane.api")


def error_response(status: int, message: str, code: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "code": code, "details": details or {}}, status_code=status)


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


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str]:
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


def validation_error(errors: list[dict[str, Any]]) -> JSONResponse:
    message, field = validation_message(errors)
    details = {
        "field": field,
        "errors": [{"field": field_path(e.get("loc", ())), "message": e.get("msg", "")} for e in errors[:20]],
    }
    return error_response(400, message, "invalid_request", details)


def install(app: FastAPI) -> None:
    @app.exception_handler(VmplaneError)
    async def _core(_req: Request, exc: VmplaneError) -> JSONResponse:
        if exc.status >= 500 and exc.status not in (502, 503):
            log.error("error: %s", exc.message)
        return error_response(exc.status, exc.message, exc.code, exc.details)

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
        log.exception("unhandled error")
        return error_response(500, "internal error; see the server log", "internal_error")
