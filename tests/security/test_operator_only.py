"""What only the installation's operators see, tried against a real server with two
organizations, an operator, a team-scoped key, a read-only key and a JWT tenant: /metrics
(unless opened, or read with the scrape token), where node agents listen, and which VM of
another organization holds a host device. Tenants read their own figures through the API."""

import time
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import update

from vmplane.store.tables import nodes

from ..api.test_tenancy import SECRET, key_for, new_org
from ..support_pci import install, standard_host

SCRAPE = "s" * 16 + "c" * 16 + "rape"


def _jwt(sub: str, org: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "org": org, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def test_metrics_are_for_operators_and_the_scrape_token(server_factory: Any) -> None:
    server = await server_factory(jwt_secret=SECRET, metrics_token=SCRAPE)
    org_b, b = await new_org(server, "acme", "wile")
    await server.create({"name": "operators-vm"})
    assert (await b.post("/api/v1/vms", json={"name": "tenant-vm"})).status_code == 202
    owner = server.client
    assert (await owner.post("/api/v1/teams", json={"name": "ops"})).status_code == 201
    callers = {
        "tenant owner": b,
        "tenant JWT": httpx.AsyncClient(base_url=server.url, headers=_jwt("wile", org_b)),
        "member of the bootstrap org": server.client_with(await key_for(owner, "mo", "member")),
        "team-scoped admin": server.client_with(await key_for(owner, "tam", "admin", teamId="ops")),
    }
    for who, client in callers.items():
        r = await client.get("/metrics")
        assert r.status_code == 403, (who, r.status_code)
        assert "vmplane_vms" not in r.text and "tenant" in r.json()["error"]
    anon = httpx.AsyncClient(base_url=server.url)
    assert (await anon.get("/metrics")).status_code == 401
    r = await anon.get("/metrics", headers={"Authorization": "Bearer " + "x" * 36})
    assert r.status_code == 401 and "vmplane_vms" not in r.text
    # operators, read-only ones included, and the scrape token read it
    readonly_op = server.client_with(await key_for(owner, "rita", "admin", readOnly=True))
    for client, headers in ((owner, None), (readonly_op, None), (anon, {"Authorization": f"Bearer {SCRAPE}"})):
        r = await client.get("/metrics", headers=headers)
        assert r.status_code == 200 and "vmplane_vms{" in r.text
    # the scrape token opens /metrics and nothing else
    r = await anon.get("/api/v1/vms", headers={"Authorization": f"Bearer {SCRAPE}"})
    assert r.status_code == 401
    # and the tenant reads its own figures instead
    q = (await b.get("/api/v1/org/quotas")).json()
    assert q["orgId"] == org_b and q["usage"]["vms"] == 1 and sum(q["vmsByStatus"].values()) == 1
    usage = (await b.get("/api/v1/usage")).json()
    assert [i["name"] for i in usage["items"]] == ["tenant-vm"]
    for c in [*callers.values(), anon, readonly_op]:
        await c.aclose()


async def test_metrics_can_be_opened(server_factory: Any) -> None:
    server = await server_factory(metrics_auth=False)
    anon = httpx.AsyncClient(base_url=server.url)
    assert (await anon.get("/metrics")).status_code == 200
    await anon.aclose()


async def test_tenants_see_nodes_without_agent_urls_nor_others_vms_on_devices(server_factory: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = install(standard_host(tmp_path / "host"), monkeypatch)
    server = await server_factory(sim_nodes=1, sysfs_root=kernel.root, pci_allowlist=["10de:*", "8086:1521"], jwt_secret=SECRET)
    owner = server.client
    node_id = (await owner.get("/api/v1/nodes")).json()["items"][0]["id"]
    async with server.rt.store.write() as conn:  # as a node run by `vmplane agent` would be
        await conn.execute(update(nodes).where(nodes.c.id == node_id).values(agent_url="https://10.9.8.7:8444"))
    org_b, b = await new_org(server, "acme", "wile")
    assert (await b.post("/api/v1/teams", json={"name": "red"})).status_code == 201
    tenants = {
        "tenant owner": b,
        "tenant JWT": httpx.AsyncClient(base_url=server.url, headers=_jwt("wile", org_b)),
        "tenant team key": server.client_with(await key_for(b, "rudy", "member", teamId="red")),
        "tenant read-only key": server.client_with(await key_for(b, "rita", "viewer", readOnly=True)),
    }
    # where the agent listens: operators only
    assert (await owner.get("/api/v1/nodes")).json()["items"][0]["agentUrl"] == "https://10.9.8.7:8444"
    assert (await owner.get(f"/api/v1/nodes/{node_id}")).json()["agentUrl"] == "https://10.9.8.7:8444"
    for who, client in tenants.items():
        listed = (await client.get("/api/v1/nodes")).json()["items"]
        assert [n["id"] for n in listed] == [node_id] and listed[0]["agentUrl"] is None, who
        one = await client.get(f"/api/v1/nodes/{node_id}")
        assert one.status_code == 200 and one.json()["agentUrl"] is None and "10.9.8.7" not in one.text, who

    # devices: the operators' VM holds the GPU, the tenant's (in no team) the NIC
    ops = await server.create({"name": "gpu-1", "devices": {"pciPassthrough": ["10de:2204"]}})
    ops_vm = ops["tasks"][0]["resourceId"]
    r = await b.post("/api/v1/vms", json={"name": "nic-1", "devices": {"pciPassthrough": ["0000:02:00.0"]}})
    assert r.status_code == 202
    job = await server.wait_job(r.json()["jobId"], client=b)
    assert job["state"] == "succeeded", job
    b_vm = job["tasks"][0]["resourceId"]
    seen = {d["address"]: (d["assigned"], d["vmId"]) for d in (await owner.get(f"/api/v1/nodes/{node_id}/devices")).json()["items"]}
    assert seen == {"0000:01:00.0": (True, ops_vm), "0000:01:00.1": (True, ops_vm), "0000:02:00.0": (True, b_vm)}
    for who, client in tenants.items():
        r = await client.get(f"/api/v1/nodes/{node_id}/devices")
        assert r.status_code == 200 and ops_vm not in r.text, who
        seen = {d["address"]: (d["assigned"], d["vmId"]) for d in r.json()["items"]}
        mine = None if who == "tenant team key" else b_vm  # the team key does not see a VM of no team
        assert seen == {"0000:01:00.0": (True, None), "0000:01:00.1": (True, None), "0000:02:00.0": (True, mine)}, who
    for c in tenants.values():
        await c.aclose()
