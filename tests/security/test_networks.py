"""Tenant networks (issue 19, item 5), attacked as a tenant would.

- Through the API of a real server (two organizations, the operator): a tenant's subnet comes
  from the operator's pool (VMPLANE_TENANT_SUBNET_POOL) or is allocated from it, an overlap is
  checked within the caller's organization only and names only its own network; two
  organizations may hold the same subnet. A refusal creates nothing.
- With real guests (`vmplane serve` in a network namespace of the test's, as in
  tests/e2e/test_qemu_network.py, so no packet leaves the machine): a guest of organization A
  sends spoofed ARP (another sender address, another sender MAC) and IPv4 with another source
  address and another source MAC; counters in A's own namespace (where its gateway is) show
  that none of it arrives while the guest's own traffic does. Organization B's network has
  the same subnet as A's; B's guest gets its address and reaches its gateway beside A's.
  Two guests in all, shared by the tests below (they run in file order).
"""

import ipaddress
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane.net.host import netns_name

from ..e2e.test_qemu_network import require_netns, sh, stop_server, veth_namespace
from ..support import Server, admin_key, wait_ready

BOOT_WAIT = 120.0


async def new_org(server: Server, name: str) -> httpx.AsyncClient:
    r = await server.client.post("/api/v1/orgs", json={"name": name, "owner": f"{name}-owner"})
    assert r.status_code == 201, r.text
    return server.client_with(r.json()["ownerKey"])


async def names(c: httpx.AsyncClient) -> set[str]:
    return {n["name"] for n in (await c.get("/api/v1/networks")).json()["items"]}


# -- the API -------------------------------------------------------------------------------


async def test_tenant_subnets_come_from_the_pool_and_overlaps_stay_within_the_organization(server: Server) -> None:
    a, b = await new_org(server, "acme"), await new_org(server, "globex")
    before = await names(a)
    for subnet in ("8.0.0.0/8", "192.168.0.0/16", "10.0.0.0/8", "10.127.255.0/24"):  # public; private but outside the pool
        r = await a.post("/api/v1/networks", json={"name": "grab", "type": "bridge", "subnet": subnet})
        assert r.status_code == 400 and r.json()["details"]["field"] == "subnet", r.text
        assert "10.128.0.0/9" in r.text
    assert await names(a) == before  # nothing was made

    r = await a.post("/api/v1/networks", json={"name": "acme-secret-lan", "type": "bridge", "subnet": "10.130.0.0/16"})
    assert r.status_code == 201, r.text
    # B takes the same range: another routing context; no word of A's network
    r = await b.post("/api/v1/networks", json={"name": "globex-lan", "type": "bridge", "subnet": "10.130.5.0/24"})
    assert r.status_code == 201, r.text
    r = await b.post("/api/v1/networks", json={"name": "globex-lan2", "type": "bridge", "subnet": "10.130.5.128/25"})
    assert r.status_code == 409 and r.json()["details"]["field"] == "subnet"
    assert "globex-lan" in r.text and "acme" not in r.text and "10.130.0.0/16" not in r.text
    # left out, the subnet is the first /24 of the pool the organization has free
    r = await a.post("/api/v1/networks", json={"name": "auto", "type": "bridge"})
    assert r.status_code == 201 and r.json()["subnet"] == "10.128.0.0/24", r.text
    r = await b.post("/api/v1/networks", json={"name": "auto-b", "type": "bridge"})
    assert r.status_code == 201 and r.json()["subnet"] == "10.128.0.0/24", r.text
    # operators: any private range, never a public one
    r = await server.client.post("/api/v1/networks", json={"name": "ops", "type": "bridge", "subnet": "192.168.50.0/24"})
    assert r.status_code == 201, r.text
    r = await server.client.post("/api/v1/networks", json={"name": "ops-pub", "type": "bridge", "subnet": "8.8.0.0/16"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "subnet"
    assert "ops-pub" not in await names(server.client)


# -- real guests ---------------------------------------------------------------------------


class Lab:
    def __init__(self, ns: str, url: str, data: Path, server_pid: int) -> None:
        self.ns, self.url, self.data = ns, url, data
        self.server_pid = server_pid
        """(`ip netns exec` gave the server a mount namespace of its own, where the bind
        mounts of the namespaces it makes live: the test enters it to reach them)"""
        self.admin = httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": admin_key(data)})
        self.orgs: dict[str, tuple[str, httpx.Client]] = {}
        """org name -> (org id, its owner's client)"""
        self.vm: dict[str, str] = {}
        self.ip: dict[str, str] = {}
        self.mac: dict[str, str] = {}
        self.gateway: dict[str, str] = {}

    def wait_job(self, c: httpx.Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = c.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "partial", "cancelled"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
            time.sleep(0.05)

    def exec(self, org: str, argv: list[str], timeout: int = 15) -> dict[str, Any]:
        r = self.orgs[org][1].post(f"/api/v1/vms/{self.vm[org]}/exec", json={"command": argv, "timeoutSec": timeout})
        assert r.status_code == 200, r.text
        return r.json()

    def in_org_ns(self, org: str, *argv: str, input: str | None = None) -> str:
        """A command in the organization's namespace (where its gateway is)."""
        ns = netns_name(self.orgs[org][0])
        r = subprocess.run(["nsenter", "-t", str(self.server_pid), "-m", "--", "ip", "netns", "exec", ns, *argv], input=input, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_netns()
    tmp = tmp_path_factory.mktemp("tenantnet")
    data = tmp / "data"
    proc: subprocess.Popen[bytes] | None = None
    lab: Lab | None = None
    with veth_namespace("s") as (ns, inner_ip):
        try:
            url = f"http://{inner_ip}:8080"
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "vmplane.cli.main", "serve", "--host", inner_ip,
                   "--port", "8080", "--data-dir", str(data), "--log-level", "warning", "--driver", "qemu", "--accel", "tcg"]  # fmt: skip
            # a transit pool of the test's own (the node's uplinks to the organizations' namespaces)
            env = {**os.environ, "VMPLANE_CPU_OVERCOMMIT": "8", "VMPLANE_TENANT_TRANSIT_POOL": "10.253.0.0/16"}
            proc = subprocess.Popen(cmd, env=env, stdout=(tmp / "server.log").open("ab"), stderr=subprocess.STDOUT)
            wait_ready(url, proc)
            lab = Lab(ns, url, data, proc.pid)
            boot(lab)
            yield lab
        finally:
            stop_server(proc, data)
            if lab is not None:  # (their mounts went with the server's mount namespace; the names stay)
                for org_id, _ in lab.orgs.values():
                    subprocess.run(["ip", "netns", "del", netns_name(org_id)], check=False, capture_output=True)
                    Path("/run/netns", netns_name(org_id)).unlink(missing_ok=True)

def boot(lab: Lab) -> None:
    for org in ("acme", "globex"):
        r = lab.admin.post("/api/v1/orgs", json={"name": org, "owner": f"{org}-owner"})
        assert r.status_code == 201, r.text
        lab.orgs[org] = (r.json()["id"], httpx.Client(base_url=lab.url, timeout=60, headers={"X-API-Key": r.json()["ownerKey"]}))
    tpl = next(t["id"] for t in lab.admin.get("/api/v1/templates").json()["items"] if t["name"] == "tiny-linux")
    jobs = []
    for org, (_, c) in lab.orgs.items():
        r = c.post("/api/v1/networks", json={"name": f"{org}-lan", "type": "bridge"})  # both get 10.128.0.0/24
        assert r.status_code == 201 and r.json()["subnet"] == "10.128.0.0/24", r.text
        lab.gateway[org] = r.json()["gateway"]
        r = c.post("/api/v1/vms", json={"name": f"{org}-vm", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2},
                                        "networks": [{"networkId": f"{org}-lan"}]})  # fmt: skip
        assert r.status_code == 202, r.text
        (lab.vm[org],) = r.json()["vmIds"]
        jobs.append((c, r.json()["jobId"]))
    for c, job_id in jobs:
        job = lab.wait_job(c, job_id)
        assert job["state"] == "succeeded", job
    for org, (_, c) in lab.orgs.items():
        deadline = time.monotonic() + BOOT_WAIT
        while True:  # the agent answers once the guest is up
            r = c.post(f"/api/v1/vms/{lab.vm[org]}/exec", json={"command": ["cat", "/run/vmplane/boot-complete"], "timeoutSec": 5})
            if r.status_code == 200 and r.json()["exitCode"] == 0:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.25)
        vm = c.get(f"/api/v1/vms/{lab.vm[org]}").json()
        lab.ip[org], lab.mac[org] = vm["nics"][0]["ipAddresses"][0], vm["nics"][0]["mac"]


def guest_ipv4(lab: Lab, org: str) -> str:
    return lab.exec(org, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])["stdout"]


def test_organizations_with_the_same_subnet_work_side_by_side(lab: Lab) -> None:
    assert lab.gateway["acme"] == lab.gateway["globex"] == "10.128.0.1"
    for org in lab.orgs:
        assert f"{lab.ip[org]}/24" in guest_ipv4(lab, org)  # its DHCP lease, from its own namespace's dnsmasq
        r = lab.exec(org, ["ping", "-c", "2", "-W", "2", lab.gateway[org]])
        assert r["exitCode"] == 0, r
    # each gateway lives in its organization's namespace; the node has no route for 10.128/24
    for org in lab.orgs:
        assert "10.128.0.1/24" in lab.in_org_ns(org, "ip", "-o", "-4", "addr")
    node_routes = sh("ip", "netns", "exec", lab.ns, "ip", "-4", "route")
    assert "10.128.0." not in node_routes, node_routes


COUNTERS = """
table arp probe {{
  chain input {{ type filter hook input priority 0 ; policy accept ;
    arp saddr ip {spoof} counter
    arp saddr ether {fake_mac} counter
    arp saddr ip {own} counter
  }}
}}
table inet probe {{
  chain pre {{ type filter hook prerouting priority -400 ; policy accept ;
    ip saddr {spoof} counter
    ether saddr {fake_mac} counter
    ip saddr {own} icmp type echo-request counter
  }}
}}
"""


def counters(lab: Lab, org: str) -> list[int]:
    out = lab.in_org_ns(org, "nft", "list", "ruleset")
    return [int(line.split("packets ")[1].split()[0]) for line in out.splitlines() if "counter packets" in line]


def test_spoofed_arp_and_ip_from_a_guest_are_dropped_its_own_traffic_passes(lab: Lab) -> None:
    org, gw, own = "acme", lab.gateway["acme"], lab.ip["acme"]
    spoof = str(ipaddress.IPv4Address(own) + 50)  # an address of its subnet that is not its own
    fake_mac = "52:54:00:de:ad:01"
    lab.in_org_ns(org, "nft", "-f", "-", input=COUNTERS.format(spoof=spoof, fake_mac=fake_mac, own=own))
    try:
        # its own traffic: ARP (the gateway's neighbour entry is flushed first) and ping
        lab.exec(org, ["ip", "neigh", "flush", "dev", "eth0"])
        assert lab.exec(org, ["ping", "-c", "2", "-W", "2", gw])["exitCode"] == 0
        # another source address: ARP with that sender and IPv4 from it
        lab.exec(org, ["ip", "addr", "add", f"{spoof}/32", "dev", "eth0"])
        try:
            r = lab.exec(org, ["arping", "-c", "2", "-w", "3", "-I", "eth0", "-s", spoof, gw])
            assert r["exitCode"] in (0, 1) and "Sent" in r["stdout"] + r["stderr"] or "ARPING" in r["stdout"], r
            r = lab.exec(org, ["ping", "-c", "2", "-W", "2", "-I", spoof, gw])
            assert r["exitCode"] != 0, r
        finally:
            lab.exec(org, ["ip", "addr", "del", f"{spoof}/32", "dev", "eth0"])
        # another source MAC (its own address): both its ARP and its IPv4
        lab.exec(org, ["sh", "-c", f"ip link set eth0 address {fake_mac}; ip neigh flush dev eth0; "
                                   f"ping -c 2 -W 2 {gw}; ip link set eth0 address {lab.mac[org]}"])  # fmt: skip
        arp_spoof, arp_fake_mac, arp_own, ip_spoof, ip_fake_mac, ip_own = counters(lab, org)
        assert (arp_spoof, arp_fake_mac, ip_spoof, ip_fake_mac) == (0, 0, 0, 0)
        assert arp_own >= 1 and ip_own >= 2
        # and with its own MAC back, its traffic passes again
        lab.exec(org, ["ip", "neigh", "flush", "dev", "eth0"])
        assert lab.exec(org, ["ping", "-c", "1", "-W", "2", gw])["exitCode"] == 0
    finally:
        lab.in_org_ns(org, "sh", "-c", "nft delete table arp probe; nft delete table inet probe")
