"""The FastVM face: FastVM's public API (openapi.yaml here, the contract) over the core.

Mounted at /compat/fastvm of the main application; `vmplane serve --face fastvm=HOST:PORT`
serves it at the root of a listener of its own. Errors are `{"error": sentence}` with the
contract's status codes (request validation answers 400, never 422). Decisions where vmplane
differs from the hosted service: docs/fastvm.md.
"""

from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from ....errors import VmplaneError
from ...errors import validation_message
from ..common import Errors, build_face
from .routes import open_router, router
from .wire import STATUS

if TYPE_CHECKING:
    from ....runtime import Runtime

PREFIX = "/compat/fastvm"
CONTRACT = Path(__file__).with_name("openapi.yaml")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def core_error(exc: VmplaneError) -> JSONResponse:
    return error(STATUS[exc.reason], exc.message)


ERRORS = Errors(
    http=error,
    core=core_error,
    validation=lambda errors: error(400, validation_message(errors)[0]),
)


def build(rt: "Runtime") -> FastAPI:
    """The face's application (mounted by api/faces.py)."""
    return build_face("FastVM face", rt, (open_router, router), CONTRACT, ERRORS)
