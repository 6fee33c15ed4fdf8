"""Nodes, cluster, health, OpenAPI."""

import asyncio
from typing import Any

from vmplane.store import nodes as node_q

from ..support import Server


async def test_nodes_and_cluster(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=3)
    c = server.client
    nodes = (await c.get("/api/v1/nodes")).json()
    assert [n["id"] for n in nodes["items"]] == ["node-1", "node-2", "node-3"] and nodes["nextPageToken"] is None
    n = nodes["items"][0]
    assert n["status"] == "online" and n["driver"] == "sim" and n["simulated"] is True
    assert n["resources"] == {"cpuTotal": 32, "cpuUsed": 0, "ramMbTotal": 131072, "ramMbUsed": 0, "diskGbTotal": 2000, "diskGbUsed": 0}
    page = (await c.get("/api/v1/nodes", params={"limit": 2})).json()
    assert len(page["items"]) == 2 and page["nextPageToken"]
    rest = (await c.get("/api/v1/nodes", params={"limit": 2, "pageToken": page["nextPageToken"]})).json()
    assert [x["id"] for x in rest["items"]] == ["node-3"]
    assert (await c.get("/api/v1/nodes/node-9")).status_code == 404
    cluster = (await c.get("/api/v1/cluster")).json()
    assert cluster["status"] == "healthy" and cluster["nodes"] == 3 and cluster["id"].startswith("cluster-")
    assert cluster["createdAt"].endswith("Z") and cluster["version"]
    res = (await c.get("/api/v1/cluster/resources")).json()
    assert res["cpuTotal"] == 96 and res["cpuUsed"] == 0


async def test_health_endpoints_and_docs(server: Server) -> None:
    c = server.client
    for path in ("/healthz", "/livez", "/readyz"):
        r = await c.get(path)
        assert r.status_code == 200 and r.json()["status"] == "ok", path
    spec = (await c.get("/openapi.json")).json()
    assert "/api/v1/vms" in spec["paths"] and "VmCreateIn" in spec["components"]["schemas"]
    assert (await c.get("/docs")).status_code == 200


async def test_readyz_is_503_until_ready(server: Server) -> None:
    server.rt.ready = False
    try:
        r = await server.client.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["nodes"] == "starting"
    finally:
        server.rt.ready = True


async def test_jobs_list_filters_and_pages(server: Server) -> None:
    c = server.client
    created = await server.create({"name": "j1"})
    vm_id = created["tasks"][0]["resourceId"]
    stop = await c.post(f"/api/v1/vms/{vm_id}/stop")
    await server.wait_job(stop.json()["jobId"])
    bad = await c.post(f"/api/v1/vms/{vm_id}/start")
    await server.wait_job(bad.json()["jobId"])
    all_jobs = (await c.get("/api/v1/jobs")).json()["items"]
    assert [j["type"] for j in all_jobs] == ["vm-start", "vm-stop", "vm-create"]  # newest first
    assert [j["id"] for j in (await c.get("/api/v1/jobs", params={"type": "vm-stop"})).json()["items"]] == [stop.json()["jobId"]]
    assert len((await c.get("/api/v1/jobs", params={"state": "succeeded"})).json()["items"]) == 3
    page = (await c.get("/api/v1/jobs", params={"limit": 2})).json()
    rest = (await c.get("/api/v1/jobs", params={"limit": 2, "pageToken": page["nextPageToken"]})).json()
    assert [j["id"] for j in page["items"] + rest["items"]] == [j["id"] for j in all_jobs]
    assert (await c.get("/api/v1/jobs", params={"state": "bogus"})).status_code == 400
    job = (await c.get(f"/api/v1/jobs/{created['id']}")).json()
    assert job["createdBy"] == "admin" and job["tasks"][0]["attempts"] == 1
    assert (await c.get(f"/api/v1/jobs/{created['id']}/tasks/task-nope")).status_code == 404
    assert (await c.get("/api/v1/jobs/job-nope")).status_code == 404


async def test_a_local_nodes_heartbeat_moves_on_a_timer_not_per_request(server_factory: Any) -> None:
    """The nodes this process serves beat every `heartbeat_seconds` (offline timeout / 5): a
    node's heartbeatAt tells when it was last alive, not when the server started."""
    server = await server_factory(sim_nodes=2, node_offline_seconds=1.0)  # a beat every 0.2 s

    async def heartbeats() -> list[float]:
        async with server.rt.store.read() as conn:
            return [n.heartbeat_at for n in await node_q.list_nodes(conn)]

    first = await heartbeats()
    await asyncio.sleep(0.7)
    later = await heartbeats()
    assert all(b > a for a, b in zip(first, later)), (first, later)
    # and on the wire, in whole seconds: it moves past the start within a couple of seconds
    started = [n["heartbeatAt"] for n in (await server.client.get("/api/v1/nodes")).json()["items"]]
    await asyncio.sleep(1.6)  # a beat every 0.2 s: past the next whole second with room to spare
    now = [n["heartbeatAt"] for n in (await server.client.get("/api/v1/nodes")).json()["items"]]
    assert all(b > a for a, b in zip(started, now)), (started, now)
    # reading nodes writes nothing: with the timer stopped, heartbeats stay where they are
    task = server.rt._heartbeats
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    still = await heartbeats()
    for _ in range(5):
        await server.client.get("/api/v1/nodes")
    assert await heartbeats() == still
