"""The HyperSDK face: the HyperSDK daemon's REST API (hypersdk-api.md here, the contract) over
the core — migration jobs are VM imports (services/imports.py), VM discovery and power are the
vSphere service (services/vsphere.py), schedules and webhooks are the core's.

Mounted at /compat/hypersdk of the main application; `vmplane serve --face hypersdk=HOST:PORT`
serves it at the root of a listener of its own, which HyperSDK's published Python client needs
(it drops the path of its base URL). Errors are `{"error": sentence, "timestamp": ...}`; request
validation answers 400. Where the document and the real daemon's clients differ, the face
answers with a superset both accept: docs/hypersdk.md.

One router per resource of the document (health and status, jobs, schedules, webhooks, VM
discovery, the WebSocket), each a call into the core; what they share is in shared.py, the
wire format in wire.py, the translation of a job into a vmplane import in jobs.py (the jobs
endpoints are job_routes.py). Schedules and webhooks are the core's, marked as the face's own
(a schedule's `origin`, a webhook's `hypersdk` format): the face lists and addresses only those.
"""

from __future__ import annotations

import http
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.types import Scope

from .... import __version__, clock
from ....errors import VmplaneError
from ....events.formats import IMPORT_JOB_TYPE
from ...errors import validation_message
from ...metrics import TimedRequests, route_template
from ..common import Errors, build_face
from . import health, job_routes, schedules, vms, webhooks, ws
from .wire import HYPERSDK_STATUS, STATUS

if TYPE_CHECKING:
    from ....runtime import Runtime

PREFIX = "/compat/hypersdk"
CONTRACT = Path(__file__).with_name("hypersdk-api.md")

ROUTERS = (
    health.open_router, ws.open_router,
    health.router, job_routes.router, schedules.router, webhooks.router, vms.router,
)  # fmt: skip
"""the face's routers, in the order their routes match: the open ones (health, and the
WebSocket, which checks credentials itself), then those that need credentials (X-API-Key, as
HyperSDK's client sends its api_key, or Bearer)"""


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "timestamp": clock.rfc3339(clock.now())}, status_code=status)


def core_error(exc: VmplaneError) -> JSONResponse:
    return error(STATUS[exc.reason], exc.message)


ERRORS = Errors(
    http=error,
    core=core_error,
    validation=lambda errors: error(400, validation_message(errors)[0]),
)


class HyperSdkMetrics:
    """The document's `hypersdk_*` metrics: requests to this face (path relative to the face,
    status as Go's StatusText names it), import jobs by HyperSDK status (from the counts the
    scrape read), active workers, build info. Served at the root's /metrics beside vmplane's
    own, and alone (`document`) at the face's /metrics, as the daemon serves them."""

    def __init__(self, rt: Runtime, metrics: Any) -> None:
        self.rt = rt
        self.metrics = metrics
        self.document = CollectorRegistry(auto_describe=False)
        """the face's own /metrics: the document's metrics only"""
        registry: CollectorRegistry = metrics.registry
        self.requests = Counter("hypersdk_api_requests", "Total API requests", ["method", "path", "status"], registry=registry)
        self.duration = Histogram(
            "hypersdk_api_request_duration_seconds", "API request duration", ["method", "path"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        registry.register(self)
        for collector in (self.requests, self.duration, self):
            self.document.register(collector)

    async def render(self) -> bytes:
        """The face's /metrics document, its job counts read now."""
        await self.metrics.refresh()
        return bytes(generate_latest(self.document))

    def collect(self) -> Iterator[Any]:
        counts: dict[str, float] = {s: 0.0 for s in ("pending", "running", "completed", "failed", "cancelled")}
        for (type_, state), n in self.metrics.jobs_by_type_state().items():
            if type_ == IMPORT_JOB_TYPE:
                status = HYPERSDK_STATUS.get(state, state)
                counts[status] = counts.get(status, 0.0) + n
        g = GaugeMetricFamily("hypersdk_jobs_total", "Total jobs by status", labels=["status"])
        for status, n in sorted(counts.items()):
            g.add_metric([status], n)
        yield g
        yield GaugeMetricFamily("hypersdk_workers_active", "Active workers", value=self.rt.engine.running_count)
        g = GaugeMetricFamily("hypersdk_build_info", "Build information", labels=["version", "server"])
        g.add_metric([__version__, "vmplane"], 1.0)
        yield g


class CountRequests(TimedRequests):
    """Counts the face's requests into `hypersdk_api_requests_total` and its histogram."""

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        path = route_template(scope)
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = str(status)
        self.metrics.requests.labels(scope["method"], path, phrase).inc()
        self.metrics.duration.labels(scope["method"], path).observe(seconds)


def build(rt: Runtime, metrics: Any = None) -> FastAPI:
    """The face's application (mounted by api/faces.py); `metrics`: the main application's
    Metrics, which the face's `hypersdk_*` metrics join."""
    app = build_face("HyperSDK face", rt, ROUTERS, CONTRACT, ERRORS)
    app.state.started_at = clock.now()
    app.state.hypersdk_metrics = None
    if metrics is not None:
        app.state.hypersdk_metrics = HyperSdkMetrics(rt, metrics)
        app.add_middleware(CountRequests, metrics=app.state.hypersdk_metrics)
    return app
