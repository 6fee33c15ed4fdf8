"""What every compatibility face's application has in common: its routers, its contract served
beside it, its error handlers, and an `Allow` header that names every method of a path.

A face gives `build_face` the routers and one `Errors` object that renders its own error shape;
everything else (which exception maps to which answer, the 405 `Allow` header, the catch-all
500 that logs) is the same for every face.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...errors import VmplaneError
from ..errors import retry_after

if TYPE_CHECKING:
    from ...runtime import Runtime

log = logging.getLogger("vmplane.api")

MEDIA_TYPES = {".json": "application/json", ".yaml": "application/yaml", ".md": "text/markdown"}


@dataclass(frozen=True, slots=True)
class Errors:
    """How a face renders its errors."""

    http: Callable[[int, str], JSONResponse]
    """http(status, sentence): a routing or protocol error (404 no such endpoint, 405, 413...)"""
    core: Callable[[VmplaneError], JSONResponse]
    """core(error): an error of the core's services"""
    validation: Callable[[list[Any]], JSONResponse]
    """validation(pydantic errors): a request that does not match the face's wire schema"""


def allowed_methods(request: Request, routers: Sequence[APIRouter]) -> list[str]:
    """Every method the face serves at the request's path. A fixed path
    (/instances/available) is that resource, not an `{instance_id}`."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    path = path[len(root) :] if root and path.startswith(root) else path
    routes = [r for router in routers for r in router.routes]
    matching = [r for r in routes if isinstance(r, APIRoute) and r.path_regex.match(path)]
    fixed = [r for r in matching if "{" not in r.path]
    methods: set[str] = set()
    for route in fixed or matching:
        if route.methods is not None:  # None only for a Starlette Route that takes any method
            methods |= route.methods
    return sorted(methods)


def build_face(title: str, rt: Runtime, routers: Sequence[APIRouter], contract: Path, errors: Errors) -> FastAPI:
    """A face's application (mounted by api/faces.py at the face's prefix). The contract is
    served at `/<its file name>`."""
    app = FastAPI(title=f"vmplane: {title}", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.rt = rt
    app.state.errors = errors  # middleware that refuses before the face runs answers in its shape
    for router in routers:
        app.include_router(router)

    async def serve_contract() -> FileResponse:
        """The contract this face serves."""
        return FileResponse(contract, media_type=MEDIA_TYPES.get(contract.suffix, "application/octet-stream"))

    app.add_api_route(f"/{contract.name}", serve_contract, methods=["GET"], include_in_schema=False)

    @app.exception_handler(VmplaneError)
    async def _core(_req: Request, exc: VmplaneError) -> Response:
        response = errors.core(exc)
        response.headers.update(retry_after(exc))  # a 429 says when to come back, on every face
        return response

    @app.exception_handler(RequestValidationError)
    async def _request(_req: Request, exc: RequestValidationError) -> Response:
        return errors.validation(list(exc.errors()))

    @app.exception_handler(ValidationError)
    async def _model(_req: Request, exc: ValidationError) -> Response:
        return errors.validation(list(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> Response:
        response = errors.http(exc.status_code, "no such endpoint" if exc.status_code == 404 else str(exc.detail))
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only
            response.headers["Allow"] = ", ".join(allowed_methods(req, routers))
        return response

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> Response:
        if isinstance(exc, VmplaneError):  # raised outside the routes' handlers (the store out of reach, say)
            return await _core(req, exc)
        log.exception("unhandled error")
        return errors.http(500, "internal error; see the server log")

    return app
