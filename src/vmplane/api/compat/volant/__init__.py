"""The Volant face: the Volant daemon's API (openapi.json here, the contract) over the core.

Mounted at /compat/volant of the main application; `vmplane serve --face
volant=HOST:PORT` serves it at the root of a listener of its own (Volant's CLI uses absolute
paths: /api/v1/vms). VMs are addressed by name. Errors are `{"error": sentence, "details":
{field: text}}` (lists joined with ", "; a VM named by its name and its states in Volant's
words: api/volant_shapes.about_vm); request validation answers 400. Credentials: a vmplane key in
`X-Volant-API-Key` or `X-API-Key` (or `api_key=` in the query). Plugins, per-VM OpenAPI and
MCP: plugins.py; everything else: routes.py. Decisions where vmplane
differs from the daemon: docs/volant.md.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ....errors import VmplaneError
from ...errors import native_details, validation_message
from ..common import Errors, build_face
from .plugins import router as plugin_router
from .routes import open_router, router
from .wire import STATUS, detail_text

if TYPE_CHECKING:
    from ....runtime import Runtime

PREFIX = "/compat/volant"
CONTRACT = Path(__file__).with_name("openapi.json")


def error(status: int, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    """Volant's error shape; `details` values are strings in the contract (wire.detail_text)."""
    return JSONResponse({"error": message, "details": {str(k): detail_text(v) for k, v in (details or {}).items()}}, status_code=status)


def core_error(exc: VmplaneError) -> JSONResponse:
    return error(STATUS[exc.reason], exc.message, native_details(exc))  # fields as they always read


def validation_error(errors: list[Any]) -> JSONResponse:
    message, field = validation_message(errors)
    return error(400, message, {"field": field})


ERRORS = Errors(http=lambda status, message: error(status, message), core=core_error, validation=validation_error)


def build(rt: "Runtime") -> FastAPI:
    """The face's application (mounted by api/faces.py)."""
    return build_face("Volant face", rt, (open_router, router, plugin_router), CONTRACT, ERRORS)
