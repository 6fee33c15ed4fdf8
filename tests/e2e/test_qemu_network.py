"""Bridge networks and firewalls end to end, through the HTTP API, with real guests.

`vmplane serve` runs inside a network namespace the test makes (reached over a veth pair,
so no traffic leaves the machine). Two tiny guests share a bridge network: A on it alone,
B on it and on the user-mode network with SSH forwarded from the node's loopback. The
guests are shared by the tests below, which run in file order (each boot costs ~5 s under
TCG). Needs root, `ip netns`, dnsmasq, nft and QEMU: skipped without, failed instead when
VMPLANE_REQUIRE_QEMU=1.
"""

import ipaddress
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane.net.host import which

from ..support import admin_key, require_qemu, wait_ready

pytestmark = pytest.mark.slow

LAN = "10.77.0.0/24"
BOOT_WAIT = 120.0


def require_netns() -> None:
    require_qemu()
    if os.geteuid() == 0 and all(which(t) for t in ("ip", "nft", "dnsmasq")):
        return
    if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but not root, or ip / nft / dnsmasq missing (scripts/install-qemu.sh)")
    pytest.skip("needs root, ip, nft and dnsmasq")


def sh(*argv: str) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr}"
    return r.stdout


def pids_mentioning(marker: str) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


@contextmanager
def veth_namespace(prefix: str) -> Iterator[tuple[str, str]]:
    """A network namespace joined to the host by a veth pair on a random /30 of 10.254/16:
    yields (namespace, the address inside it); both go on exit."""
    tag = uuid.uuid4().hex[:8]
    ns, outer, inner = f"vmp{prefix}-{tag}", f"v{prefix}o{tag}", f"v{prefix}i{tag}"
    base = ipaddress.IPv4Address("10.254.0.0") + 4 * random.randrange(16384)
    outer_ip, inner_ip = str(base + 1), str(base + 2)
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns)
        sh("ip", "addr", "add", f"{outer_ip}/30", "dev", outer)
        sh("ip", "link", "set", outer, "up")
        for argv in (["addr", "add", f"{inner_ip}/30", "dev", inner], ["link", "set", inner, "up"], ["link", "set", "lo", "up"]):
            sh("ip", "-n", ns, *argv)
        yield ns, inner_ip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        subprocess.run(["ip", "link", "del", outer], check=False, capture_output=True)


def stop_server(proc: "subprocess.Popen[bytes] | None", data: Path) -> None:
    """SIGTERM the server (SIGKILL after 20 s), then every process that names its data dir:
    guests and dnsmasq outlive the control plane by design, and a test must not leave them."""
    if proc is not None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pid in pids_mentioning(str(data)):
        os.kill(pid, signal.SIGKILL)


class Lab:
    """The namespace, the server in it, and the two guests."""

    def __init__(self, ns: str, c: httpx.Client, data: Path, serve: Any) -> None:
        self.ns, self.c, self.data = ns, c, data
        self.serve = serve
        """(re)starts `vmplane serve` in the namespace and waits until it is ready"""
        self.a = self.b = ""
        self.ip: dict[str, str] = {}
        self.ssh_port = 0

    def wait_job(self, job_id: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.c.get(f"/api/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "partial", "cancelled"):
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
            time.sleep(0.05)

    def applied(self, r: httpx.Response, status: int = 200) -> float:
        """Wait for the job a firewall change made; seconds from the request's answer to done."""
        assert r.status_code == status, r.text
        t = time.monotonic()
        job = self.wait_job(r.json()["jobId"])
        assert job["state"] == "succeeded", job
        return time.monotonic() - t

    def exec(self, vm: str, argv: list[str], timeout: int = 15) -> dict[str, Any]:
        r = self.c.post(f"/api/v1/vms/{vm}/exec", json={"command": argv, "timeoutSec": timeout})
        assert r.status_code == 200, r.text
        return r.json()

    def ssh_banner_from_a(self, ip: str) -> dict[str, Any]:
        """A's attempt to open B's port 22 (dropbear): stdout starts SSH-2.0 when it connects."""
        assert ipaddress.ip_address(ip)
        return self.exec(self.a, ["sh", "-c", f"echo | nc -w 2 {ip} 22 | head -c 7"])

    def a_reaches_b(self) -> bool:
        return self.ssh_banner_from_a(self.ip[self.b])["stdout"] == "SSH-2.0"

    def forwarded_ssh(self) -> str:
        """What the node sees on B's forwarded SSH port (127.0.0.1 in the namespace)."""
        code = (
            "import socket,sys\n"
            "try:\n s=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=3); print(s.recv(7).decode())\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except OSError as e: print('error', e)\n"
        )
        return sh("ip", "netns", "exec", self.ns, sys.executable, "-c", code, str(self.ssh_port)).strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_netns()
    tmp = tmp_path_factory.mktemp("netlab")
    data = tmp / "data"
    proc: subprocess.Popen[bytes] | None = None

    def serve() -> None:
        nonlocal proc
        if proc is not None:  # a crash of the control plane: VMs, dnsmasq and rules stay
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        proc = subprocess.Popen(cmd, env=env, stdout=(tmp / "server.log").open("ab"), stderr=subprocess.STDOUT)
        wait_ready(url, proc)

    with veth_namespace("e") as (ns, inner_ip):
        try:
            url = f"http://{inner_ip}:8080"
            cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "vmplane.cli.main", "serve", "--host", inner_ip,
                   "--port", "8080", "--data-dir", str(data), "--log-level", "warning", "--driver", "qemu", "--accel", "tcg"]  # fmt: skip
            env = {**os.environ, "VMPLANE_CPU_OVERCOMMIT": "8"}
            serve()
            with httpx.Client(base_url=url, timeout=60, headers={"X-API-Key": admin_key(data)}) as c:
                lab = Lab(ns, c, data, serve)
                boot(lab)
                yield lab
        finally:
            stop_server(proc, data)


def boot(lab: Lab) -> None:
    c = lab.c
    r = c.post("/api/v1/networks", json={"name": "lan", "type": "bridge", "subnet": LAN})
    assert r.status_code == 201, r.text
    lan = r.json()
    assert lan["id"] and lan["type"] == "bridge" and lan["gateway"] == "10.77.0.1"
    tpl = next(t["id"] for t in c.get("/api/v1/templates").json()["items"] if t["name"] == "tiny-linux")
    common = {"templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}}
    t0 = time.monotonic()
    r = c.post("/api/v1/vms", json=[
        {**common, "name": "net-a", "networks": [{"networkId": lan["id"]}]},
        {**common, "name": "net-b", "networks": [{"networkId": lan["id"]}, {"networkId": "user"}], "expose": [{"port": 22}]},
    ])  # fmt: skip
    assert r.status_code == 202, r.text
    lab.a, lab.b = r.json()["vmIds"]
    job = lab.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded", job
    for vm in (lab.a, lab.b):
        deadline = time.monotonic() + BOOT_WAIT
        while True:  # the agent answers once the guest is up
            r = c.post(f"/api/v1/vms/{vm}/exec", json={"command": ["cat", "/run/vmplane/boot-complete"], "timeoutSec": 5})
            if r.status_code == 200 and r.json()["exitCode"] == 0:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.25)
    print(f"[network] two guests created, started and booted in {time.monotonic() - t0:.1f} s")
    a, b = (c.get(f"/api/v1/vms/{vm}").json() for vm in (lab.a, lab.b))
    assert [n["networkId"] for n in a["nics"]] == [lan["id"]]
    assert [n["networkId"] for n in b["nics"]][0] == lan["id"] and len(b["nics"]) == 2
    for vm in (a, b):
        lab.ip[vm["id"]] = vm["nics"][0]["ipAddresses"][0]
    lab.ip["b-user"] = b["nics"][1]["ipAddresses"][0]
    lab.ssh_port = next(e["hostPort"] for e in b["expose"] if e["port"] == 22)


def test_guests_get_their_addresses_by_dhcp_and_reach_each_other(lab: Lab) -> None:
    ip_a, ip_b = lab.ip[lab.a], lab.ip[lab.b]
    assert ip_a != ip_b and {ipaddress.ip_address(x) in ipaddress.ip_network(LAN) for x in (ip_a, ip_b)} == {True}
    deadline = time.monotonic() + 30
    while True:  # udhcpc may still be at it just after boot
        got = {vm: lab.exec(vm, ["ip", "-4", "-o", "addr", "show"])["stdout"] for vm in (lab.a, lab.b)}
        if f" {ip_a}/24 " in got[lab.a] and f" {ip_b}/24 " in got[lab.b] and f" {lab.ip['b-user']}/" in got[lab.b]:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    ping = lab.exec(lab.a, ["ping", "-c", "1", "-W", "3", ip_b])
    assert ping["exitCode"] == 0, ping
    assert lab.a_reaches_b()
    assert lab.forwarded_ssh() == "SSH-2.0"


def test_firewall_changes_apply_at_once_without_a_reboot(lab: Lab) -> None:
    c, b = lab.c, lab.b
    boot_id = lab.exec(b, ["cat", "/proc/sys/kernel/random/boot_id"])["stdout"]
    timings = {}

    timings["policy DROP"] = lab.applied(c.put(f"/api/v1/vms/{b}/firewall", json={"enabled": True, "policyIn": "DROP", "policyOut": "ACCEPT"}))
    assert not lab.a_reaches_b()
    assert lab.forwarded_ssh() == "refused"  # the forwarded port is closed as well
    # b's own connections still work (their replies are established), and so does its DHCP
    back = lab.exec(b, ["sh", "-c", f"echo | nc -w 2 {lab.ip[lab.a]} 22 | head -c 7"])
    assert back["stdout"] == "SSH-2.0", back
    renew = lab.exec(b, ["udhcpc", "-i", "eth0", "-n", "-q", "-t", "3", "-T", "1", "-s", "/bin/true"])
    assert renew["exitCode"] == 0, renew

    r = c.post(f"/api/v1/vms/{b}/firewall/rules", json={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"})
    timings["add ACCEPT rule"] = lab.applied(r, 201)
    assert r.json()["rule"]["pos"] == 0 and r.json()["rule"]["dport"] == "22"
    assert lab.a_reaches_b()
    assert lab.forwarded_ssh() == "SSH-2.0"

    timings["delete rule"] = lab.applied(c.delete(f"/api/v1/vms/{b}/firewall/rules/0"))
    assert not lab.a_reaches_b()
    assert lab.forwarded_ssh() == "refused"

    r = c.post(f"/api/v1/vms/{b}/firewall/rules", json={"type": "in", "action": "REJECT", "proto": "tcp", "dport": "22"})
    timings["add REJECT rule"] = lab.applied(r, 201)
    t = time.monotonic()
    rejected = lab.ssh_banner_from_a(lab.ip[b])
    assert rejected["stdout"] == "" and "refused" in rejected["stderr"], rejected
    assert time.monotonic() - t < 1.5  # refused at once, not timed out

    timings["disable"] = lab.applied(c.put(f"/api/v1/vms/{b}/firewall", json={"enabled": False}))
    assert lab.a_reaches_b() and lab.forwarded_ssh() == "SSH-2.0"
    assert lab.exec(b, ["cat", "/proc/sys/kernel/random/boot_id"])["stdout"] == boot_id  # no reboot
    print("[network] firewall change, request answered -> job done: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))


def test_a_restarted_control_plane_adopts_dnsmasq_and_applies_firewalls_again(lab: Lab) -> None:
    c, b = lab.c, lab.b
    lab.applied(c.put(f"/api/v1/vms/{b}/firewall", json={"enabled": True, "policyIn": "DROP"}))
    assert not lab.a_reaches_b()
    dnsmasq = [p for p in pids_mentioning(str(lab.data)) if b"dnsmasq" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(dnsmasq) == 1
    sh("ip", "netns", "exec", lab.ns, "nft", "flush", "ruleset")  # as after a reboot of the host's firewall
    assert lab.a_reaches_b()
    t = time.monotonic()
    lab.serve()
    print(f"[network] vmplane killed and serving again in {time.monotonic() - t:.1f} s")
    assert not lab.a_reaches_b()  # open() applied the firewalls of running VMs again
    assert [p for p in pids_mentioning(str(lab.data)) if b"dnsmasq" in Path(f"/proc/{p}/cmdline").read_bytes()] == dnsmasq
    lab.applied(c.put(f"/api/v1/vms/{b}/firewall", json={"enabled": False}))
    assert lab.a_reaches_b()


def test_additional_addresses_are_configured_in_the_guest_and_again_after_a_reboot_or_restart(lab: Lab) -> None:
    c, a = lab.c, lab.a

    def a_addresses() -> str:
        return lab.exec(a, ["ip", "-4", "-o", "addr", "show", "dev", "eth0"])["stdout"]

    r = c.post(f"/api/v1/vms/{a}/ips", json={})
    assert r.status_code == 201, r.text
    alias = r.json()["ip"]
    assert ipaddress.ip_address(alias) in ipaddress.ip_network(LAN) and alias != lab.ip[a]
    lab.applied(r, 201)
    assert f" {alias}/24 " in a_addresses()
    assert lab.exec(lab.b, ["ping", "-c", "1", "-W", "3", alias])["exitCode"] == 0

    # a reboot starts the guest afresh: the driver configures the address again
    boot_id = lab.exec(a, ["cat", "/proc/sys/kernel/random/boot_id"])["stdout"]
    r = c.post(f"/api/v1/vms/{a}/reboot")
    assert r.status_code == 202 and lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
    t = time.monotonic()
    deadline = t + BOOT_WAIT
    while True:
        r = c.post(f"/api/v1/vms/{a}/exec", json={"command": ["sh", "-c", "cat /proc/sys/kernel/random/boot_id; ip -4 -o addr show dev eth0"]})
        out = r.json().get("stdout", "") if r.status_code == 200 else ""
        if out and not out.startswith(boot_id) and f" {alias}/24 " in out:
            break
        assert time.monotonic() < deadline, out or r.text
        time.sleep(0.5)
    print(f"[network] additional address back {time.monotonic() - t:.1f} s after the reboot job")

    # stopped, A has no tap; started again, it has its tap, its lease and its alias
    taps = sh("ip", "-n", lab.ns, "-o", "link", "show", "type", "tun")
    assert taps.count("vmt") == 2
    r = c.post(f"/api/v1/vms/{a}/stop")
    assert r.status_code == 202 and lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
    assert sh("ip", "-n", lab.ns, "-o", "link", "show", "type", "tun").count("vmt") == 1
    r = c.post(f"/api/v1/vms/{a}/start")
    assert r.status_code == 202 and lab.wait_job(r.json()["jobId"])["state"] == "succeeded"
    t = time.monotonic()
    while True:
        r = c.post(f"/api/v1/vms/{a}/exec", json={"command": ["ip", "-4", "-o", "addr", "show", "dev", "eth0"]})
        out = r.json().get("stdout", "") if r.status_code == 200 else ""
        if f" {lab.ip[a]}/24 " in out and f" {alias}/24 " in out:
            break
        assert time.monotonic() < t + BOOT_WAIT, out or r.text
        time.sleep(0.5)
    print(f"[network] lease and additional address back {time.monotonic() - t:.1f} s after the start job")
    assert lab.a_reaches_b()

    r = c.delete(f"/api/v1/vms/{a}/ips/{alias}")
    lab.applied(r)
    assert f" {alias}/" not in a_addresses() and f" {lab.ip[a]}/24 " in a_addresses()


def test_deleting_the_last_vm_of_a_network_takes_its_bridge_down(lab: Lab) -> None:
    def bridges() -> str:
        return sh("ip", "-n", lab.ns, "-o", "link", "show", "type", "bridge")

    assert "vmbr" in bridges()
    jobs = [lab.c.delete(f"/api/v1/vms/{vm}").json()["jobId"] for vm in (lab.a, lab.b)]
    for job in jobs:
        assert lab.wait_job(job)["state"] == "succeeded"
    assert bridges() == ""
    assert sh("ip", "-n", lab.ns, "-o", "link", "show", "type", "tun") == ""
    assert [p for p in pids_mentioning(str(lab.data)) if b"dnsmasq" in Path(f"/proc/{p}/cmdline").read_bytes()] == []
    listing = sh("ip", "netns", "exec", lab.ns, "nft", "list", "table", "bridge", "vmplane")
    assert "in_vm_" not in listing and "vmt" not in listing
