"""The two hottest reads, `GET /api/v1/vms/{vm_id}` and `GET /api/v1/vms`, served without
FastAPI's routing, dependency solving and middleware layers, with the same answers.

A plain request for one of them (no body, and for the list only the route's own query
parameters, each once, with values the route would take) is served here: admitted by the same
`Identity.admit` as every request (credentials, the address's, credential's and organization's
rate limits, which are one set of buckets for both ways in: `identity.Limits`), answered by the
same function the route calls (`native.vms.vm_document`, `vm_page`), rendered by the same
`render.Json`, its errors by the same handlers (`errors.core_error`, `errors.unexpected`), and
counted by the same metrics under the same route label. Anything else, and a request that
presents no valid credentials (its 401 is the routes' business), goes on to the application as
before; one this lane took in already is handed on with its admission, so nothing is counted
or spent twice. `tests/api/test_fast_reads.py` compares the two ways answer by answer.

Why: bench/floor.py measured a single GET at ~0.35 of a bare FastAPI server reading the same
row; FastAPI's route matching over ~300 routes, its dependency solving and its middleware
layers were most of the difference (docs/benchmarks.md, "Reads at the floor").
"""

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from ..auth import Principal
from ..errors import VmplaneError
from . import render
from .errors import core_error, unexpected
from .identity import ADMITTED, Identity
from .metrics import Metrics, count_request
from .native import vms as vms_api

if TYPE_CHECKING:
    from ..runtime import Runtime

PREFIX = "/api/v1/vms"
JSON_TYPE = (b"content-type", b"application/json")
LIST_PARAMS = {"node": 64, "status": 32, "tag": 64, "name": 63, "pageToken": 200}
"""the list's string parameters and their longest values (as the route declares them)"""


def _route(app: FastAPI, endpoint: Callable[..., Any]) -> Any:
    """The route of `endpoint` in `app` (what routing puts in scope["route"]), or None."""
    todo: list[Any] = list(app.router.routes)
    while todo:
        route = todo.pop()
        if getattr(route, "endpoint", None) is endpoint:
            return route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            todo.extend(inner.routes)
    return None


def list_query(raw: bytes) -> dict[str, Any] | None:
    """The list's parameters, when the query string is one the route takes as it is; None
    when it is anything else (the route then answers it, a refusal with its own wording)."""
    query: dict[str, Any] = {}
    if raw:
        try:
            pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, strict_parsing=True)
        except (ValueError, UnicodeDecodeError):
            return None
        for name, value in pairs:
            if name in query:
                return None
            if name == "limit":
                if not (value.isdigit() and value.isascii() and value[0] != "0" and len(value) <= 3 and int(value) <= 500):
                    return None
                query[name] = int(value)
            elif name in LIST_PARAMS:
                if not value or len(value) > LIST_PARAMS[name]:
                    return None
                query[name] = value
    return query


class FastReads:
    def __init__(self, app: FastAPI, rt: "Runtime", identity: Identity, metrics: Metrics) -> None:
        self.app = app
        self.rt = rt
        self.identity = identity
        self.metrics = metrics
        self.one = _route(app, vms_api.get_vm)
        self.many = _route(app, vms_api.list_vms)

    def wants(self, scope: Scope) -> tuple[str, Any] | None:
        """("one", vm_id) or ("many", query) for a request this lane serves; None otherwise."""
        if scope["type"] != "http" or scope["method"] != "GET" or self.one is None or self.many is None:
            return None
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            return None
        for name, value in scope["headers"]:
            if (name == b"content-length" and value != b"0") or name == b"transfer-encoding":
                return None  # a body: the body limits' business
        rest = path[len(PREFIX) :]
        if not rest:
            query = list_query(scope.get("query_string", b""))
            return None if query is None else ("many", query)
        if rest[0] == "/" and len(rest) > 1 and "/" not in rest[1:] and not scope.get("query_string"):
            return ("one", rest[1:])
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send, wanted: tuple[str, Any]) -> bool:
        """Serve the request `wants` took; False when it must go on to the application (it
        then carries its admission)."""
        start = time.perf_counter()
        scope["app"] = self.app

        async def refuse(exc: Exception) -> bool:
            """The error's answer, as the application's handlers give it, counted."""
            response = core_error(exc) if isinstance(exc, VmplaneError) else unexpected(exc)
            await response(scope, receive, send)
            count_request(self.metrics, scope, response.status_code, time.perf_counter() - start)
            return True

        try:
            admission = await self.identity.admit(scope)
        except Exception as exc:
            return await refuse(exc)
        state = scope["state"]
        if admission.refusal is not None:
            await self.identity.too_many(scope, receive, send, *admission.refusal)
            count_request(self.metrics, scope, 429, time.perf_counter() - start)
            return True
        who: Principal | None = state["principal"]
        if who is None:
            state[ADMITTED] = admission
            return False
        kind, arg = wanted
        if kind == "one":
            scope["route"], scope["path_params"] = self.one, {"vm_id": arg}
        else:
            scope["route"], scope["path_params"] = self.many, {}
        try:
            if kind == "one":
                body = await vms_api.vm_document(self.rt, who, arg)
            else:
                q = arg
                body = await vms_api.vm_page(
                    self.rt, who, node=q.get("node"), status=q.get("status"), tag=q.get("tag"), name=q.get("name"),
                    limit=q.get("limit", 50), page_token=q.get("pageToken"),
                )  # fmt: skip
        except Exception as exc:
            return await refuse(exc)
        data = render.dumps(body)  # sent as render.Json would send it, without building the response
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(data)), JSON_TYPE]})
        await send({"type": "http.response.body", "body": data})
        count_request(self.metrics, scope, 200, time.perf_counter() - start)
        return True
