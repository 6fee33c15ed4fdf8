"""Prometheus metrics at `/metrics` (names prefixed `vmplane_`).

Request counts and durations are counted as requests pass; everything else (jobs, tasks,
VMs, nodes, webhook deliveries, stream subscribers) is read from the store and the runtime
when Prometheus scrapes.
"""

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import Forbidden
from ..store import jobs as job_q
from ..store import metrics as metrics_q
from .deps import principal
from .middleware import StatusWatch

if TYPE_CHECKING:
    from ..runtime import Runtime

router = APIRouter(tags=["health"])


class Metrics:
    def __init__(self, rt: "Runtime") -> None:
        self.rt = rt
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "vmplane_api_requests", "API requests by method, route template and status", ["method", "route", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "vmplane_api_request_duration_seconds", "API request duration", ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self._snapshot: dict[str, Any] = {}
        self.registry.register(self)
        self.series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        """(method, route, status) -> its request counter and duration histogram: `labels()`
        looks them up under a lock, a few µs of every request"""

    async def refresh(self) -> None:
        async with self.rt.store.read() as conn:
            self._snapshot = {
                "jobs": await metrics_q.jobs_by_type_state(conn),
                "tasks": await job_q.count_by_state(conn),
                "vms": await metrics_q.vms_by_status_node(conn),
                "nodes": await metrics_q.node_rows(conn),
                "deliveries": await metrics_q.deliveries_by_status(conn),
            }

    def jobs_by_type_state(self) -> dict[tuple[str, str], int]:
        """Job counts as the last scrape read them (faces derive their own gauges from them)."""
        return dict(self._snapshot.get("jobs", {}))

    def collect(self) -> Iterator[Any]:
        s = self._snapshot
        info = InfoMetricFamily("vmplane_build", "vmplane build information")
        info.add_metric([], {"version": __version__, "store": self.rt.store.dialect})
        yield info
        g = GaugeMetricFamily("vmplane_jobs", "Jobs by type and state", labels=["type", "state"])
        for (type_, state), n in sorted(s.get("jobs", {}).items()):
            g.add_metric([type_, state], n)
        yield g
        g = GaugeMetricFamily("vmplane_tasks", "Tasks by state", labels=["state"])
        for state, n in sorted(s.get("tasks", {}).items()):
            g.add_metric([state], n)
        yield g
        yield GaugeMetricFamily("vmplane_workers_running", "Tasks this process is running now", value=self.rt.engine.running_count)
        yield GaugeMetricFamily("vmplane_replica_leader", "1 if this process runs the cron scheduler and housekeeping", value=float(self.rt.replicas.leader))
        g = GaugeMetricFamily("vmplane_node_served", "Local nodes this process serves now (1), or is handing over (0)", labels=["node"])
        for node_id in sorted(self.rt.replicas.serving):
            g.add_metric([node_id], 0.0 if node_id in self.rt.replicas.draining else 1.0)
        yield g
        g = GaugeMetricFamily("vmplane_vms", "VMs by status and node", labels=["status", "node"])
        for (status, node), n in sorted(s.get("vms", {}).items(), key=str):
            g.add_metric([status, node or ""], n)
        yield g
        for resource, unit in (("cpu", "vcpus"), ("ram_mb", "megabytes"), ("disk_gb", "gigabytes")):
            total = GaugeMetricFamily(f"vmplane_node_{resource}_total", f"Node capacity ({unit})", labels=["node"])
            used = GaugeMetricFamily(f"vmplane_node_{resource}_used", f"Claimed on the node ({unit})", labels=["node"])
            for n in s.get("nodes", []):
                total.add_metric([n.id], getattr(n, f"{resource}_total"))
                used.add_metric([n.id], getattr(n, f"{resource}_used"))
            yield total
            yield used
        g = GaugeMetricFamily("vmplane_node_up", "1 if the node is online", labels=["node"])
        for n in s.get("nodes", []):
            g.add_metric([n.id], 1.0 if n.status == "online" else 0.0)
        yield g
        g = GaugeMetricFamily("vmplane_webhook_deliveries", "Webhook deliveries by outcome", labels=["outcome"])
        for status, n in sorted(s.get("deliveries", {}).items()):
            g.add_metric([status], n)
        yield g
        c = CounterMetricFamily("vmplane_webhook_attempts", "Webhook delivery attempts by this process, by outcome", labels=["outcome"])
        for outcome, n in sorted(self.rt.webhook_delivery.outcomes.items()):
            c.add_metric([outcome], n)
        yield c
        yield GaugeMetricFamily("vmplane_event_subscribers", "Open event streams (SSE and WebSocket)", value=self.rt.events.subscriber_count)


class TimedRequests:
    """ASGI middleware that hands every HTTP request, once answered, to `record(scope,
    status, seconds)`: the one way requests are timed and counted (vmplane's metrics, and a
    face's own metric names beside them)."""

    def __init__(self, app: ASGIApp, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        watch = StatusWatch(send)
        try:
            await self.app(scope, receive, watch)
        finally:
            self.record(scope, watch.status, time.perf_counter() - start)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        raise NotImplementedError


class MetricsMiddleware(TimedRequests):
    """Counts every HTTP request by method, route template (not the raw path) and status."""

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        count_request(self.metrics, scope, status, seconds)


def count_request(metrics: "Metrics", scope: Scope, status: int, seconds: float) -> None:
    """Count one answered HTTP request (`vmplane_api_requests_total`, and its duration in the histogram)."""
    template = route_template(scope)
    method = scope["method"]
    series = metrics.series.get((method, template, status))
    if series is None:
        series = metrics.series[(method, template, status)] = (
            metrics.requests.labels(method, template, str(status)),
            metrics.duration.labels(method, template),
        )
    series[0].inc()
    series[1].observe(seconds)


def route_template(scope: Scope) -> str:
    """`/api/v1/vms/{vm_id}` for `/api/v1/vms/vm-3k9f…`: the path with its parameters' values
    put back as names, so ids never become label values. `unmatched` when no route matched."""
    if scope.get("route") is None:
        return "unmatched"
    params = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    return "/".join(f"{{{params.pop(seg)}}}" if seg in params else seg for seg in scope["path"].split("/"))


def check_access(request: Request, path: str = "/metrics") -> None:
    """Who may read installation-wide metrics (vmplane's, or a face's document of them):
    operators, or whoever holds the scrape token; anyone with VMPLANE_METRICS_AUTH=false."""
    if request.app.state.rt.settings.metrics_auth and not getattr(request.state, "metrics_scrape", False):
        if not principal(request).operator:
            raise Forbidden(f"{path} is for the installation's operators (tenants: GET /api/v1/org/quotas and /api/v1/usage)")


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus text format, installation-wide (every organization's VMs, every node's
    capacity): for operators, or whoever holds the scrape token (`Authorization: Bearer
    <VMPLANE_METRICS_TOKEN>`); open to all with VMPLANE_METRICS_AUTH=false. Tenants read
    their own figures at /api/v1/org/quotas and /api/v1/usage."""
    check_access(request)
    m: Metrics = request.app.state.metrics
    await m.refresh()
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
