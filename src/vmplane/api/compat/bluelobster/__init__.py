"""The Blue Lobster face: Blue Lobster's instance API (openapi.json here, the contract) over
the core.

Mounted at /compat/bluelobster of the main application; `vmplane serve --face
bluelobster=HOST:PORT` serves it at the root of a listener of its own. Errors are
`{"error": code, "message": sentence}` with the contract's status codes; request validation
answers 422 in FastAPI's shape (`{"detail": [{loc, msg, type}]}`), as the contract says.
Decisions where vmplane differs from the hosted service: docs/bluelobster.md.

One router per resource (tasks, catalog, launch, instances, firewall, ips, backups, stats,
console, billing, teams), each a translation into the core; what they share is in shared.py,
the wire format in wire.py. Launches and power actions other than reboot answer at once with a
task id (a vmplane job id) that `GET /api/v1/tasks/{task_id}` follows; delete and reboot wait
up to `compat_wait_seconds` for their job, because the contract answers them with the outcome.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from ....errors import VmplaneError
from ....services.offerings import Offerings
from ..common import Errors, build_face
from . import backups, billing, catalog, console, firewall, health, instances, ips, launch, stats, tasks, teams
from .wire import BlError, answer

if TYPE_CHECKING:
    from ....runtime import Runtime

PREFIX = "/compat/bluelobster"
CONTRACT = Path(__file__).with_name("openapi.json")

ROUTERS = (
    health.open_router, console.open_router,
    # catalog before instances: /instances/templates and /instances/available are not /instances/{instance_id}
    tasks.router, catalog.router, launch.router, instances.router, firewall.router, ips.router, backups.router, stats.router,
    console.router, billing.router, teams.router,
)  # fmt: skip
"""the face's routers, in the order their routes match: the open ones (health, and the console's
WebSocket, whose ticket is its credential), then those that need credentials"""

CODES = {
    401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
    429: "rate_limited", 500: "internal_error",
}  # fmt: skip


FASTAPI_BODY_ERROR = "There was an error parsing the body"
"""FastAPI's 400 for a body it cannot decode (bytes that are not UTF-8)"""


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def core_error(exc: VmplaneError) -> JSONResponse:
    status, code = answer(exc)
    extra = {k: v for k, v in exc.details.items() if k in ("task_id", "details")} if isinstance(exc, BlError) else {}
    return error(status, code, exc.message, **extra)


def validation_error(errors: list[Any]) -> JSONResponse:
    """422 in FastAPI's own shape, as the contract says."""
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input", "ctx")} for e in errors]
    for e in errors:  # ctx may hold an exception object: keep it printable
        if "ctx" in e:
            e["ctx"] = {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in e["ctx"].items()}
    # as FastAPI's own handler: the input may be bytes (a body that is not JSON)
    return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)


def http_error(status: int, message: str) -> JSONResponse:
    """A routing or protocol error. A body that cannot be read (not UTF-8, JSON nested too
    deep: FastAPI and the body middleware answer 400) is a validation error, which the contract
    answers 422 on every operation in FastAPI's shape; it lists 400 on a few only."""
    if status == 400:
        if message == FASTAPI_BODY_ERROR:
            message = "the body is not JSON in UTF-8"
        return validation_error([{"loc": ["body"], "msg": message, "type": "json_invalid"}])
    return error(status, CODES.get(status, "error"), message)


ERRORS = Errors(
    http=http_error,
    core=core_error,
    validation=validation_error,
)


def build(rt: "Runtime") -> FastAPI:
    """The face's application (mounted by api/faces.py)."""
    app = build_face("Blue Lobster face", rt, ROUTERS, CONTRACT, ERRORS)
    app.state.offerings = Offerings(store=rt.store, capacity=rt.capacity, data_dir=rt.data_dir)
    return app
