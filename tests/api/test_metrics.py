"""/metrics parses as Prometheus text and its counters move."""

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ..support import Server


async def scrape(server: Server) -> dict[str, Any]:
    r = await server.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[str, Any], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_parse_and_move(server: Server) -> None:
    before = await scrape(server)
    assert value(before, "vmplane_build_info", version="0.1.0", store="sqlite") == 1.0
    job = await server.create({"name": "m-1", "resources": {"cpu": 2, "ramMb": 1024, "diskGb": 10}})
    for _ in range(3):
        await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")
    await server.client.get("/api/v1/vms/vm-missing000000")
    after = await scrape(server)
    route = "/api/v1/vms/{vm_id}"
    assert value(after, "vmplane_api_requests_total", method="GET", route=route, status="200") - value(before, "vmplane_api_requests_total", method="GET", route=route, status="200") == 3
    assert value(after, "vmplane_api_requests_total", method="GET", route=route, status="404") >= 1
    assert value(after, "vmplane_api_requests_total", method="POST", route="/api/v1/vms", status="202") == 1
    assert value(after, "vmplane_api_request_duration_seconds_count", method="GET", route=route) >= 4
    assert value(after, "vmplane_jobs", type="vm-create", state="succeeded") == 1
    assert value(after, "vmplane_tasks", state="succeeded") == 1
    node = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()["node"]
    assert value(after, "vmplane_vms", status="running", node=node) == 1
    assert value(after, "vmplane_node_cpu_used", node=node) == 2
    assert value(after, "vmplane_node_cpu_total", node=node) == 32
    assert value(after, "vmplane_node_up", node=node) == 1
    assert ("vmplane_event_subscribers", ()) in after and ("vmplane_workers_running", ()) in after
    # raw paths never become labels (ids would explode the series count)
    assert not any("vm-" in dict(labels).get("route", "") for _, labels in after)
