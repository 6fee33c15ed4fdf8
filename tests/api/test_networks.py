"""Networks, IPAM, additional addresses and the firewall API (sim driver; enforcement is
tested on real guests in tests/e2e/test_qemu_network.py)."""

from typing import Any

from ..support import Server
from ..support_pci import install, standard_host


async def new_network(server: Server, **body: Any) -> dict[str, Any]:
    r = await server.client.post("/api/v1/networks", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def vm_of(server: Server, job: dict[str, Any]) -> dict[str, Any]:
    assert job["state"] == "succeeded", job
    return (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()


async def test_networks_ipam_exhaustion_and_release(server: Server) -> None:
    c = server.client
    user = next(n for n in (await c.get("/api/v1/networks")).json()["items"] if n["name"] == "user")
    assert user["type"] == "user" and user["shared"] is True

    # a /29 holds 8 addresses: network, broadcast and 3 kept for the node leave 3 for NICs
    lan = await new_network(server, name="tiny-lan", type="bridge", subnet="10.88.0.0/29")
    assert lan["gateway"] == "10.88.0.1" and lan["bridge"].startswith("vmbr") and lan["addressesTotal"] == 3
    jobs = [await server.create({"name": f"n{i}", "networks": [{"networkId": lan["id"]}]}) for i in range(3)]
    vms = [await vm_of(server, j) for j in jobs]
    ips = [v["nics"][0]["ipAddresses"][0] for v in vms]
    assert sorted(ips) == ["10.88.0.4", "10.88.0.5", "10.88.0.6"]
    assert len({v["nics"][0]["mac"] for v in vms}) == 3 and all(v["nics"][0]["networkId"] == lan["id"] for v in vms)
    assert (await c.get(f"/api/v1/networks/{lan['id']}")).json()["addressesInUse"] == 3

    # full: the fourth VM is refused before anything is created
    r = await c.post("/api/v1/vms", json={"name": "n3", "networks": [{"networkId": "tiny-lan"}]})
    assert r.status_code == 409 and "no free address" in r.json()["error"], r.text
    assert (await c.get("/api/v1/vms", params={"name": "n3"})).json()["items"] == []

    # a deleted VM's address is released and handed out again (never twice at once)
    r = await c.delete(f"/api/v1/vms/{vms[1]['id']}")
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    again = await vm_of(server, await server.create({"name": "n3", "networks": [{"networkId": lan["id"]}]}))
    assert again["nics"][0]["ipAddresses"] == [ips[1]]

    # a network with addresses in use cannot go; the shared user network never can
    assert (await c.delete(f"/api/v1/networks/{lan['id']}")).status_code == 409
    assert (await c.delete(f"/api/v1/networks/{user['id']}")).status_code == 409
    for v in (vms[0], vms[2], again):
        await server.wait_job((await c.delete(f"/api/v1/vms/{v['id']}")).json()["jobId"])
    assert (await c.delete(f"/api/v1/networks/{lan['id']}")).status_code == 204
    assert (await c.get(f"/api/v1/networks/{lan['id']}")).status_code == 404


async def test_network_validation(server: Server) -> None:
    c = server.client
    await new_network(server, name="lan-a", type="bridge", subnet="10.90.0.0/24", ipv6Prefix="fd00:90::/64")
    cases = [
        ({"name": "x", "type": "bridge", "subnet": "10.91.0.1/24"}, 400, "subnet"),  # host bits
        ({"name": "x", "type": "bridge", "subnet": "10.91.0.0/30"}, 400, "subnet"),  # too small
        ({"name": "x", "type": "bridge", "subnet": "not-a-net"}, 400, "subnet"),
        ({"name": "x", "type": "vxlan", "subnet": "10.91.0.0/24"}, 400, "type"),
        ({"name": "bad name", "type": "bridge", "subnet": "10.91.0.0/24"}, 400, "name"),
        ({"name": "x", "type": "bridge", "subnet": "10.91.0.0/24", "ipv6Prefix": "fd00:91::/48"}, 400, "ipv6Prefix"),
        ({"name": "x", "type": "bridge", "subnet": "10.90.0.128/25"}, 409, "subnet"),  # overlaps lan-a
        ({"name": "lan-a", "type": "bridge", "subnet": "10.92.0.0/24"}, 409, "name"),
    ]
    for body, status, field in cases:
        r = await c.post("/api/v1/networks", json=body)
        assert r.status_code == status and r.json()["details"]["field"] == field, (body, r.text)
    r = await c.post("/api/v1/vms", json={"name": "v", "networks": [{"networkId": "net-nothere0000"}]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "networks[0].networkId"
    r = await c.post("/api/v1/vms", json={"name": "v", "networks": [{"networkId": "lan-a"}, {"networkId": "lan-a"}]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "networks[1].networkId"


async def test_default_network_and_additional_ips(server: Server) -> None:
    c = server.client
    vm = await vm_of(server, await server.create({"name": "web"}))
    (nic,) = vm["nics"]
    assert nic["network"] == "user" and nic["ipAddresses"][0].startswith("10.0.")
    primary = nic["ipAddresses"][0]

    r = await c.post(f"/api/v1/vms/{vm['id']}/ips", json={})
    assert r.status_code == 201, r.text
    extra = r.json()["ip"]
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    ips = (await c.get(f"/api/v1/vms/{vm['id']}/ips")).json()
    assert [(i["ip"], i["primary"]) for i in ips] == [(primary, True), (extra, False)]
    assert (await c.get(f"/api/v1/vms/{vm['id']}")).json()["nics"][0]["ipAddresses"] == [primary, extra]

    r = await c.delete(f"/api/v1/vms/{vm['id']}/ips/{primary}")
    assert r.status_code == 409 and "primary" in r.json()["error"]
    assert (await c.delete(f"/api/v1/vms/{vm['id']}/ips/10.9.9.9")).status_code == 404
    assert (await c.delete(f"/api/v1/vms/{vm['id']}/ips/nonsense")).status_code == 400
    r = await c.delete(f"/api/v1/vms/{vm['id']}/ips/{extra}")
    assert r.status_code == 200 and (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert [i["ip"] for i in (await c.get(f"/api/v1/vms/{vm['id']}/ips")).json()] == [primary]
    r = await c.post(f"/api/v1/vms/{vm['id']}/ips", json={"networkId": "user"})
    assert r.status_code == 201
    await server.create({"name": "other-net-owner"})
    lan = await new_network(server, name="lan-b", subnet="10.93.0.0/24")
    r = await c.post(f"/api/v1/vms/{vm['id']}/ips", json={"networkId": lan["id"]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "networkId"


async def test_firewall_rules_positions_and_validation(server: Server) -> None:
    c = server.client
    vm = await vm_of(server, await server.create({"name": "fw"}))
    base = f"/api/v1/vms/{vm['id']}/firewall"
    assert (await c.get(base)).json() == {"enabled": False, "policyIn": "ACCEPT", "policyOut": "ACCEPT", "rules": []}

    r = await c.put(base, json={"enabled": True, "policyIn": "drop"})
    assert r.status_code == 200, r.text
    assert r.json()["policyIn"] == "DROP" and r.json()["enabled"] and r.json()["policyOut"] == "ACCEPT"
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"

    rules = [
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH access"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "80,443", "comment": "Web traffic"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "3306", "source": "10.0.0.0/8"},
    ]
    for i, rule in enumerate(rules):
        r = await c.post(f"{base}/rules", json=rule)
        assert r.status_code == 201, r.text
        assert r.json()["rule"] == {**rule, "pos": i, "enable": 1}
    # insert at a position: later rules move down
    r = await c.post(f"{base}/rules", json={"pos": 0, "type": "in", "action": "REJECT", "proto": "udp", "dport": "8000:9000", "enable": 0})
    assert r.status_code == 201 and r.json()["rule"]["pos"] == 0
    got = (await c.get(base)).json()["rules"]
    assert [x["dport"] for x in got] == ["8000:9000", "22", "80,443", "3306"] and [x["pos"] for x in got] == [0, 1, 2, 3]
    assert (await c.get(f"{base}/rules/1")).json()["comment"] == "SSH access"
    assert (await c.get(f"{base}/rules/9")).status_code == 404

    r = await c.delete(f"{base}/rules/0")
    assert r.status_code == 200 and (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert [x["dport"] for x in (await c.get(base)).json()["rules"]] == ["22", "80,443", "3306"]
    assert (await c.delete(f"{base}/rules/3")).status_code == 404

    bad = [
        ({"type": "sideways", "action": "ACCEPT"}, "type"),
        ({"type": "in", "action": "ALLOW"}, "action"),
        ({"type": "in", "action": "ACCEPT", "proto": "gre"}, "proto"),
        ({"type": "in", "action": "ACCEPT", "dport": "70000"}, "dport"),
        ({"type": "in", "action": "ACCEPT", "dport": "90:80"}, "dport"),
        ({"type": "in", "action": "ACCEPT", "dport": "22;rm -rf /"}, "dport"),
        ({"type": "in", "action": "ACCEPT", "proto": "icmp", "dport": "22"}, "dport"),
        ({"type": "in", "action": "ACCEPT", "sport": "x"}, "sport"),
        ({"type": "in", "action": "ACCEPT", "source": "10.0.0.300"}, "source"),
        ({"type": "out", "action": "ACCEPT", "dest": "fd00::/200"}, "dest"),
        ({"type": "in", "action": "ACCEPT", "source": "10.0.0.1", "dest": "fd00::1"}, "dest"),
        ({"type": "in", "action": "ACCEPT", "comment": "a\nb"}, "comment"),
        ({"type": "in", "action": "ACCEPT", "enable": 2}, "enable"),
        ({"type": "in", "action": "ACCEPT", "pos": 7}, "pos"),
        ({"type": "in", "action": "ACCEPT", "colour": "red"}, "colour"),
    ]
    for body, field in bad:
        r = await c.post(f"{base}/rules", json=body)
        assert r.status_code == 400 and r.json()["details"]["field"] == field, (body, r.text)
    assert len((await c.get(base)).json()["rules"]) == 3  # nothing changed
    r = await c.put(base, json={"policyOut": "MAYBE"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "policyOut"

    # PUT with rules replaces them all (validated as a whole)
    r = await c.put(base, json={"rules": [{"type": "out", "action": "DROP", "dest": "192.0.2.0/24"}]})
    assert r.status_code == 200 and [x["dest"] for x in r.json()["rules"]] == ["192.0.2.0/24"]
    r = await c.put(base, json={"rules": [{"type": "out", "action": "DROP"}, {"type": "in"}]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "body.rules[1].action"
    assert (await c.get("/api/v1/vms/vm-none00000000/firewall")).status_code == 404


async def test_pci_passthrough_placement_takes_whole_groups(server_factory: Any, tmp_path: Any, monkeypatch: Any) -> None:
    kernel = install(standard_host(tmp_path / "host"), monkeypatch)
    server = await server_factory(sim_nodes=2, sysfs_root=kernel.root, pci_allowlist=["10de:*", "8086:1521"])
    c = server.client
    nodes = [n["id"] for n in (await c.get("/api/v1/nodes")).json()["items"]]
    offered = (await c.get(f"/api/v1/nodes/{nodes[0]}/devices")).json()["items"]
    assert sorted(d["address"] for d in offered) == ["0000:01:00.0", "0000:01:00.1", "0000:02:00.0"]
    assert all(d["vmId"] is None for d in offered) and {d["iommuGroup"] for d in offered} == {1, 2}

    # a GPU model: the node's GPU comes with its audio function (one IOMMU group)
    vm = await vm_of(server, await server.create({"name": "gpu-1", "devices": {"pciPassthrough": ["10de:2204"]}}))
    assert vm["pciDevices"] == ["0000:01:00.0", "0000:01:00.1"]
    owners = {d["address"]: d["vmId"] for d in (await c.get(f"/api/v1/nodes/{vm['nodeId']}/devices")).json()["items"]}
    assert owners == {"0000:01:00.0": vm["id"], "0000:01:00.1": vm["id"], "0000:02:00.0": None}
    # the second GPU VM goes to the other node; a third finds none free
    vm2 = await vm_of(server, await server.create({"name": "gpu-2", "devices": {"pciPassthrough": ["10de:2204"]}}))
    assert vm2["nodeId"] != vm["nodeId"]
    r = await c.post("/api/v1/vms", json={"name": "gpu-3", "devices": {"pciPassthrough": ["10de:2204"]}})  # refused at once
    assert r.status_code == 409 and r.json()["error"] == "no node has the PCI devices 10de:2204 free", r.text
    assert "gpu-3" not in [v["name"] for v in (await c.get("/api/v1/vms")).json()["items"]]
    # an address on a given node
    vm4 = await vm_of(server, await server.create({"name": "nic-1", "nodeId": vm["nodeId"], "devices": {"pciPassthrough": ["0000:02:00.0"]}}))
    assert vm4["pciDevices"] == ["0000:02:00.0"]
    r = await c.post("/api/v1/vms", json={"name": "bad", "devices": {"pciPassthrough": ["../../x"]}})
    assert r.status_code == 400 and r.json()["details"]["field"] == "devices.pciPassthrough[0]"
    # deleting the VM gives its devices back
    await server.wait_job((await c.delete(f"/api/v1/vms/{vm['id']}")).json()["jobId"])
    owners = {d["address"]: d["vmId"] for d in (await c.get(f"/api/v1/nodes/{vm['nodeId']}/devices")).json()["items"]}
    assert owners == {"0000:01:00.0": None, "0000:01:00.1": None, "0000:02:00.0": vm4["id"]}
