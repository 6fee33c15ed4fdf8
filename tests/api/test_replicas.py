"""Two replicas (runtimes in this process) on one PostgreSQL database and one data dir:
one leader, the local nodes split between them and taken over when one stops, a create
placed on the other replica's node handed over to it, Idempotency-Key across replicas."""

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest

from ..support import Server, new_pg_database

pytestmark = pytest.mark.postgres
FAST = {"coordination_seconds": 0.1, "lease_seconds": 1.0, "cpu_overcommit": 1.0}
"""quick coordination; and a node full at its cores (the default overcommit, 4.0, would hold 4x)"""


async def until(check: Callable[[], Any], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        await asyncio.sleep(0.05)


async def pair(server_factory: Any, **settings: Any) -> tuple[Server, Server]:
    url = await new_pg_database()
    a = await server_factory(database_url=url, **FAST, **settings)
    b = await server_factory(database_url=url, **FAST, **settings)
    await until(lambda: a.rt.replicas.serving and b.rt.replicas.serving, "sharing the nodes")
    return a, b


async def test_one_leader_and_nodes_split_then_taken_over(server_factory: Any) -> None:
    a, b = await pair(server_factory, sim_nodes=4)
    await until(lambda: len(a.rt.replicas.serving) == len(b.rt.replicas.serving) == 2, "two nodes each")
    assert a.rt.replicas.serving | b.rt.replicas.serving == {"node-1", "node-2", "node-3", "node-4"}
    assert a.rt.replicas.leader != b.rt.replicas.leader
    leader, other = (a, b) if a.rt.replicas.leader else (b, a)
    await leader.stop()  # its session closes: its locks go with it
    await until(lambda: other.rt.replicas.leader, "leading")
    await until(lambda: len(other.rt.replicas.serving) == 4, "serving every node")
    job = await other.create([{"name": f"after-{i}"} for i in range(4)])
    assert job["state"] == "succeeded"


async def test_a_create_placed_on_the_other_replicas_node_is_handed_to_it(server_factory: Any) -> None:
    a, b = await pair(server_factory, sim_nodes=2, sim_node_cpu=2)
    (mine,), (theirs,) = a.rt.replicas.serving, b.rt.replicas.serving
    job = await a.create([{"name": f"fill-{i}", "nodeId": mine} for i in range(2)])
    assert job["state"] == "succeeded"  # A's node is full now
    await b.rt.engine.stop()  # B serves its node but runs no task: what A hands it waits
    r = await a.client.post("/api/v1/vms", json={"name": "overflow"})
    job_id = r.json()["jobId"]

    async def handed_over() -> bool:
        job = (await a.client.get(f"/api/v1/jobs/{job_id}")).json()
        task = job["tasks"][0]
        log = (await a.client.get(f"/api/v1/jobs/{job_id}/tasks/{task['id']}")).json()["log"]
        return task["state"] == "queued" and any("handed over to another replica" in line for line in log)

    await until(handed_over, "handed over")
    await asyncio.sleep(0.5)  # A never takes it back: it cannot run it
    job = (await a.client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["tasks"][0]["state"] == "queued" and job["tasks"][0]["attempts"] == 0
    await b.stop()  # A takes B's node over, and the create with it
    job = await a.wait_job(job_id)
    assert job["state"] == "succeeded", job
    vm = (await a.client.get(f"/api/v1/vms/{r.json()['vmIds'][0]}")).json()
    assert vm["nodeId"] == theirs and vm["status"] == "running"


async def test_replicas_on_different_data_dirs_have_their_own_nodes(server_factory: Any, tmp_path: Any) -> None:
    url = await new_pg_database()
    a = await server_factory(database_url=url, sim_nodes=2, sim_node_cpu=1, data_dir=tmp_path / "a", **FAST)
    (tmp_path / "b").mkdir()  # the store was bootstrapped by A: its key is the one to use
    (tmp_path / "b" / "admin-api-key").write_text((tmp_path / "a" / "admin-api-key").read_text())
    b = await server_factory(database_url=url, sim_nodes=2, sim_node_cpu=1, data_dir=tmp_path / "b", **FAST)
    assert a.rt.replicas.serving == {"node-1", "node-2"} and b.rt.replicas.serving == {"node-3", "node-4"}
    await until(lambda: b.rt.replicas.serving <= a.rt.replicas.elsewhere, "seeing B's nodes")
    # A create naming B's node is left to B; with A's nodes full, one placed by A goes to B's.
    job = await a.create([{"name": "named", "nodeId": "node-4"}, {"name": "a-1"}, {"name": "a-2"}, {"name": "spill"}])
    assert job["state"] == "succeeded", [(t["resourceId"], t["state"], t.get("error")) for t in job["tasks"]]
    vms = {v["name"]: v["nodeId"] for v in (await a.client.get("/api/v1/vms")).json()["items"]}
    assert vms["named"] == "node-4" and set(vms.values()) == {"node-1", "node-2", "node-3", "node-4"}
    # The nodes keep their ids when the replicas start again, each on its own data dir.
    await a.stop()
    await b.stop()
    a2 = await server_factory(database_url=url, sim_nodes=2, sim_node_cpu=1, data_dir=tmp_path / "a", **FAST)
    assert a2.rt.replicas.serving == {"node-1", "node-2"}
    r = await a2.client.get(f"/api/v1/vms/{next(v['id'] for v in (await a2.client.get('/api/v1/vms')).json()['items'] if v['nodeId'] == 'node-1')}")
    assert r.json()["status"] == "running"


async def test_idempotency_key_holds_across_replicas(server_factory: Any) -> None:
    a, b = await pair(server_factory)
    for i in range(5):
        headers = {"Idempotency-Key": f"key-{i}"}
        ra, rb = await asyncio.gather(
            a.client.post("/api/v1/vms", json=[{"name": f"idem-{i}"}], headers=headers),
            b.client.post("/api/v1/vms", json=[{"name": f"idem-{i}"}], headers=headers),
        )
        assert ra.status_code == rb.status_code == 202, (ra.text, rb.text)
        assert ra.json()["jobId"] == rb.json()["jobId"]
        assert {ra.headers.get("idempotent-replayed"), rb.headers.get("idempotent-replayed")} == {None, "true"}
        r = await b.client.post("/api/v1/vms", json=[{"name": f"other-{i}"}], headers=headers)
        assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict"
    jobs = (await a.client.get("/api/v1/jobs", params={"type": "vm-create"})).json()["items"]
    assert len(jobs) == 5
