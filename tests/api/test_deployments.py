"""Deployments (sim driver): the reconciler reaches N, recreates a deleted replica under its
name, scales up and down by number, replaces replicas of a node that went offline; and a VM's
config as versions (merge patches, history, what needs a restart)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from vmplane import clock
from vmplane.domain import NodeStatus
from vmplane.store import agents as ag_q
from vmplane.store import deployments as dep_q
from vmplane.store import events as ev_q
from vmplane.store import nodes as node_q

from ..support import Server, new_pg_database


async def wait_for(check: Callable[[], Awaitable[Any]], timeout: float = 30, what: str = "") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def settled(server: Server, name: str, want: int) -> dict[str, Any]:
    """The deployment once `want` replicas run and nothing else is left."""

    async def check() -> dict[str, Any] | None:
        d = (await server.client.get(f"/api/v1/deployments/{name}")).json()
        live = [r for r in d["replicaVms"] if not r["lost"]]
        ok = d["readyReplicas"] == want and len(live) == want and all(r["status"] == "running" for r in live)
        return d if ok else None

    return await wait_for(check, what=f"{name} at {want} ready replicas")


def names(d: dict[str, Any]) -> list[str]:
    return [r["name"] for r in d["replicaVms"] if not r["lost"]]


async def test_deployment_reconciles_replicas(server_factory: Any, database_url: str) -> None:
    server = await server_factory(sim_nodes=2, database_url=database_url)
    c = server.client
    config = {"resources": {"cpu_cores": 1, "memory_mb": 256}, "metadata": {"app": "web"}}
    r = await c.post("/api/v1/deployments", json={"name": "web", "replicas": 3, "config": config})
    assert r.status_code == 201, r.text
    assert r.json()["replicas"] == 3 and r.json()["config"] == config
    assert (await c.post("/api/v1/deployments", json={"name": "web", "replicas": 1})).status_code == 409
    bad = await c.post("/api/v1/deployments", json={"name": "Web_1", "replicas": 1})
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "name"
    bad = await c.post("/api/v1/deployments", json={"name": "x", "replicas": 1, "config": {"resources": {"cpu_cores": 0}}})
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "config.resources.cpu_cores"

    d = await settled(server, "web", 3)
    assert names(d) == ["web-1", "web-2", "web-3"]
    vm = (await c.get(f"/api/v1/vms/{d['replicaVms'][0]['vmId']}")).json()
    assert vm["resources"]["ramMb"] == 256

    # a deleted replica is recreated under its name
    old = d["replicaVms"][1]["vmId"]
    assert (await c.delete(f"/api/v1/vms/{old}")).status_code == 202
    d = await wait_for(
        lambda: _settled_without(server, "web", 3, old), what="web-2 recreated"
    )
    assert names(d) == ["web-1", "web-2", "web-3"]
    # a replica that died (stopped) is replaced too
    stopped = d["replicaVms"][2]["vmId"]
    await server.wait_job((await c.post(f"/api/v1/vms/{stopped}/stop")).json()["jobId"])
    d = await wait_for(lambda: _settled_without(server, "web", 3, stopped), what="web-3 replaced")

    # scale up fills the numbers in order; scale down removes the highest first
    assert (await c.patch("/api/v1/deployments/web", json={"replicas": 5})).json()["replicas"] == 5
    assert names(await settled(server, "web", 5)) == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    await c.patch("/api/v1/deployments/web", json={"replicas": 2})
    d = await settled(server, "web", 2)
    assert names(d) == ["web-1", "web-2"]

    # the node of web-1 goes offline: its replicas are lost and replaced on the other node
    lost = d["replicaVms"][0]
    lost_names = [r["name"] for r in d["replicaVms"] if r["nodeId"] == lost["nodeId"]]
    async with server.rt.store.write() as conn:
        assert await ag_q.mark_offline(conn, lost["nodeId"], None, clock.now())
        await ag_q.vms_unknown(conn, lost["nodeId"], clock.now())
    d = await settled(server, "web", 2)
    live = [r for r in d["replicaVms"] if not r["lost"]]
    assert [r["name"] for r in d["replicaVms"] if r["lost"]] == lost_names
    assert {r["nodeId"] for r in live} == {n for n in ("node-1", "node-2") if n != lost["nodeId"]}
    kept = [n for n in ("web-1", "web-2") if n not in lost_names]
    assert sorted(r["name"] for r in live) == kept + ["web-3", "web-4"][: 2 - len(kept)]  # lowest free numbers

    # the node comes back (reconciled with its hypervisor, as when an agent returns): web-1
    # counts again, and the surplus goes, highest first
    async with server.rt.store.write() as conn:
        await node_q.set_status(conn, lost["nodeId"], NodeStatus.ONLINE, clock.now())
    await server.rt.reconcile([(lost["nodeId"], server.rt.registry.driver(lost["nodeId"]))])
    d = await settled(server, "web", 2)
    assert names(d) == ["web-1", "web-2"] and d["replicaVms"][0]["vmId"] == lost["vmId"]

    async with server.rt.store.read() as conn:
        events = [e for e in await ev_q.after(conn, 0, types=["deployment.reconciled"])]
    actions = [(e.data["action"], e.data["replica"]) for e in events]
    assert ("create", "web-1") in actions and ("replace", "web-3") in actions and ("delete", "web-5") in actions
    assert any(a == ("create", "web-3") and "web-1" in e.data["reason"] for a, e in zip(actions, events))

    listed = (await c.get("/api/v1/deployments")).json()["items"]
    assert [x["name"] for x in listed] == ["web"]
    r = await c.delete("/api/v1/deployments/web")
    assert r.status_code == 202
    await server.wait_job(r.json()["jobId"])
    assert (await c.get("/api/v1/deployments/web")).status_code == 404


async def test_deployments_survive_a_restart(server_factory: Any, database_url: str) -> None:
    """Everything the reconciler needs is in the store: after a restart it carries on with
    the same replicas (none made twice) and follows a scale made then."""
    server = await server_factory(sim_nodes=2, database_url=database_url)
    assert (await server.client.post("/api/v1/deployments", json={"name": "db", "replicas": 2})).status_code == 201
    before = {r["name"]: r["vmId"] for r in (await settled(server, "db", 2))["replicaVms"]}
    await server.stop()
    server = await server_factory(sim_nodes=2, database_url=database_url)
    d = await settled(server, "db", 2)
    assert {r["name"]: r["vmId"] for r in d["replicaVms"]} == before
    await server.client.patch("/api/v1/deployments/db", json={"replicas": 3})
    d = await settled(server, "db", 3)
    assert names(d) == ["db-1", "db-2", "db-3"]


async def _settled_without(server: Server, name: str, want: int, gone_vm: str) -> dict[str, Any] | None:
    d = await settled(server, name, want)
    return d if gone_vm not in {r["vmId"] for r in d["replicaVms"]} else None


async def test_vm_config_versions(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "cfg", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
    vm_id = job["tasks"][0]["resourceId"]
    first = (await c.get(f"/api/v1/vms/{vm_id}/config")).json()
    assert first["version"] == 1 and first["config"]["resources"] == {"cpu_cores": 1, "memory_mb": 512}

    r = await c.patch(f"/api/v1/vms/{vm_id}/config", json={"resources": {"memory_mb": 768}, "metadata": {"team": "a", "tier": "b"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2 and body["restartRequired"] is True and body["applied"] == ["resources"] and body["jobId"]
    assert body["config"]["resources"] == {"cpu_cores": 1, "memory_mb": 768} and body["config"]["metadata"] == {"team": "a", "tier": "b"}
    await server.wait_job(body["jobId"])
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["resources"]["ramMb"] == 768

    r = await c.patch(f"/api/v1/vms/{vm_id}/config", json={"metadata": {"tier": None}, "kernel_cmdline": "quiet"})
    body = r.json()
    assert body["version"] == 3 and body["config"]["metadata"] == {"team": "a"} and body["restartRequired"] is False
    assert body["notApplied"] == ["kernel_cmdline"] and body["jobId"] is None

    bad = await c.patch(f"/api/v1/vms/{vm_id}/config", json={"resources": {"cpu_cores": "two"}})
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "config.resources.cpu_cores"
    history = (await c.get(f"/api/v1/vms/{vm_id}/config/history", params={"limit": 2})).json()["items"]
    assert [h["version"] for h in history] == [3, 2]
    full = (await c.get(f"/api/v1/vms/{vm_id}/config/history")).json()["items"]
    assert [h["version"] for h in full] == [3, 2, 1] and full[2]["config"] == first["config"]
    assert (await c.get(f"/api/v1/vms/{vm_id}/config/history", params={"limit": 0})).status_code == 400
    assert (await c.get("/api/v1/vms/vm-nope/config")).status_code == 404
    # the history goes with the VM
    await server.wait_job((await c.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"])
    await server.rt.vm_configs.forget_deleted()
    async with server.rt.store.read() as conn:
        assert list(await dep_q.config_history(conn, vm_id, 10)) == []


async def test_a_replica_no_node_has_room_for_is_announced_once(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=2)
    big = {"resources": {"cpu_cores": 1, "memory_mb": 100 * 1024}}  # one per 128 GiB sim node
    assert (await server.client.post("/api/v1/deployments", json={"name": "big", "replicas": 3, "config": big})).status_code == 201
    d = await settled(server, "big", 2)
    await asyncio.sleep(2.5)  # a few more passes
    d = (await server.client.get("/api/v1/deployments/big")).json()
    assert d["readyReplicas"] == 2 and names(d) == ["big-1", "big-2"]
    async with server.rt.store.read() as conn:
        refused = [e.data for e in await ev_q.after(conn, 0, types=["deployment.reconciled"]) if e.data.get("error")]
    assert len(refused) == 1 and refused[0]["replica"] == "big-3" and refused[0]["jobId"] is None, refused


@pytest.mark.postgres
async def test_two_replicas_of_vmplane_reconcile_once(server_factory: Any) -> None:
    """On one PostgreSQL only the leader reconciles: each replica VM is made once; when the
    leader stops the other takes over and follows a scale."""
    url = await new_pg_database()
    fast = {"coordination_seconds": 0.1, "lease_seconds": 1.0, "sim_nodes": 2}
    a = await server_factory(database_url=url, **fast)
    b = await server_factory(database_url=url, **fast)
    await wait_for(lambda: _async(a.rt.replicas.leader != b.rt.replicas.leader), what="one leader")
    assert (await a.client.post("/api/v1/deployments", json={"name": "ha", "replicas": 4})).status_code == 201
    await settled(b, "ha", 4)
    async with a.rt.store.read() as conn:
        creates = [e.data["replica"] for e in await ev_q.after(conn, 0, types=["deployment.reconciled"]) if e.data["action"] == "create"]
    assert sorted(creates) == ["ha-1", "ha-2", "ha-3", "ha-4"]
    leader, other = (a, b) if a.rt.replicas.leader else (b, a)
    await leader.stop()
    await wait_for(lambda: _async(other.rt.replicas.leader), what="the other replica leading")
    await other.client.patch("/api/v1/deployments/ha", json={"replicas": 2})
    assert names(await settled(other, "ha", 2)) == ["ha-1", "ha-2"]


async def _async(value: Any) -> Any:
    return value
