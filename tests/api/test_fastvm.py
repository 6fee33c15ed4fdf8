"""The FastVM face on sim nodes, as a FastVM client uses it: every answer is checked against
the contract (documented status, schema), and every documented status code is reached."""

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import websockets

from vmplane.drivers.sim import SimFaults

from ..support import Server
from ..support_fastvm import FAULTY, SCHEMA, FastVmClient, GuestSimDriver, documented

P = "/compat/fastvm"
NO_SUCH = "0b6f6e2c-9d3a-4f5e-8a61-2f1f3d4c5b6a"

# Documented codes vmplane never answers, and why (docs/fastvm.md says the same).
UNREACHABLE = {
    ("/healthz", "GET", 400): "a health check takes no input",
    ("/healthz", "GET", 500): "an unready store or runtime answers 503",
    ("/v1/org/quotas", "GET", 404): "a credential's organization always exists",
    ("/v1/vms/{id}/console/ws", "GET", 200): "plain HTTP requests are answered 426 (Upgrade Required)",
}


def guest_nodes(cpu: int = 6, latency: float = 0.005) -> list[tuple[str, GuestSimDriver]]:
    return [("node-1", GuestSimDriver(hostname="node-1", cpu=cpu, ram_mb=65536, disk_gb=2000, latency=latency, faults=SimFaults(name_pattern="^fail-")))]


@pytest.fixture
async def fv(server_factory: Any) -> AsyncIterator[tuple[Server, FastVmClient]]:
    """One node of 6 vCPUs, not overcommitted (a c8m16 never fits), creates of VMs named fail-… fail."""
    s = await server_factory(nodes=guest_nodes(), cpu_overcommit=1.0)
    client = FastVmClient(s.url + P, s.admin_key)
    yield s, client
    await client.aclose()


async def create(c: FastVmClient, **body: Any) -> dict[str, Any]:
    """POST /v1/vms (a c1m2 unless told otherwise; machineType=None leaves it out)."""
    r = await c.call("POST", "/v1/vms", json={k: v for k, v in {"machineType": "c1m2", **body}.items() if v is not None})
    assert r.status_code == 201, r.text
    return r.json()


async def test_vm_lifecycle_shapes_and_status_mapping(fv: tuple[Server, FastVmClient]) -> None:
    s, c = fv
    vm = await create(c, name="web-1")
    assert vm["status"] == "running" and vm["machineName"] == "c1m2"
    assert (vm["cpu"], vm["memoryMiB"], vm["diskGiB"]) == (1, 2048, 10)
    assert vm["firewall"] == {"mode": "restricted", "ingress": []}  # the contract's default
    assert vm["orgId"] == "org-default" and vm["deletedAt"] is None
    # the same VM through the native API
    native = (await s.client.get(f"/api/v1/vms/{vm['id']}")).json()
    assert native["uuid"] == vm["id"] and native["name"] == "web-1" and native["resources"] == {"cpu": 1, "ramMb": 2048, "diskGb": 10}

    big = await create(c, machineType="c4m8", diskGiB=40)
    assert (big["cpu"], big["memoryMiB"], big["diskGiB"], big["machineName"]) == (4, 8192, 40, "c4m8")
    assert [v["id"] for v in (await c.call("GET", "/v1/vms")).json()] == [vm["id"], big["id"]]

    r = await c.call("PATCH", "/v1/vms/{id}", id=vm["id"], json={"name": "web-renamed"})
    assert r.status_code == 200 and r.json()["name"] == "web-renamed"
    assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).json()["name"] == "web-renamed"

    # statuses: stopped through the native API reads as stopped
    r = await s.client.post(f"/api/v1/vms/{vm['id']}/stop")
    await s.wait_job(r.json()["jobId"])
    assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).json()["status"] == "stopped"

    r = await c.http.request("OPTIONS", f"/v1/vms/{vm['id']}")  # 405 lists what the path serves
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET, PATCH" and r.json() == {"error": "Method Not Allowed"}
    r = await c.call("DELETE", "/v1/vms/{id}", id=vm["id"])
    assert r.json() == {"id": vm["id"], "deleted": True}
    assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).status_code == 404
    assert (await c.call("DELETE", "/v1/vms/{id}", id=vm["id"])).status_code == 404


async def test_names_the_contract_allows_read_back_as_sent(fv: tuple[Server, FastVmClient]) -> None:
    """Up to 64 of any character: the name is the VM's display name, and a valid VM name is
    derived from it (unique in the organization: a name given twice is no conflict)."""
    s, c = fv
    spaced = await create(c, name="my web")
    again = await create(c, name="my web")
    long = await create(c, name="Ünïcødé ☕ " + "x" * 54)  # 64 characters
    assert (spaced["name"], again["name"], long["name"]) == ("my web", "my web", "Ünïcødé ☕ " + "x" * 54)
    for vm in (spaced, again, long):
        assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).json()["name"] == vm["name"]
    listed = {v["id"]: v["name"] for v in (await c.call("GET", "/v1/vms")).json()}
    assert listed == {spaced["id"]: "my web", again["id"]: "my web", long["id"]: long["name"]}
    native = {v["uuid"]: (v["name"], v["displayName"]) for v in (await s.client.get("/api/v1/vms")).json()["items"]}
    assert native == {spaced["id"]: ("my-web", "my web"), again["id"]: ("my-web-2", "my web"), long["id"]: ("Unic-de-" + "x" * 54, long["name"])}  # ø has no ASCII base

    r = await c.call("PATCH", "/v1/vms/{id}", id=again["id"], json={"name": "db: primary"})
    assert r.status_code == 200 and r.json()["name"] == "db: primary"
    assert (await c.call("GET", "/v1/vms/{id}", id=again["id"])).json()["name"] == "db: primary"
    assert (await s.client.get(f"/api/v1/vms/{again['id']}")).json()["name"] == "db-primary"
    r = await c.call("PATCH", "/v1/vms/{id}", id=again["id"], json={"name": "my web"})  # back: the freed name is free
    assert r.json()["name"] == "my web" and (await s.client.get(f"/api/v1/vms/{again['id']}")).json()["name"] == "my-web-2"
    r = await c.call("PATCH", "/v1/vms/{id}", id=spaced["id"], json={"name": "my-web"})  # a valid name: no display name apart
    assert r.json()["name"] == "my-web" and (await s.client.get(f"/api/v1/vms/{spaced['id']}")).json()["displayName"] == "my-web"

    unnamed = await create(c, name="")  # "" is no name: the VM is named after its id
    native_unnamed = (await s.client.get(f"/api/v1/vms/{unnamed['id']}")).json()
    assert unnamed["name"] == native_unnamed["name"] == native_unnamed["id"]
    for bad in ("", "x" * 65, "new\nline", "\u200bzero-width"):
        r = await c.call("PATCH", "/v1/vms/{id}", id=spaced["id"], json={"name": bad})
        assert r.status_code == 400 and r.json()["error"].startswith("name"), (bad, r.text)
    r = await c.call("POST", "/v1/vms", json={"machineType": "c1m2", "name": "nul\u0000"})
    assert r.status_code == 400 and r.json()["error"] == "name must be 1 to 64 printable characters (no control characters)"
    assert (await c.call("GET", "/v1/vms/{id}", id=spaced["id"])).json()["name"] == "my-web"
    assert len((await c.call("GET", "/v1/vms")).json()) == 4


async def test_a_rule_with_no_source_cidrs_admits_nothing(fv: tuple[Server, FastVmClient]) -> None:
    """`sourceCidrs: []` lists no network: the rule lets nothing in (left out, it is `::/0`);
    PUT and PATCH take it and it reads back as sent."""
    s, c = fv
    vm = await create(c, name="empty-cidrs")
    rule = {"protocol": "tcp", "portStart": 22, "sourceCidrs": []}
    r = await c.call("PUT", "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": "restricted", "ingress": [rule, {"protocol": "tcp", "portStart": 80}]})
    assert r.status_code == 200, r.text
    assert r.json()["firewall"]["ingress"] == [{**rule, "portEnd": 22}, {"protocol": "tcp", "portStart": 80, "portEnd": 80, "sourceCidrs": ["::/0"]}]
    native_id = (await s.client.get(f"/api/v1/vms/{vm['id']}")).json()["id"]
    node_fw = s.rt.registry.driver("node-1")._vms[native_id].spec.firewall
    assert node_fw.verdict("in", "tcp", 22, "2001:db8::5") == "DROP" and node_fw.verdict("in", "tcp", 80, "2001:db8::5") == "ACCEPT"
    r = await c.call("PATCH", "/v1/vms/{id}/firewall", id=vm["id"], json={"ingress": [{"protocol": "udp", "portStart": 53, "sourceCidrs": []}]})
    assert r.status_code == 200, r.text
    assert r.json()["firewall"] == {"mode": "restricted", "ingress": [{"protocol": "udp", "portStart": 53, "portEnd": 53, "sourceCidrs": []}]}
    assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).json()["firewall"] == r.json()["firewall"]


async def test_firewall_maps_onto_the_core_firewall_and_leaves_ipv4_alone(fv: tuple[Server, FastVmClient]) -> None:
    s, c = fv
    vm = await create(c, name="fw-1")
    # a rule someone set through the native API on IPv4 stays as it is
    r = await s.client.post(f"/api/v1/vms/{vm['id']}/firewall/rules", json={"type": "in", "action": "DROP", "proto": "tcp", "dport": "25", "source": "10.0.0.0/8"})
    assert r.status_code == 201
    policy = {"mode": "restricted", "ingress": [
        {"protocol": "tcp", "portStart": 22, "sourceCidrs": ["2001:db8::/32", "2001:DB8:FF::1/48"], "description": "ssh"},
        {"protocol": "udp", "portStart": 6000, "portEnd": 6010},
    ]}  # fmt: skip
    r = await c.call("PUT", "/v1/vms/{id}/firewall", id=vm["id"], json=policy)
    assert r.status_code == 200, r.text
    assert r.json()["firewall"] == {"mode": "restricted", "ingress": [
        {"protocol": "tcp", "portStart": 22, "portEnd": 22, "sourceCidrs": ["2001:db8::/32", "2001:db8:ff::/48"], "description": "ssh"},
        {"protocol": "udp", "portStart": 6000, "portEnd": 6010, "sourceCidrs": ["::/0"]},
    ]}  # fmt: skip
    fw = (await s.client.get(f"/api/v1/vms/{vm['id']}/firewall")).json()
    assert fw["enabled"] and fw["policyIn"] == fw["policyOut"] == "ACCEPT"
    assert [(x["action"], x.get("proto"), x.get("dport"), x.get("source")) for x in fw["rules"]] == [
        ("ACCEPT", "tcp", "22", "2001:db8::/32"),
        ("ACCEPT", "tcp", "22", "2001:db8:ff::/48"),
        ("ACCEPT", "udp", "6000:6010", "::/0"),
        ("DROP", None, None, "::/0"),
        ("DROP", "tcp", "25", "10.0.0.0/8"),
    ]
    # the node got it (the job ran before the answer)
    native_id = (await s.client.get(f"/api/v1/vms/{vm['id']}")).json()["id"]
    node_fw = s.rt.registry.driver("node-1")._vms[native_id].spec.firewall
    assert node_fw.verdict("in", "tcp", 22, "2001:db8::5") == "ACCEPT"
    assert node_fw.verdict("in", "tcp", 23, "2001:db8::5") == "DROP"
    assert node_fw.verdict("in", "tcp", 22, "2a00::1") == "DROP"
    assert node_fw.verdict("in", "tcp", 23, "192.0.2.7") == "ACCEPT"  # IPv4 is not the policy's

    # PATCH: the mode alone keeps the rules; the rules alone keep the mode
    r = await c.call("PATCH", "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": "open"})
    assert r.json()["firewall"]["mode"] == "open" and len(r.json()["firewall"]["ingress"]) == 2
    r = await c.call("PATCH", "/v1/vms/{id}/firewall", id=vm["id"], json={"ingress": []})
    assert r.json()["firewall"] == {"mode": "open", "ingress": []}
    r = await c.call("PATCH", "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": "restricted"})
    assert r.json()["firewall"] == {"mode": "restricted", "ingress": []}
    fw = (await s.client.get(f"/api/v1/vms/{vm['id']}/firewall")).json()
    assert [(x["action"], x.get("source")) for x in fw["rules"]] == [("DROP", "::/0"), ("DROP", "10.0.0.0/8")]

    # bad input names the field and changes nothing
    for body, field in (
        ({"mode": "closed"}, "mode"),
        ({"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 22, "sourceCidrs": ["10.0.0.0/8"]}]}, "ingress[0].sourceCidrs[0]"),
        ({"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 90, "portEnd": 80}]}, "ingress[0].portEnd"),
        ({"mode": "restricted", "ingress": [{"protocol": "icmp", "portStart": 1}]}, "ingress[0].protocol"),
        ({"ingress": [{"protocol": "tcp", "portStart": 0}]}, "ingress[0].portStart"),
    ):
        method = "PATCH" if "mode" not in body else "PUT"
        r = await c.call(method, "/v1/vms/{id}/firewall", id=vm["id"], json=body)
        assert r.status_code == 400 and r.json()["error"].startswith(field), (body, r.text)
    assert (await c.call("GET", "/v1/vms/{id}", id=vm["id"])).json()["firewall"] == {"mode": "restricted", "ingress": []}


async def test_snapshots_capture_the_firewall_and_clones_take_it(fv: tuple[Server, FastVmClient]) -> None:
    s, c = fv
    vm = await create(c, name="src", firewall={"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 443}]})
    assert vm["firewall"]["ingress"][0]["portStart"] == 443
    r = await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"], "name": "golden"})
    assert r.status_code == 201, r.text
    snap = r.json()
    assert snap["status"] == "ready" and snap["vmId"] == vm["id"] and snap["name"] == "golden"
    assert snap["firewall"] == vm["firewall"]
    # the snapshot keeps the firewall it captured when the VM's changes afterwards
    await c.call("PUT", "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": "open"})
    clone = await create(c, machineType=None, snapshotId=snap["id"], name="clone")
    assert clone["firewall"] == snap["firewall"] and clone["sourceName"] == "golden" and clone["diskGiB"] == 10
    # a firewall in the request wins; the disk may grow, never shrink
    grown = await create(c, machineType=None, snapshotId=snap["id"], diskGiB=25, firewall={"mode": "open"})
    assert grown["diskGiB"] == 25 and grown["firewall"]["mode"] == "open" and grown["machineName"] == "c1m2"

    unnamed = (await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"]})).json()
    assert unnamed["name"] and unnamed["id"] != snap["id"]
    r = await c.call("PATCH", "/v1/snapshots/{id}", id=snap["id"], json={"name": "golden-2"})
    assert r.status_code == 200 and r.json()["name"] == "golden-2"
    assert [x["name"] for x in (await c.call("GET", "/v1/snapshots")).json()] == ["golden-2", unnamed["name"]]
    # the native API shows the same snapshot under its uuid
    native = (await s.client.get(f"/api/v1/snapshots/{snap['id']}")).json()
    assert native["uuid"] == snap["id"] and native["name"] == "golden-2" and native["firewall"]["enabled"]

    r = await c.call("DELETE", "/v1/snapshots/{id}", id=snap["id"])
    assert r.status_code == 400 and "cloned" in r.json()["error"]  # its clones build on it
    for v in (clone, grown):
        assert (await c.call("DELETE", "/v1/vms/{id}", id=v["id"])).json()["deleted"] is True
    assert (await c.call("DELETE", "/v1/snapshots/{id}", id=snap["id"])).json() == {"id": snap["id"], "deleted": True}
    assert [x["id"] for x in (await c.call("GET", "/v1/snapshots")).json()] == [unnamed["id"]]
    assert (await c.call("PATCH", "/v1/snapshots/{id}", id=snap["id"], json={"name": "x"})).status_code == 404


async def test_exec_console_and_quotas(fv: tuple[Server, FastVmClient]) -> None:
    s, c = fv
    vm = await create(c, name="box")
    r = await c.call("POST", "/v1/vms/{id}/exec", id=vm["id"], json={"command": ["uname", "-a"], "timeoutSec": 5})
    assert r.json() == {"exitCode": 0, "stdout": "uname -a\n", "stderr": "", "timedOut": False, "stdoutTruncated": False, "stderrTruncated": False, "durationMs": 1}

    tok = (await c.call("POST", "/v1/vms/{id}/console-token", id=vm["id"])).json()
    assert tok["websocketPath"] == f"{P}/v1/vms/{vm['id']}/console/ws" and tok["expiresInSec"] == 60
    url = s.url.replace("http", "ws") + tok["websocketPath"] + f"?session={tok['token']}"
    async with websockets.connect(url) as ws:
        await ws.send("hello console")
        assert await ws.recv() == b"hello console"
    c.reached.add(("/v1/vms/{id}/console/ws", "GET", 101))
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:  # a token is good once
        async with websockets.connect(url):
            pass
    assert refused.value.response.status_code == 404 and b"unknown, used or expired" in refused.value.response.body

    q = (await c.call("GET", "/v1/org/quotas")).json()
    # no quota set: the limits are what the node can hand out; snapshots have no bound
    assert q == {"orgId": "org-default", "limits": {"vcpu": 6, "memoryMiB": 65536, "diskGiB": 2000, "snapshotCount": 2**31 - 1},
                 "usage": {"vcpu": 1, "memoryMiB": 2048, "diskGiB": 10, "snapshotCount": 0}}  # fmt: skip
    r = await s.client.put("/api/v1/orgs/org-default/quotas", json={"vcpu": 4, "snapshots": 3})
    assert r.status_code == 200, r.text
    q = (await c.call("GET", "/v1/org/quotas")).json()
    assert q["limits"]["vcpu"] == 4 and q["limits"]["snapshotCount"] == 3 and q["limits"]["memoryMiB"] == 65536


async def test_every_documented_status_code_is_reached(server_factory: Any, tmp_path: Path) -> None:
    s = await server_factory(nodes=guest_nodes(), cpu_overcommit=1.0)
    c = FastVmClient(s.url + P, s.admin_key)
    anon = FastVmClient(s.url + P, None)
    slow = await server_factory(nodes=guest_nodes(latency=0.3), compat_wait_seconds=0, data_dir=tmp_path / "slow", cpu_overcommit=1.0)
    slow_c = FastVmClient(slow.url + P, slow.admin_key)
    key = (await s.client.post("/api/v1/api-keys", json={"name": "viewer", "readOnly": True})).json()["key"]
    ro = FastVmClient(s.url + P, key)
    clients = (c, anon, slow_c, ro)
    try:
        for path in ("/healthz", "/livez", "/readyz"):
            assert (await anon.call("GET", path)).status_code == 200
        s.rt.ready = False  # as while starting or stopping
        assert (await anon.call("GET", "/healthz")).status_code == 503
        assert (await anon.call("GET", "/readyz")).status_code == 503
        s.rt.ready = True

        # create: 201, 202 (still provisioning), 400, 401, 403, 409, 502 (create failed: nothing
        # left behind), 503 (no node has room now; a VM larger than any node is 400)
        vm = await create(c, name="vm-a")
        r = await slow_c.call("POST", "/v1/vms", json={"machineType": "c1m2"})
        assert r.status_code == 202 and r.json()["status"] == "provisioning"
        assert (await slow_c.wait_running(r.json()["id"]))["status"] == "running"
        for body in ({}, {"machineType": "c1m2", "snapshotId": NO_SUCH}, {"machineType": "c3"}, {"machineType": "c1m2", "diskGiB": 5},
                     {"snapshotId": NO_SUCH}, {"snapshotId": "nope"}, {"machineType": "c1m2", "name": "tab\there"}):  # fmt: skip
            assert (await c.call("POST", "/v1/vms", json=body)).status_code == 400, body
        r = await c.call("POST", "/v1/vms", json={"machineType": "c1m2", "name": None})  # not nullable
        assert r.status_code == 400 and r.json()["error"].startswith("name:")
        assert (await c.call("POST", "/v1/vms", content=b"{not json", headers={"content-type": "application/json"})).status_code == 400
        assert (await anon.call("POST", "/v1/vms", json={"machineType": "c1m2"})).status_code == 401
        assert (await ro.call("POST", "/v1/vms", json={"machineType": "c1m2"})).status_code == 403
        # 409: the organization's VM quota (names are display names: a taken one is no conflict)
        assert (await s.client.put("/api/v1/orgs/org-default/quotas", json={"vms": 1})).status_code == 200
        assert (await c.call("POST", "/v1/vms", json={"machineType": "c1m2", "name": "vm-a"})).status_code == 409
        assert (await s.client.put("/api/v1/orgs/org-default/quotas", json={"vms": 100})).status_code == 200
        r = await c.call("POST", "/v1/vms", json={"machineType": "c1m2", "name": "fail-1"})
        assert r.status_code == 502 and "simulated failure" in r.json()["error"]
        r = await c.call("POST", "/v1/vms", json={"machineType": "c8m16"})  # no node is that large
        assert r.status_code == 400 and "larger than any node" in r.json()["error"]
        r = await c.call("POST", "/v1/vms", json={"machineType": "c1m2", "diskGiB": 10**6})
        assert r.status_code == 400 and r.json()["error"].startswith("diskGiB 1000000 is more than any node can hold")
        big = await create(c, machineType="c4m8")  # 5 of the node's 6 vCPUs are taken now
        r = await c.call("POST", "/v1/vms", json={"machineType": "c2m4"})
        assert r.status_code == 503 and "no node has 2 free vCPUs" in r.json()["error"]
        assert (await c.call("DELETE", "/v1/vms/{id}", id=big["id"])).json()["deleted"] is True
        assert sorted(v["name"] for v in (await c.call("GET", "/v1/vms")).json()) == ["vm-a"]  # the failed ones are gone

        # list
        assert (await anon.call("GET", "/v1/vms")).status_code == 401
        assert (await anon.call("GET", "/v1/snapshots")).status_code == 401
        # get / rename / delete: 400 (not a uuid, a name too long or with a control character), 401, 404, 502
        faulty = await create(c, name=f"{FAULTY}1")
        for method, template, extra in (
            ("GET", "/v1/vms/{id}", {}),
            ("PATCH", "/v1/vms/{id}", {"json": {"name": "x"}}),
            ("DELETE", "/v1/vms/{id}", {}),
            ("PUT", "/v1/vms/{id}/firewall", {"json": {"mode": "open"}}),
            ("PATCH", "/v1/vms/{id}/firewall", {"json": {"mode": "open"}}),
            ("POST", "/v1/vms/{id}/console-token", {}),
            ("POST", "/v1/vms/{id}/exec", {"json": {"command": ["true"]}}),
        ):
            assert (await c.call(method, template, id="not-a-uuid", **extra)).status_code == 400
            assert (await anon.call(method, template, id=vm["id"], **extra)).status_code == 401
            assert (await c.call(method, template, id=NO_SUCH, **extra)).status_code == 404
        assert (await c.call("PATCH", "/v1/vms/{id}", id=vm["id"], json={"name": "vm-b"})).status_code == 200
        assert (await c.call("PATCH", "/v1/vms/{id}", id=vm["id"], json={"name": "x" * 65})).status_code == 400
        assert (await c.call("PATCH", "/v1/vms/{id}", id=vm["id"], json={"name": "bell\a"})).status_code == 400
        assert (await c.call("PATCH", "/v1/vms/{id}", id=vm["id"], json={})).status_code == 400
        for method in ("PUT", "PATCH"):
            assert (await c.call(method, "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": "open"})).status_code == 200
            assert (await c.call(method, "/v1/vms/{id}/firewall", id=vm["id"], json={"mode": 3})).status_code == 400
            assert (await c.call(method, "/v1/vms/{id}/firewall", id=faulty["id"], json={"mode": "open"})).status_code == 502

        # exec: 200, 400, 409 (not running), 502 (the agent failed)
        assert (await c.call("POST", "/v1/vms/{id}/exec", id=vm["id"], json={"command": ["true"]})).status_code == 200
        assert (await c.call("POST", "/v1/vms/{id}/exec", id=vm["id"], json={"command": []})).status_code == 400
        assert (await c.call("POST", "/v1/vms/{id}/exec", id=vm["id"], json={"command": ["x"], "timeoutSec": 100000})).status_code == 400
        assert (await c.call("POST", "/v1/vms/{id}/exec", id=faulty["id"], json={"command": ["true"]})).status_code == 502

        # the console: token 200; WebSocket 101, 400, 404, 409 (refused upgrades carry the status);
        # plain HTTP 426 (and 400 without a session)
        tok = (await c.call("POST", "/v1/vms/{id}/console-token", id=vm["id"])).json()
        ws = s.url.replace("http", "ws") + tok["websocketPath"]
        for query, status in (("", 400), ("?session=wrong", 404)):
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                async with websockets.connect(ws + query):
                    pass
            assert refused.value.response.status_code == status
            c.reached.add(("/v1/vms/{id}/console/ws", "GET", status))
        async with websockets.connect(ws + f"?session={tok['token']}") as conn:
            await conn.send(b"x")
            assert await conn.recv() == b"x"
        c.reached.add(("/v1/vms/{id}/console/ws", "GET", 101))
        assert (await c.call("GET", "/v1/vms/{id}/console/ws", id=vm["id"], params={"session": "t"})).status_code == 426
        assert (await c.call("GET", "/v1/vms/{id}/console/ws", id=vm["id"])).status_code == 400
        assert (await c.call("GET", "/v1/vms/{id}/console/ws", id=NO_SUCH, params={"session": "t"})).status_code == 426
        tok = (await c.call("POST", "/v1/vms/{id}/console-token", id=vm["id"])).json()
        r = await s.client.post(f"/api/v1/vms/{vm['id']}/stop")
        await s.wait_job(r.json()["jobId"])
        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(ws + f"?session={tok['token']}"):
                pass
        assert refused.value.response.status_code == 409
        c.reached.add(("/v1/vms/{id}/console/ws", "GET", 409))
        assert (await c.call("POST", "/v1/vms/{id}/console-token", id=vm["id"])).status_code == 409
        assert (await c.call("POST", "/v1/vms/{id}/exec", id=vm["id"], json={"command": ["true"]})).status_code == 409

        # snapshots: 201, 400, 401, 404, 409 (quota), 502; rename and delete 200, 400, 401, 404
        snap = (await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"]})).json()
        assert [x["id"] for x in (await c.call("GET", "/v1/snapshots")).json()] == [snap["id"]]
        assert (await c.call("POST", "/v1/snapshots", json={"vmId": "nope"})).status_code == 400
        assert (await c.call("POST", "/v1/snapshots", json={"name": "x"})).status_code == 400
        assert (await anon.call("POST", "/v1/snapshots", json={"vmId": vm["id"]})).status_code == 401
        assert (await c.call("POST", "/v1/snapshots", json={"vmId": NO_SUCH})).status_code == 404
        assert (await c.call("POST", "/v1/snapshots", json={"vmId": faulty["id"]})).status_code == 502
        assert (await s.client.put("/api/v1/orgs/org-default/quotas", json={"snapshots": 1})).status_code == 200
        assert (await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"]})).status_code == 409
        for method, extra in (("PATCH", {"json": {"name": "renamed"}}), ("DELETE", {})):
            assert (await c.call(method, "/v1/snapshots/{id}", id="nope", **extra)).status_code == 400
            assert (await anon.call(method, "/v1/snapshots/{id}", id=snap["id"], **extra)).status_code == 401
            assert (await c.call(method, "/v1/snapshots/{id}", id=NO_SUCH, **extra)).status_code == 404
        assert (await c.call("PATCH", "/v1/snapshots/{id}", id=snap["id"], json={"name": "bad\x00name"})).status_code == 400
        assert (await c.call("PATCH", "/v1/snapshots/{id}", id=snap["id"], json={"name": "renamed"})).status_code == 200
        assert (await c.call("DELETE", "/v1/snapshots/{id}", id=snap["id"])).status_code == 200

        assert (await c.call("GET", "/v1/org/quotas")).status_code == 200
        assert (await anon.call("GET", "/v1/org/quotas")).status_code == 401
        # delete: 200, and 502 when the node fails to
        assert (await c.call("DELETE", "/v1/vms/{id}", id=vm["id"])).status_code == 200
        r = await c.call("DELETE", "/v1/vms/{id}", id=faulty["id"])
        assert r.status_code == 502 and "simulated failure: delete" in r.json()["error"]

        reached = set().union(*(x.reached for x in clients))
        wanted = {(path, method.upper(), code) for path, item in SCHEMA.raw_schema["paths"].items() for method in item for code in documented(path, method)}
        wanted.add(("/v1/vms/{id}/console/ws", "GET", 101))
        missing = wanted - reached - set(UNREACHABLE)
        assert not missing, sorted(missing)
        assert not (set(UNREACHABLE) & reached)
    finally:
        for x in clients:
            await x.aclose()


async def test_a_change_racing_a_delete_answers_404(server_factory: Any) -> None:
    """Work on one VM runs in the order it was asked for: a firewall change or snapshot queued
    behind the VM's delete fails, and the answer says why — the VM is gone."""
    s = await server_factory(nodes=guest_nodes(latency=0.02))
    c = FastVmClient(s.url + P, s.admin_key)
    try:
        for template, body in (("/v1/vms/{id}/firewall", {"mode": "open"}), ("/v1/snapshots", None)):
            vm = await create(c)
            assert (await s.client.delete(f"/api/v1/vms/{vm['id']}")).status_code == 202  # queued first
            if body is not None:
                r = await c.call("PUT", template, id=vm["id"], json=body)
            else:
                r = await c.call("POST", template, json={"vmId": vm["id"]})
            assert r.status_code == 404, r.text
        assert (await c.call("GET", "/v1/snapshots")).json() == []
    finally:
        await c.aclose()


async def test_bearer_jwts_and_api_keys_as_bearer_work_as_on_the_native_api(server_factory: Any) -> None:
    secret = "s" * 40
    s = await server_factory(nodes=guest_nodes(), jwt_secret=secret)
    token = jwt.encode({"sub": "admin", "org": "org-default", "exp": int(time.time()) + 60}, secret, algorithm="HS256")
    for bearer in (token, s.admin_key):
        c = FastVmClient(s.url + P, None)
        c.http.headers["Authorization"] = f"Bearer {bearer}"
        try:
            assert (await c.call("GET", "/v1/org/quotas")).json()["orgId"] == "org-default"
        finally:
            await c.aclose()
    c = FastVmClient(s.url + P, None)
    c.http.headers["Authorization"] = "Bearer " + jwt.encode({"sub": "admin", "exp": int(time.time()) - 5}, secret, algorithm="HS256")
    try:
        r = await c.call("GET", "/v1/vms")
        assert r.status_code == 401 and "expired" in r.json()["error"]
    finally:
        await c.aclose()
