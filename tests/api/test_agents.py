"""Node agents through the API, in one event loop: a control plane with no local node
(`sim_nodes=0`) and real `vmplane agent` daemons (sim driver) on loopback ports. Join tokens,
node credentials (stored as digests, kept 0600 by the agent, revocable), templates reaching the
node a VM goes to, cordon and drain, missed heartbeats."""

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from vmplane.drivers import remote_wire as wire
from vmplane.store.tables import node_tokens, nodes

from ..support import Server, new_pg_database
from ..support_agent import RunningAgent, join_token
from .test_tenancy import key_for


@pytest.fixture
async def fleet(request: pytest.FixtureRequest, server_factory: Any, tmp_path: Path) -> AsyncIterator[Any]:
    """A control plane with no local node (SQLite; `postgresql` as the indirect parameter)."""
    db = {}
    if getattr(request, "param", "sqlite") == "postgresql":
        db["database_url"] = await new_pg_database()
    server = await server_factory(sim_nodes=0, node_offline_seconds=2.0, sim_latency_ms=1, **db)
    agents: list[RunningAgent] = []

    async def add(token: str | None = None, name: str | None = None, data_dir: Path | None = None) -> RunningAgent:
        token = token or await join_token(server.client)
        a = await RunningAgent(server.url, token, data_dir or tmp_path / f"agent-{len(agents)}", hostname=name or f"sim-{len(agents)}").start()
        agents.append(a)
        return a

    class Fleet:
        pass

    f = Fleet()
    f.server, f.add, f.agents = server, add, agents  # type: ignore[attr-defined]
    yield f
    for a in agents:
        if a.task is not None and not a.task.done():
            await a.stop()


async def node(server: Server, node_id: str) -> dict[str, Any]:
    r = await server.client.get(f"/api/v1/nodes/{node_id}")
    assert r.status_code == 200, r.text
    return r.json()


async def wait_for(cond: Any, timeout: float = 10, what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await cond()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met after {timeout} s")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
async def test_join_tokens_are_for_operators_shown_once_and_checked(fleet: Any) -> None:
    server: Server = fleet.server
    c = server.client
    r = await c.post("/api/v1/nodes/tokens", json={"description": "rack 4", "oneTime": True, "expiresInSeconds": 3600})
    assert r.status_code == 201
    t = r.json()
    assert t["token"].startswith("vmj_") and t["oneTime"] and t["expiresAt"] and t["uses"] == 0
    listed = (await c.get("/api/v1/nodes/tokens")).json()["items"]
    assert [x["id"] for x in listed] == [t["id"]] and "token" not in listed[0]
    async with server.rt.store.read() as conn:
        row = (await conn.execute(select(node_tokens))).one()
    assert row.digest == hashlib.sha256(t["token"].encode()).hexdigest()  # only a digest is kept
    member = server.client_with(await key_for(c, "mia", "member"))
    assert (await member.post("/api/v1/nodes/tokens", json={})).status_code == 403
    assert (await member.get("/api/v1/nodes/tokens")).status_code == 403
    await member.aclose()
    assert (await c.post("/api/v1/nodes/tokens", json={"bogus": 1})).status_code == 400

    a = await fleet.add(t["token"])  # the one use
    with pytest.raises(AssertionError, match="status 3"):  # used up
        await fleet.add(t["token"])
    assert (await c.get("/api/v1/nodes/tokens")).json()["items"][0]["uses"] == 1
    multi = await join_token(c)
    listed = (await c.get("/api/v1/nodes/tokens")).json()["items"]
    assert (await c.delete(f"/api/v1/nodes/tokens/{listed[0]['id']}")).status_code == 204
    with pytest.raises(AssertionError, match="status 3"):  # revoked
        await fleet.add(multi)
    async with httpx.AsyncClient(base_url=server.url) as anon:
        r = await anon.post("/api/v1/agent/register", json={}, headers={"Authorization": "Bearer vmj_nope"})
        assert r.status_code == 401 and "join token" in r.json()["error"]
        assert (await anon.post("/api/v1/agent/heartbeat", headers={"Authorization": "Bearer vmn_nope"})).status_code == 401
    n = await node(server, a.node_id)
    assert n["driver"] == "remote" and n["hypervisor"] == "sim" and n["simulated"] and n["status"] == "online"
    assert n["agentUrl"] == f"http://127.0.0.1:{a.port}" and n["heartbeatAt"] and not n["cordoned"]
    audit = (await c.get("/api/v1/audit", params={"limit": 500})).json()["items"]
    assert any("joined with token" in i["actor"] for i in audit)
    assert not any(i["route"].endswith("/heartbeat") for i in audit)  # heartbeats are not audited


async def test_node_credential_is_a_digest_here_and_0600_there_and_revocable(fleet: Any, tmp_path: Path) -> None:
    server: Server = fleet.server
    a = await fleet.add()
    cred_file = a.cfg.data_dir / "agent.json"
    assert stat.S_IMODE(os.stat(cred_file).st_mode) == 0o600
    stored = json.loads(cred_file.read_text())
    assert stored["nodeId"] == a.node_id and stored["credential"].startswith("vmn_")
    async with server.rt.store.read() as conn:
        row = (await conn.execute(select(nodes).where(nodes.c.id == a.node_id))).one()
    assert row.credential_digest == hashlib.sha256(stored["credential"].encode()).hexdigest()
    assert stored["credential"] not in server.rt.store.url and stored["credential"] not in json.dumps(list(row._mapping.values()), default=str)

    # the control plane calls the agent with a key the agent checks
    async with httpx.AsyncClient() as raw:
        assert (await raw.get(f"{a.cfg.url}{wire.AGENT_PREFIX}/vms")).status_code == 401
    vm = (await server.create({"name": "keeps"}))["tasks"][0]["resourceId"]
    assert (await server.client.get(f"/api/v1/vms/{vm}")).json()["status"] == "running"

    # revoked: offline at once, its VMs unknown, the agent stops (status 3)
    member = server.client_with(await key_for(server.client, "max", "member"))
    assert (await member.delete(f"/api/v1/nodes/{a.node_id}/credential")).status_code == 403
    await member.aclose()
    assert (await server.client.delete(f"/api/v1/nodes/{a.node_id}/credential")).status_code == 204
    assert (await node(server, a.node_id))["status"] == "offline"
    assert (await server.client.get(f"/api/v1/vms/{vm}")).json()["status"] == "unknown"
    assert await asyncio.wait_for(a.task, 10) == 3  # type: ignore[arg-type]

    # it joins again with a new token: same node, its VMs reconciled
    again = await RunningAgent(server.url, await join_token(server.client), a.cfg.data_dir, hostname="sim-0").start()
    fleet.agents.append(again)
    assert again.node_id == a.node_id

    async def running() -> bool:
        return (await server.client.get(f"/api/v1/vms/{vm}")).json()["status"] == "running"

    await wait_for(running, what="VM reconciled after the re-join")
    assert (await node(server, a.node_id))["status"] == "online"


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
async def test_missed_heartbeats_mark_the_node_offline_and_jobs_fail_fast(fleet: Any) -> None:
    server: Server = fleet.server
    a, b = await fleet.add(), await fleet.add()
    created = await server.create([{"name": f"v{i}", "nodeId": n} for i, n in enumerate((a.node_id, a.node_id, b.node_id))])
    vms = [t["resourceId"] for t in created["tasks"]]
    stop = await server.client.post(f"/api/v1/vms/{vms[1]}/stop")
    assert (await server.wait_job(stop.json()["jobId"]))["state"] == "succeeded"
    assert await a.stop() == 0  # heartbeats end
    t0 = asyncio.get_running_loop().time()

    async def offline() -> bool:
        return (await node(server, a.node_id))["status"] == "offline"

    await wait_for(offline, timeout=5, what="node offline")
    print(f"[timing] offline detected {asyncio.get_running_loop().time() - t0:.2f} s after the last heartbeat (timeout 2 s)")
    states = {v: (await server.client.get(f"/api/v1/vms/{v}")).json()["status"] for v in vms}
    assert states == {vms[0]: "unknown", vms[1]: "unknown", vms[2]: "running"}
    t1 = asyncio.get_running_loop().time()
    r = await server.client.post(f"/api/v1/vms/{vms[0]}/stop")
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and asyncio.get_running_loop().time() - t1 < 2
    detail = (await server.client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert f"node {a.node_id} is offline" in detail["tasks"][0]["error"]
    assert (await server.client.get(f"/api/v1/vms/{vms[0]}")).json()["status"] == "unknown"
    placed = await server.create([{"name": f"new{i}"} for i in range(4)])
    for t in placed["tasks"]:
        assert (await server.client.get(f"/api/v1/vms/{t['resourceId']}")).json()["node"] == b.node_id
    async with server.rt.store.read() as conn:
        from vmplane.store import events as ev_q

        offline_events = [e for e in await ev_q.after(conn, 0, types=["node.offline"]) if e.resource == a.node_id]
    assert len(offline_events) == 1 and offline_events[0].data["vmsUnknown"] == 2

    # back: the agent says hello, the store learns the VMs' real states
    back = await RunningAgent(server.url, None, a.cfg.data_dir, hostname="sim-0").start()
    fleet.agents.append(back)

    async def reconciled() -> bool:
        got = [(await server.client.get(f"/api/v1/vms/{v}")).json()["status"] for v in vms[:2]]
        return got == ["running", "stopped"]

    await wait_for(reconciled, what="reconciled")
    assert (await node(server, a.node_id))["status"] == "online"


async def test_templates_reach_the_node_a_vm_goes_to_checked(fleet: Any, tmp_path: Path) -> None:
    """The image is validated on one node (pushed there) and fetched by the next one from
    the control plane's download endpoint, checked against its SHA-256."""
    server: Server = fleet.server
    a, b = await fleet.add(), await fleet.add()
    src = tmp_path / "base.qcow2"
    src.write_bytes(b"QFI\xfb" + os.urandom(1 << 20))
    r = await server.client.post("/api/v1/templates", json={"name": "base", "os": "linux", "sourceUrl": f"file://{src}"})
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded", job
    tpl = r.json()["templateId"]
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    have = [Path(x.cfg.data_dir / "images" / tpl / "disk") for x in (a, b)]
    assert sum(p.exists() for p in have) == 1  # validated on one node only
    for x in (a, b):
        await server.create({"name": f"from-{x.node_id}", "templateId": tpl, "nodeId": x.node_id})
    for p in have:
        assert hashlib.sha256(p.read_bytes()).hexdigest() == sha
    # the download endpoint wants a node credential, not a user's key
    path = f"/api/v1/agent/templates/{tpl}/files/disk"
    assert (await server.client.get(path)).status_code == 401
    cred = json.loads((a.cfg.data_dir / "agent.json").read_text())["credential"]
    async with httpx.AsyncClient(base_url=server.url) as c:
        ok = await c.get(path, headers={"Authorization": f"Bearer {cred}"})
        assert ok.status_code == 200 and hashlib.sha256(ok.content).hexdigest() == sha
        assert (await c.get(f"/api/v1/agent/templates/{tpl}/files/passwd", headers={"Authorization": f"Bearer {cred}"})).status_code == 404


@pytest.mark.parametrize("fleet", ["sqlite", "postgresql"], indirect=True)
async def test_cordon_and_drain(fleet: Any) -> None:
    server: Server = fleet.server
    c = server.client
    a, b = await fleet.add(), await fleet.add()
    created = await server.create([{"name": f"d{i}", "nodeId": a.node_id, "start": i == 0} for i in range(3)])
    running, *stopped = [t["resourceId"] for t in created["tasks"]]
    r = await c.post(f"/api/v1/nodes/{a.node_id}/cordon")
    assert r.status_code == 200 and r.json()["cordoned"] is True
    r = await c.post("/api/v1/vms", json={"name": "not-there", "nodeId": a.node_id})  # refused at once, nothing made
    assert r.status_code == 409 and r.json()["error"] == f"node {a.node_id} is cordoned", r.text
    placed = await server.create({"name": "elsewhere"})
    assert (await c.get(f"/api/v1/vms/{placed['tasks'][0]['resourceId']}")).json()["node"] == b.node_id

    r = await c.post(f"/api/v1/nodes/{a.node_id}/drain")
    assert r.status_code == 202 and sorted(r.json()["vmIds"]) == sorted(stopped)
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded" and job["type"] == "node-drain", job
    for v in stopped:
        vm = (await c.get(f"/api/v1/vms/{v}")).json()
        assert vm["node"] == b.node_id and vm["status"] == "stopped"
    assert (await c.get(f"/api/v1/vms/{running}")).json()["node"] == a.node_id  # running VMs stay
    ra = (await c.get(f"/api/v1/nodes/{a.node_id}/resources")).json()
    assert ra["cpuUsed"] == 1  # the moved VMs' claims went with them
    drivers = {x.node_id: x.agent.state.driver for x in (a, b)}  # type: ignore[union-attr]
    assert {v.vm_id for v in await drivers[a.node_id].list_vms()} == {running}
    assert set(stopped) <= {v.vm_id for v in await drivers[b.node_id].list_vms()}
    again = await c.post(f"/api/v1/nodes/{a.node_id}/drain")
    assert again.status_code == 200 and again.json() == {"jobId": None, "vmIds": []}
    assert (await c.post(f"/api/v1/nodes/{a.node_id}/uncordon")).json()["cordoned"] is False
    assert (await server.create({"name": "there-again", "nodeId": a.node_id}))["state"] == "succeeded"
    # a running VM does not move; migrating needs qemu nodes
    r = await c.post(f"/api/v1/vms/{running}/move", json={"targetNodeId": b.node_id})
    assert r.status_code == 409
    r = await c.post(f"/api/v1/vms/{running}/migrate", json={"targetNodeId": b.node_id})
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and "cannot migrate" in (await c.get(f"/api/v1/jobs/{job['id']}")).json()["tasks"][0]["error"]
    vm = (await c.get(f"/api/v1/vms/{running}")).json()
    assert vm["node"] == a.node_id and vm["status"] == "running"
    assert (await c.get(f"/api/v1/nodes/{b.node_id}/resources")).json()["cpuUsed"] == 3  # the failed claim was given back


async def test_a_delete_waits_for_its_node_to_come_back(fleet: Any) -> None:
    """A delete whose node is out of reach asks again until the node answers, then finishes: it
    failed at once before, leaving the VM `error` in the store ("delete did not finish"),
    holding its claim, whether or not its node had removed it (found by the chaos soak,
    bench/chaos.py: the store kept VMs their node no longer had)."""
    server: Server = fleet.server
    a = await fleet.add()
    created = await server.create({"name": "doomed", "nodeId": a.node_id})
    vm = created["tasks"][0]["resourceId"]
    assert await a.stop() == 0

    async def offline() -> bool:
        return (await node(server, a.node_id))["status"] == "offline"

    await wait_for(offline, timeout=5, what="node offline")
    r = await server.client.delete(f"/api/v1/vms/{vm}")
    assert r.status_code == 202, r.text
    await asyncio.sleep(2.5)  # it does not fail while the node is away
    assert (await server.client.get(f"/api/v1/jobs/{r.json()['jobId']}")).json()["state"] == "running"
    back = await RunningAgent(server.url, None, a.cfg.data_dir, hostname="sim-0").start()
    fleet.agents.append(back)
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded", job
    assert (await server.client.get(f"/api/v1/vms/{vm}")).status_code == 404
    state = json.loads((a.cfg.data_dir / "sim" / "sim-0.json").read_text())
    assert [v["id"] for v in state["vms"]] == []
    assert (await node(server, a.node_id))["resources"]["cpuUsed"] == 0


async def test_a_snapshot_delete_waits_for_its_node_to_come_back(fleet: Any) -> None:
    """Like a VM's delete: a snapshot's delete on a node out of reach asks again until the node
    answers (it failed at once, leaving the snapshot `ready` in the store after its node had
    removed it: found by the chaos soak, bench/chaos.py)."""
    server: Server = fleet.server
    a = await fleet.add()
    created = await server.create({"name": "snapped", "nodeId": a.node_id})
    vm = created["tasks"][0]["resourceId"]
    r = await server.client.post(f"/api/v1/vms/{vm}/snapshots", json={"name": "s1"})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap = r.json()["snapshotId"]
    assert await a.stop() == 0

    async def offline() -> bool:
        return (await node(server, a.node_id))["status"] == "offline"

    await wait_for(offline, timeout=5, what="node offline")
    d = await server.client.delete(f"/api/v1/snapshots/{snap}")
    assert d.status_code == 202, d.text
    await asyncio.sleep(2.5)
    assert (await server.client.get(f"/api/v1/jobs/{d.json()['jobId']}")).json()["state"] == "running"
    back = await RunningAgent(server.url, None, a.cfg.data_dir, hostname="sim-0").start()
    fleet.agents.append(back)
    assert (await server.wait_job(d.json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.get(f"/api/v1/snapshots/{snap}")).status_code == 404
    state = json.loads((a.cfg.data_dir / "sim" / "sim-0.json").read_text())
    assert snap not in state.get("snapshots", {})
