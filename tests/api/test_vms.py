"""The native VM API over real HTTP, on the sim driver."""

import asyncio
from typing import Any

import pytest

from ..support import Server


async def test_create_one_vm_and_see_it_everywhere(server: Server) -> None:
    c = server.client
    r = await c.post("/api/v1/vms", json={"name": "web-1", "tags": ["dev"], "resources": {"cpu": 2, "ramMb": 2048, "diskGb": 20}})
    assert r.status_code == 202
    job_id = r.json()["jobId"]
    assert r.headers["location"] == f"/api/v1/jobs/{job_id}"
    vm_id = r.json()["vmIds"][0]
    # listed at once, as provisioning or further along
    listed = (await c.get("/api/v1/vms")).json()["items"]
    assert [v["id"] for v in listed] == [vm_id]
    job = await server.wait_job(job_id)
    assert job["state"] == "succeeded" and job["progress"] == 100
    assert job["tasks"][0]["resourceId"] == vm_id
    vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert vm["status"] == "running" and vm["nodeId"] == vm["node"] and vm["node"].startswith("node-")
    assert vm["resources"] == {"cpu": 2, "ramMb": 2048, "diskGb": 20}
    assert vm["uptime"] is not None and vm["tags"] == ["dev"]
    by_uuid = (await c.get(f"/api/v1/vms/{vm['uuid']}")).json()
    assert by_uuid["id"] == vm_id
    node = (await c.get(f"/api/v1/nodes/{vm['nodeId']}/resources")).json()
    assert node["cpuUsed"] == 2 and node["ramMbUsed"] == 2048 and node["diskGbUsed"] == 20


async def test_start_false_leaves_it_stopped(server: Server) -> None:
    job = await server.create({"name": "cold", "start": False})
    assert job["state"] == "succeeded"
    vm = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
    assert vm["status"] == "stopped" and vm["uptime"] is None


async def test_bulk_create_100_vms_succeeds(server_factory: Any, database_url: str) -> None:
    server = await server_factory(sim_nodes=4, database_url=database_url)  # 128 vCPUs for 100 one-vCPU VMs
    job = await server.create([{"name": f"bulk-{i}"} for i in range(100)])
    assert job["state"] == "succeeded", job
    assert len(job["tasks"]) == 100 and all(t["state"] == "succeeded" for t in job["tasks"])
    await assert_used_matches_vms(server)


async def test_injected_failures_make_the_job_partial(server_factory: Any) -> None:
    server = await server_factory(sim_fail_pattern="-(3|7)$")
    job = await server.create([{"name": f"f-{i}"} for i in range(10)])
    assert job["state"] == "partial"
    failed = [t for t in job["tasks"] if t["state"] == "failed"]
    assert len(failed) == 2 and all("simulated failure" in t["error"] for t in failed)
    for t in failed:
        vm = (await server.client.get(f"/api/v1/vms/{t['resourceId']}")).json()
        assert vm["status"] == "error" and vm["nodeId"] is None and "simulated failure" in vm["error"]
    task = (await server.client.get(f"/api/v1/jobs/{job['id']}/tasks/{failed[0]['id']}")).json()
    assert any(": Error: simulated failure" in line for line in task["log"])
    assert task["log"][0][:4].isdigit() and task["log"][0][19:22] == "Z: "
    await assert_used_matches_vms(server)


async def test_a_create_with_no_room_is_refused_at_once_creating_nothing(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=2, sim_node_cpu=8, cpu_overcommit=1.0)
    c = server.client
    # bigger than any node could ever hold: 409 naming the field and the setting
    r = await c.post("/api/v1/vms", json=[{"name": "small", "resources": {"cpu": 2, "ramMb": 512, "diskGb": 10}},
                                          {"name": "huge", "resources": {"cpu": 64, "ramMb": 512, "diskGb": 10}}])  # fmt: skip
    assert r.status_code == 409, r.text
    assert r.json()["code"] == "no_capacity" and r.json()["details"]["field"] == "[1].resources.cpu"
    assert r.json()["error"] == "[1].resources.cpu: 64 vCPUs is more than any node can hold (at most 8: node-1's 8 vCPUs x VMPLANE_CPU_OVERCOMMIT=1.0)"
    # each fits alone, not all together: the whole request is refused, nothing is made
    r = await c.post("/api/v1/vms", json=[{"name": f"w-{i}", "resources": {"cpu": 6, "ramMb": 512, "diskGb": 10}} for i in range(3)])
    assert r.status_code == 409, r.text
    assert r.json()["error"].startswith("[2]: no node has 6 free vCPUs (the least full, node-1: 6 of 8 vCPUs claimed at VMPLANE_CPU_OVERCOMMIT=1.0)")
    assert (await c.get("/api/v1/vms")).json()["items"] == []
    assert (await c.get("/api/v1/jobs")).json()["items"] == []
    await assert_used_matches_vms(server)


async def test_default_overcommit_lets_stopped_vms_keep_their_claim(server_factory: Any) -> None:
    """A 2-core node holds 8 one-vCPU VMs at the default CPU overcommit (4.0, as Nova); a
    stopped VM keeps its claim, so its start never fails for room; the 9th create is refused
    at once, naming the setting, and leaves no `error` VM."""
    server = await server_factory(sim_nodes=1, sim_node_cpu=2)
    c = server.client
    job = await server.create([{"name": f"s-{i}", "start": i % 2 == 0, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}} for i in range(8)])
    assert job["state"] == "succeeded", job
    r = await c.post("/api/v1/vms", json={"name": "ninth", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "no node has 1 free vCPU (node-1: 8 of 8 vCPUs claimed at VMPLANE_CPU_OVERCOMMIT=4.0)"
    vms = (await c.get("/api/v1/vms")).json()["items"]
    assert len(vms) == 8 and not any(v["status"] == "error" for v in vms)
    stopped = [v["id"] for v in vms if v["status"] == "stopped"]
    assert len(stopped) == 4
    for vm_id in stopped:
        r = await c.post(f"/api/v1/vms/{vm_id}/start")
        assert r.status_code == 202, r.text
        assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    await assert_used_matches_vms(server)


async def test_concurrent_creates_never_overcommit(server_factory: Any, database_url: str) -> None:
    server = await server_factory(
        sim_nodes=3, sim_node_cpu=10, sim_latency_ms=1, job_concurrency=32, database_url=database_url, cpu_overcommit=1.0
    )
    c = server.client

    async def one(i: int) -> str | None:
        r = await c.post("/api/v1/vms", json={"name": f"cc-{i}", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
        if r.status_code == 409:  # refused at once: the nodes were full when it came
            assert r.json()["error"].startswith("no node has 1 free vCPU"), r.text
            return None
        assert r.status_code == 202, r.text
        return str(r.json()["jobId"])

    job_ids = [j for j in await asyncio.gather(*(one(i) for i in range(200))) if j is not None]
    jobs = [await server.wait_job(j) for j in job_ids]
    ok = [j for j in jobs if j["state"] == "succeeded"]
    assert len(ok) == 30  # 3 nodes × 10 vCPUs
    assert all(j["tasks"][0]["error"].startswith("no node has 1 free vCPU") for j in jobs if j["state"] == "failed")
    for n in (await c.get("/api/v1/nodes")).json()["items"]:
        assert n["resources"]["cpuUsed"] <= n["resources"]["cpuTotal"]
    await assert_used_matches_vms(server)


async def assert_used_matches_vms(server: Server) -> None:
    c = server.client
    vms: list[dict[str, Any]] = []
    token = None
    while True:
        page = (await c.get("/api/v1/vms", params={"limit": 500, **({"pageToken": token} if token else {})})).json()
        vms += page["items"]
        token = page["nextPageToken"]
        if not token:
            break
    totals: dict[str, list[int]] = {}
    for v in vms:
        if v["nodeId"]:
            t = totals.setdefault(v["nodeId"], [0, 0, 0])
            t[0] += v["resources"]["cpu"]
            t[1] += v["resources"]["ramMb"]
            t[2] += v["resources"]["diskGb"]
    for n in (await c.get("/api/v1/nodes", params={"limit": 500})).json()["items"]:
        r = n["resources"]
        assert [r["cpuUsed"], r["ramMbUsed"], r["diskGbUsed"]] == totals.get(n["id"], [0, 0, 0]), n["id"]
    cluster = (await c.get("/api/v1/cluster/resources")).json()
    assert cluster["cpuUsed"] == sum(t[0] for t in totals.values())


async def test_list_filters_and_pagination_during_creates(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=4)
    c = server.client
    await server.create([{"name": f"p-{i}", "tags": ["even" if i % 2 == 0 else "odd"]} for i in range(30)])
    evens = (await c.get("/api/v1/vms", params={"tag": "even", "limit": 500})).json()["items"]
    assert len(evens) == 15
    assert (await c.get("/api/v1/vms", params={"name": "p-3"})).json()["items"][0]["name"] == "p-3"
    assert all(v["status"] == "running" for v in (await c.get("/api/v1/vms", params={"status": "running"})).json()["items"])
    node = evens[0]["node"]
    assert all(v["node"] == node for v in (await c.get("/api/v1/vms", params={"node": node})).json()["items"])

    # page through while more VMs are being created: each VM that existed is seen exactly once
    before = {v["id"] for v in (await c.get("/api/v1/vms", params={"limit": 500})).json()["items"]}
    creating = asyncio.create_task(server.create([{"name": f"late-{i}"} for i in range(40)]))
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"limit": 7}
        if token:
            params["pageToken"] = token
        page = (await c.get("/api/v1/vms", params=params)).json()
        seen += [v["id"] for v in page["items"]]
        token = page["nextPageToken"]
        if not token:
            break
        await asyncio.sleep(0.01)
    await creating
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


async def test_patch_resizes_renames_and_retags(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "r1", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
    vm_id = job["tasks"][0]["resourceId"]
    r = await c.patch(f"/api/v1/vms/{vm_id}", json={"name": "r1-big", "tags": ["prod"], "resources": {"cpu": 4, "diskGb": 30}})
    assert r.status_code == 202
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert vm["name"] == "r1-big" and vm["tags"] == ["prod"] and vm["resources"] == {"cpu": 4, "ramMb": 512, "diskGb": 30}
    await assert_used_matches_vms(server)
    r = await c.patch(f"/api/v1/vms/{vm_id}", json={"resources": {"diskGb": 5}})
    assert r.status_code == 400 and r.json()["details"]["field"] == "resources.diskGb"


async def test_power_actions_and_wrong_state(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "pw"})
    vm_id = job["tasks"][0]["resourceId"]
    r = await c.post(f"/api/v1/vms/{vm_id}/start")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"
    for action, status in [("reboot", "running"), ("power-cycle", "running"), ("shutdown", "stopped"), ("start", "running"), ("stop", "stopped")]:
        r = await c.post(f"/api/v1/vms/{vm_id}/{action}")
        assert r.status_code == 202, (action, r.text)
        assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded", action
        assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == status, action
    assert (await c.post(f"/api/v1/vms/{vm_id}/shutdown")).status_code == 409
    types = {j["type"] for j in (await c.get("/api/v1/jobs")).json()["items"]}
    assert {"vm-reboot", "vm-power-cycle", "vm-shutdown", "vm-start", "vm-stop", "vm-create"} <= types


async def test_delete_one_and_many(server: Server) -> None:
    c = server.client
    job = await server.create([{"name": f"d-{i}"} for i in range(3)])
    ids = [t["resourceId"] for t in job["tasks"]]
    r = await c.delete(f"/api/v1/vms/{ids[0]}")
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await c.get(f"/api/v1/vms/{ids[0]}")).status_code == 404
    r = await c.request("DELETE", "/api/v1/vms", json={"vmIds": ids[1:] + ["vm-nope00000000"]})
    assert r.status_code == 202  # the known ones go; the wrong id fails its own task (tests/api/test_bulk_partial.py)
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "partial"
    assert (await c.get("/api/v1/vms")).json()["items"] == []
    cluster = (await c.get("/api/v1/cluster/resources")).json()
    assert cluster["cpuUsed"] == cluster["ramMbUsed"] == cluster["diskGbUsed"] == 0


async def test_duplicate_names_conflict(server: Server) -> None:
    c = server.client
    await server.create({"name": "dup"})
    r = await c.post("/api/v1/vms", json={"name": "dup"})
    assert r.status_code == 409 and "dup" in r.json()["error"]
    r = await c.post("/api/v1/vms", json=[{"name": "x"}, {"name": "x"}])
    assert r.status_code == 400 and r.json()["details"]["field"] == "[1].name"
    assert len((await c.get("/api/v1/vms")).json()["items"]) == 1


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "bad_name!"}, "name"),
        ({"name": "-lead"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({"name": ""}, "name"),
        ({"name": "ok", "resources": {"cpu": -1, "ramMb": 512, "diskGb": 1}}, "resources.cpu"),
        ({"name": "ok", "resources": {"cpu": "4", "ramMb": 512, "diskGb": 1}}, "resources.cpu"),
        ({"name": "ok", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 0}}, "resources.diskGb"),
        ({"name": "ok", "colour": "blue"}, "colour"),
        ({"name": 5}, "name"),
        ([{"name": "fine"}, {"name": "ok", "tags": ["no spaces"]}], "[1].tags[0]"),
        ({"name": "ok", "templateId": "tpl-missing"}, "templateId"),
        ({"name": "ok", "nodeId": "node-99"}, "nodeId"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
async def test_bad_input_is_400_naming_the_field_and_stores_nothing(server: Server, body: Any, field: str) -> None:
    r = await server.client.post("/api/v1/vms", json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["code"] == "invalid_request" and err["details"]["field"] == field and err["error"]
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []
    assert (await server.client.get("/api/v1/jobs")).json()["items"] == []


async def test_malformed_json_and_huge_bodies(server: Server) -> None:
    c = server.client
    r = await c.post("/api/v1/vms", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = await c.post("/api/v1/vms", content=b"x" * (10 * 1024 * 1024), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = await c.patch("/api/v1/vms/vm-x", content=b"[", headers={"content-type": "application/json"})
    assert r.status_code in (400, 404)
    r = await c.get("/api/v1/vms", params={"limit": 501})
    assert r.status_code == 400 and r.json()["details"]["field"] == "limit"
    r = await c.get("/api/v1/vms", params={"pageToken": "garbage"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "pageToken"
    assert (await c.get("/api/v1/vms/vm-doesnotexist")).status_code == 404
    assert (await c.get("/api/v1/nope")).status_code == 404
    assert (await c.get("/api/v1/vms")).json()["items"] == []


async def test_idempotency_key_returns_the_first_job(server: Server) -> None:
    c = server.client
    h = {"Idempotency-Key": "create-abc"}
    r1 = await c.post("/api/v1/vms", json={"name": "idem"}, headers=h)
    r2 = await c.post("/api/v1/vms", json={"name": "idem"}, headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r1.json() == r2.json() and r2.headers.get("idempotent-replayed") == "true"
    assert len((await c.get("/api/v1/jobs")).json()["items"]) == 1
    r3 = await c.post("/api/v1/vms", json={"name": "other"}, headers=h)
    assert r3.status_code == 409
    # another caller may use the same key
    assert (await c.post("/api/v1/users", json={"name": "bob", "role": "member"})).status_code == 201
    bob = (await c.post("/api/v1/api-keys", json={"name": "bob's", "userId": "bob"})).json()["key"]
    r4 = await c.post("/api/v1/vms", json={"name": "other"}, headers={**h, "X-API-Key": bob})
    assert r4.status_code == 202 and r4.json()["jobId"] != r1.json()["jobId"]


async def test_cancel_stops_queued_tasks_and_cleans_up(server_factory: Any) -> None:
    server = await server_factory(sim_latency_ms=200, job_concurrency=2)
    c = server.client
    r = await c.post("/api/v1/vms", json=[{"name": f"cx-{i}"} for i in range(10)])
    job_id = r.json()["jobId"]
    await asyncio.sleep(0.1)
    r = await c.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202
    job = await server.wait_job(job_id)
    assert job["state"] == "cancelled"
    cancelled = [t for t in job["tasks"] if t["state"] == "cancelled"]
    assert len(cancelled) >= 8
    names = {v["name"] for v in (await c.get("/api/v1/vms")).json()["items"]}
    assert len(names) == 10 - len(cancelled)  # cancelled creates leave no VM behind
    assert (await c.post(f"/api/v1/jobs/{job_id}/cancel")).status_code == 409
    await assert_used_matches_vms(server)


async def test_power_request_queued_behind_create_is_judged_in_order(server_factory: Any) -> None:
    server = await server_factory(sim_latency_ms=100)
    c = server.client
    r = await c.post("/api/v1/vms", json={"name": "seq"})
    vm_id = r.json()["vmIds"][0]
    stop = await c.post(f"/api/v1/vms/{vm_id}/stop")
    assert stop.status_code == 202
    await server.wait_job(r.json()["jobId"])
    assert (await server.wait_job(stop.json()["jobId"]))["state"] == "succeeded"
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "stopped"


async def test_a_worker_never_requeues_its_own_running_task(server_factory: Any) -> None:
    from sqlalchemy import update

    from vmplane.store.tables import tasks

    server = await server_factory(sim_latency_ms=1500)
    r = await server.client.post("/api/v1/vms", json={"name": "slowpoke"})
    job_id = r.json()["jobId"]
    while (await server.client.get(f"/api/v1/jobs/{job_id}")).json()["state"] != "running":
        await asyncio.sleep(0.02)
    async with server.rt.store.write() as conn:  # as if a busy loop had let the lease lapse
        await conn.execute(update(tasks).where(tasks.c.job_id == job_id).values(lease_expires=0))
    await server.rt.engine.recover()
    job = await server.wait_job(job_id)
    assert job["state"] == "succeeded" and job["tasks"][0]["attempts"] == 1
