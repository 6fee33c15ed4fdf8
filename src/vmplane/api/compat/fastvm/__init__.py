"""The FastVM face: FastVM's public API (openapi.yaml here, the contract) over the core.

Mounted at /compat/fastvm of the main application; `vmplane serve --face fastvm=HOST:PORT`
serves it at the root of a listener of its own. Errors are `{"error": sentence}` with the
contract's status codes (request validation answers 400, never 422). Decisions where vmplane
differs from the hosted service: docs/fastvm.md.
"""

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import validation_message
from ....errors import VmplaneError
from .routes import open_router, router

log = logging.getLogger("vmplane.api")
PREFIX = "/compat/fastvm"
CONTRACT = Path(__file__).with_name("openapi.yaml")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def allowed_methods(request: Request) -> list[str]:
    """Every method the face serves at the request's path."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    methods: set[str] = set()
    for route in (*open_router.routes, *router.routes):
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return sorted(methods)


def build(rt: Any) -> FastAPI:
    """The face's application (mounted by api/faces.py)."""
    app = FastAPI(title="vmplane: FastVM face", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.rt = rt
    app.include_router(open_router)
    app.include_router(router)

    @app.get("/openapi.yaml", include_in_schema=False)
    async def contract() -> FileResponse:
        """The contract this face serves."""
        return FileResponse(CONTRACT, media_type="application/yaml")

    @app.exception_handler(VmplaneError)
    async def _core(_req: Request, exc: VmplaneError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _request(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, validation_message(list(exc.errors()))[0])

    @app.exception_handler(ValidationError)
    async def _model(_req: Request, exc: ValidationError) -> JSONResponse:
        return error(400, validation_message(list(exc.errors()))[0])

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = error(exc.status_code, "no such endpoint" if exc.status_code == 404 else str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only
            response.headers["Allow"] = ", ".join(allowed_methods(req))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(500, "internal error; see the server log")

    return app
