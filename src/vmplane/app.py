"""create_app(settings) builds the ASGI application; nothing happens at import time."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import __version__
from .api import docs, errors, faces, health, ui
from .api.fast_reads import FastReads
from .api.identity import Identity, Limits
from .api.mcp import McpHttp
from .api.metrics import Metrics, MetricsMiddleware
from .api.metrics import router as metrics_router
from .api.middleware import BodyLimit, Idempotency
from .api.native import isos as isos_api
from .api.native import templates as templates_api
from .api.schemas import VmCreateIn
from .config import Settings
from .drivers.base import HypervisorDriver
from .runtime import Runtime
from .services.scopes import ACTING_AS_HEADER, ACTING_SCOPE_HEADER, INTERNAL_HEADER

log = logging.getLogger("vmplane")


class Vmplane(FastAPI):
    """The application: FastAPI, with the hottest reads served before its routing (`fast_reads`)."""

    fast_reads: FastReads | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_reads
        if fast is not None and (wanted := fast.wants(scope)) is not None and await fast.serve(scope, receive, send, wanted):
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, nodes: list[tuple[str, HypervisorDriver]] | None = None) -> FastAPI:
    async def replay(method: str, path: str, body: Any, *, user_id: str, org_id: str, scope: str, idempotency_key: str) -> httpx.Response:
        """A schedule's request, sent to this very app as `user_id` of `org_id` with the scope
        of a stored credential (services/schedules.Replay; api/identity.py trusts the token)."""
        headers = {INTERNAL_HEADER: rt.internal_token, ACTING_AS_HEADER: f"{user_id}@{org_id}", ACTING_SCOPE_HEADER: scope}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://vmplane.internal") as client:
            return await client.request(method, path, json=body, headers={**headers, "Idempotency-Key": idempotency_key})

    rt = Runtime(settings, nodes, replay=replay)
    mcp_http = McpHttp(rt)  # the Model Context Protocol server at /mcp

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        try:
            async with mcp_http.run():
                yield
        finally:
            await rt.stop()

    app = Vmplane(
        title="vmplane",
        version=__version__,
        description="A self-hosted control plane for virtual machines. Native API.",
        lifespan=lifespan,
        docs_url=None,  # api/docs.py: /docs and /redoc with their assets served from the package
        redoc_url=None,
    )
    app.state.rt = rt
    errors.install(app)
    app.state.metrics = Metrics(rt)
    app.include_router(health.router)
    app.include_router(metrics_router)
    faces.install_all(app, rt)  # the native API, and every compat face under its prefix
    app.router.routes.append(Route("/mcp", mcp_http))
    docs.install(app)  # /docs (Swagger UI) and /redoc, offline
    ui.install(app)  # the web console at /ui (static files; the API key is entered in the page)
    # outermost last: metrics, then credentials and rate limits (an address over its budget is
    # refused before its body is read), then the body's limits, then Idempotency-Key replay
    app.add_middleware(Idempotency, store=rt.store)
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout_seconds, max_depth=settings.max_json_depth,
        streamed=frozenset({("POST", templates_api.UPLOAD_PATH), ("POST", isos_api.UPLOAD_PATH)}),
    )  # fmt: skip
    limits = Limits(rt)
    app.add_middleware(Identity, rt=rt, limits=limits)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            extra = VmCreateIn.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(extra.pop("$defs", {}))
            components["VmCreateIn"] = extra
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    keep_route_versions(app)
    app.fast_reads = FastReads(app, rt, Identity(app, rt, limits), app.state.metrics)
    return app


def keep_route_versions(app: FastAPI) -> None:
    """Make FastAPI's routing stop re-walking the route tree on every request.

    FastAPI (0.165) applies an included router lazily: to match a request it asks each included
    router, at every level of inclusion and twice per level, for its `_get_routes_version()`,
    which walks all the routes beneath it to see whether any changed. With the native face's
    148 routes three levels deep that walk was the largest cost vmplane added to a single VM
    GET (28 % of its time in bench/floor.py's profile, ~100 µs a request). vmplane adds no
    route to an included router once the app is built, so each router's version is computed
    here once and answered from then on while the router's own routes are unchanged (a router
    that changes anyway is walked again, as FastAPI would: nothing is ever routed stale).
    Without that private method (another FastAPI), this does nothing."""
    done: set[int] = set()

    def keep(routes: list[Any]) -> None:
        for route in routes:
            router = getattr(route, "original_router", None)
            compute = getattr(type(router), "_get_routes_version", None)
            if router is None or compute is None or id(router) in done:
                continue
            done.add(id(router))
            keep(router.routes)
            version = compute(router)
            own = (router._routes_version, len(router.routes))

            def routes_version(
                seen: set[int] | None = None, router: Any = router, version: int = version, own: tuple[int, int] = own
            ) -> int:
                if (router._routes_version, len(router.routes)) == own:
                    return version
                return int(type(router)._get_routes_version(router, seen))

            router._get_routes_version = routes_version

    keep(app.router.routes)
