"""The Blue Lobster face: Blue Lobster's instance API (openapi.json here, the contract) over
the core.

Mounted at /compat/bluelobster of the main application; `vmplane serve --face
bluelobster=HOST:PORT` serves it at the root of a listener of its own. Errors are
`{"error": code, "message": sentence}` with the contract's status codes; request validation
answers 422 in FastAPI's shape (`{"detail": [{loc, msg, type}]}`), as the contract says.
Decisions where vmplane differs from the hosted service: docs/bluelobster.md.
"""

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ....errors import DriverError, NoCapacity, VmplaneError
from ....services.offerings import Offerings
from .routes import open_router, router

log = logging.getLogger("vmplane.api")
PREFIX = "/compat/bluelobster"
CONTRACT = Path(__file__).with_name("openapi.json")

CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def allowed_methods(request: Request) -> list[str]:
    """Every method the face serves at the request's path."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    matching = [r for r in (*open_router.routes, *router.routes) if isinstance(r, APIRoute) and r.path_regex.match(path)]
    # a fixed path (/api/v1/instances/available) is that resource, not an {instance_id}
    fixed = [r for r in matching if "{" not in r.path]
    methods: set[str] = set()
    for route in fixed or matching:
        methods |= route.methods
    return sorted(methods)


def build(rt: Any) -> FastAPI:
    """The face's application (mounted by api/faces.py)."""
    app = FastAPI(title="vmplane: Blue Lobster face", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.rt = rt
    app.state.offerings = Offerings(rt)
    app.include_router(open_router)
    app.include_router(router)

    @app.get("/openapi.json", include_in_schema=False)
    async def contract() -> FileResponse:
        """The contract this face serves."""
        return FileResponse(CONTRACT, media_type="application/json")

    @app.exception_handler(VmplaneError)
    async def _core(_req: Request, exc: VmplaneError) -> JSONResponse:
        extra = {k: v for k, v in exc.details.items() if k in ("task_id", "details")}
        if isinstance(exc, NoCapacity):  # the contract's word for "no room" is 409
            return error(409, "resource_conflict", exc.message)
        if isinstance(exc, DriverError):  # a node failed: the contract's failures are 500s
            return error(500, "operation_failed", exc.message)
        return error(exc.status, exc.code, exc.message, **extra)

    @app.exception_handler(RequestValidationError)
    async def _request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input", "ctx")} for e in exc.errors()]
        for e in errors:  # ctx may hold an exception object: keep it printable
            if "ctx" in e:
                e["ctx"] = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in e["ctx"].items()}
        # as FastAPI's own handler: the input may be bytes (a body that is not JSON)
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = "no such endpoint" if exc.status_code == 404 else str(exc.detail)
        response = error(exc.status_code, CODES.get(exc.status_code, "error"), message)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only
            response.headers["Allow"] = ", ".join(allowed_methods(req))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(500, "internal_error", "internal error; see the server log")

    return app
