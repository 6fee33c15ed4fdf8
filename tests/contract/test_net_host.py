"""The node's side of bridge networks (vmplane.net.host) for real: bridges, taps, dnsmasq
leases, and firewall verdicts on packets, all inside throwaway network namespaces.

`test_network_host_in_a_netns` makes a namespace and runs this file's `netns_*` functions
inside it with pytest (no traffic leaves it). "VMs" are veth peers in their own namespaces
whose host ends stand where taps would. Needs root, `ip netns`, dnsmasq and nft: skipped
without, failed instead when VMPLANE_REQUIRE_QEMU=1.
"""

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vmplane.domain.network import Network, mac_for, parse_firewall, tap_name
from vmplane.net import nft
from vmplane.net.host import NetworkHost, bridge_mac, which

INSIDE = os.environ.get("VMPLANE_TEST_NETNS")
pytestmark = pytest.mark.slow


def require_netns() -> None:
    if os.geteuid() == 0 and all(which(t) for t in ("ip", "nft", "dnsmasq")):
        return
    if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but not root, or ip / nft / dnsmasq missing (scripts/install-qemu.sh)")
    pytest.skip("needs root, ip, nft and dnsmasq")


def test_network_host_in_a_netns(tmp_path: Path) -> None:
    require_netns()
    ns = f"vmpt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-o", "python_functions=netns_*", "--basetemp", str(tmp_path / "inner"), __file__],
            env={**os.environ, "VMPLANE_TEST_NETNS": ns}, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
        assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
    finally:
        for pid in _pids_mentioning(str(tmp_path)):  # a dnsmasq a failed inner test left
            os.kill(pid, 9)
        subprocess.run(["ip", "netns", "del", ns], check=False)


# -- inside the namespace ------------------------------------------------------------------

NET = Network("net-test0lan1", "lan", "bridge", "10.77.0.0/24", "10.77.0.1", "fd00:77::/64", None)
BR = "vmbr" + __import__("hashlib").sha256(NET.id.encode()).hexdigest()[:10]

DHCP_CLIENT = r"""
import os, socket, struct, sys, time
ifname, mac = sys.argv[1], sys.argv[2]
xid = os.urandom(4)
hw = bytes(int(x, 16) for x in mac.split(":"))
pkt = struct.pack("!BBBB4sHH16s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(16), hw.ljust(16, b"\0"), b"", b"")
pkt += b"\x63\x82\x53\x63" + bytes([53, 1, 1, 55, 2, 1, 3, 255])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
s.bind(("0.0.0.0", 68))
s.settimeout(0.25)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    s.sendto(pkt, ("255.255.255.255", 67))
    try:
        data = s.recv(2048)
    except socket.timeout:
        continue
    if data[0] != 2 or data[4:8] != xid:
        continue
    opts, i, router = data[240:], 0, "-"
    while i < len(opts) and opts[i] != 255:
        if opts[i] == 0:
            i += 1
            continue
        if opts[i] == 3:
            router = socket.inet_ntoa(opts[i + 2:i + 6])
        i += 2 + opts[i + 1]
    print(socket.inet_ntoa(data[16:20]), router)
    sys.exit(0)
print("none")
"""

SERVER = r"""
import socket, sys, threading, time
def tcp(port):
    s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(16)
    while True:  # port 24 tells the client where it seems to come from
        c, peer = s.accept(); c.sendall(peer[0].encode() if port == 24 else b"hi"); c.close()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(100); s.sendto(data, peer)
for t in [lambda: tcp(22), lambda: tcp(23), lambda: tcp(24), lambda: udp(53)]:
    threading.Thread(target=t, daemon=True).start()
print("ready", flush=True)
time.sleep(3600)
"""

CLIENT = r"""
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=0.6); got = s.recv(40); print(got.decode() if port == 24 else "open")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.6); s.connect((host, port))
        s.send(b"x"); s.recv(10); print("open")
except ConnectionRefusedError:
    print("refused")
except (socket.timeout, TimeoutError):
    print("timeout")
"""


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {r.stderr}")
    return r.stdout


def _pids_mentioning(marker: str) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry.name}/cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


class Peer:
    """A 'VM': a namespace holding eth0, whose other end is enslaved to the bridge as a tap would be."""

    def __init__(self, vm_id: str, ip: str) -> None:
        self.vm_id, self.ip, self.mac = vm_id, ip, mac_for(vm_id)
        self.tap = tap_name(vm_id, 0)
        self.ns = f"{INSIDE}-{vm_id[-4:]}"
        self.server: subprocess.Popen[str] | None = None

    def up(self) -> "Peer":
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.tap, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        sh("ip", "link", "set", self.tap, "master", BR, "up")
        for argv in (["link", "set", "eth0", "address", self.mac], ["addr", "add", f"{self.ip}/24", "dev", "eth0"],
                     ["link", "set", "eth0", "up"], ["link", "set", "lo", "up"]):  # fmt: skip
            sh("ip", "-n", self.ns, *argv)
        return self

    def serve(self) -> None:
        self.server = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-c", SERVER, "0.0.0.0"],
                                       stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.server.stdout is not None and self.server.stdout.readline().strip() == "ready"

    def reach(self, other: "Peer | str", port: int = 22, proto: str = "tcp") -> str:
        host = other.ip if isinstance(other, Peer) else other
        return sh("ip", "netns", "exec", self.ns, sys.executable, "-c", CLIENT, host, str(port), proto).strip()

    def dhcp(self, mac: str | None = None, wait: float = 3.0) -> str:
        return sh("ip", "netns", "exec", self.ns, sys.executable, "-c", DHCP_CLIENT, "eth0", mac or self.mac, str(wait)).strip()

    def down(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()
        sh("ip", "netns", "del", self.ns, check=False)


def from_host(peer: Peer, port: int = 22) -> str:
    """What the node itself (this namespace) sees connecting to a peer."""
    return sh(sys.executable, "-c", CLIENT, peer.ip, str(port), "tcp").strip()


@pytest_asyncio.fixture
async def host(tmp_path: Path) -> AsyncIterator[NetworkHost]:
    h = NetworkHost(tmp_path / "state")
    assert h.available, h.support.reason
    try:
        yield h
    finally:
        await h.teardown_network(NET)


def dnsmasq_argv(h: NetworkHost) -> list[str]:
    pid = h.dnsmasq_pid(NET)
    assert pid is not None
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def netns_bridge_dnsmasq_and_static_leases(host: NetworkHost) -> None:
    a, b = Peer("vm-peer0000aaaa", "10.77.0.4"), Peer("vm-peer0000bbbb", "10.77.0.5")
    await host.ensure_network(NET, [(a.mac, a.ip)])
    link = sh("ip", "-d", "-j", "addr", "show", "dev", BR)
    assert f'"address":"{bridge_mac(NET.id)}"' in link and '"local":"10.77.0.1","prefixlen":24' in link
    assert '"local":"fd00:77::1","prefixlen":64' in link
    assert Path(f"/sys/class/net/{BR}/bridge/nf_call_iptables").read_text().strip() == "1"
    argv = dnsmasq_argv(host)
    assert {"--port=0", "--dhcp-range=10.77.0.0,static,255.255.255.0,12h", "--dhcp-option=option:router,10.77.0.1",
            "--enable-ra", "--dhcp-range=fd00:77::,ra-only,64", f"--interface={BR}"} <= set(argv)  # fmt: skip
    assert f"{BR}" in sh("nft", "list", "set", "inet", "vmplane", "bridges")
    try:
        for p in (a, b):
            p.up()
        assert a.dhcp() == "10.77.0.4 10.77.0.1"
        assert b.dhcp(wait=1.5) == "none"  # static leases only: an unknown MAC gets nothing
        pid = host.dnsmasq_pid(NET)
        await host.ensure_network(NET, [(a.mac, a.ip), (b.mac, b.ip)])  # a new lease: SIGHUP, same dnsmasq
        assert host.dnsmasq_pid(NET) == pid
        assert b.dhcp() == "10.77.0.5 10.77.0.1"

        # a vmplane restart adopts the running dnsmasq; a dead one is restarted
        again = NetworkHost(host.dir.parent)
        await again.ensure_network(NET, [(a.mac, a.ip), (b.mac, b.ip)])
        assert again.dnsmasq_pid(NET) == pid
        os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while again.dnsmasq_pid(NET) is not None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await again.check()
        assert again.dnsmasq_pid(NET) not in (None, pid)
        assert a.dhcp() == "10.77.0.4 10.77.0.1"
    finally:
        for p in (a, b):
            p.down()
    await host.teardown_network(NET)
    assert sh("ip", "-o", "link", "show", "type", "bridge") == ""
    assert host.dnsmasq_pid(NET) is None and not (host.dir / NET.id).exists()
    assert BR not in sh("nft", "list", "set", "inet", "vmplane", "bridges")
    await host.teardown_network(NET)  # idempotent


async def netns_taps_belong_to_qemus_user_and_the_bridge(host: NetworkHost) -> None:
    await host.ensure_network(NET, [])
    tap = tap_name("vm-tapowner1234", 3)
    await host.add_tap(tap, NET)
    await host.add_tap(tap, NET)  # idempotent
    assert Path(f"/sys/class/net/{tap}/owner").read_text().strip() == str(os.geteuid())
    assert Path(f"/sys/class/net/{tap}/master").resolve().name == BR
    await host.delete_tap(tap)
    await host.delete_tap(tap)
    assert not Path(f"/sys/class/net/{tap}").exists()


async def netns_firewall_verdicts_on_packets(host: NetworkHost) -> None:
    a, b = Peer("vm-peer0000aaaa", "10.77.0.4"), Peer("vm-peer0000bbbb", "10.77.0.5")
    await host.ensure_network(NET, [(a.mac, a.ip), (b.mac, b.ip)])
    try:
        for p in (a, b):
            p.up().serve()
        assert a.reach(b) == "open" and b.reach(a) == "open" and from_host(b) == "open"

        async def b_firewall(**body: Any) -> float:
            t = time.monotonic()
            await host.apply_firewall(b.vm_id, [b.tap], parse_firewall({"enabled": True, **body}))
            return time.monotonic() - t

        took = await b_firewall(policyIn="DROP")
        assert took < 1.0
        assert a.reach(b) == "timeout" and from_host(b) == "timeout"
        assert b.reach(a) == "open"  # replies to b's own connections are established
        assert b.dhcp() == "10.77.0.5 10.77.0.1"  # a DROP policy keeps DHCP working

        await b_firewall(policyIn="DROP", rules=[
            {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"},
            {"type": "in", "action": "REJECT", "proto": "tcp", "dport": "23"},
            {"type": "in", "action": "REJECT", "proto": "udp", "dport": "53"},
        ])  # fmt: skip
        assert a.reach(b, 22) == "open" and from_host(b, 22) == "open"
        assert a.reach(b, 23) == "refused" and a.reach(b, 53, "udp") == "refused"
        assert from_host(b, 23) == "timeout"  # from the node itself a REJECT can only drop

        await b_firewall(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "source": "10.77.0.99"}])
        assert a.reach(b) == "timeout"
        await b_firewall(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "source": "10.77.0.0/29"}])
        assert a.reach(b) == "open"

        # out: b may not open connections, but answers the ones made to it
        await b_firewall(policyOut="DROP", rules=[{"type": "out", "action": "REJECT", "proto": "tcp", "dport": "23"}])
        assert b.reach(a, 22) == "timeout" and b.reach(a, 23) == "refused"
        assert a.reach(b) == "open" and b.dhcp() == "10.77.0.5 10.77.0.1"

        await host.apply_firewall(b.vm_id, [b.tap], parse_firewall({"enabled": False, "policyIn": "DROP"}))
        assert a.reach(b) == "open" and b.reach(a) == "open"
        assert nft.chain_names(b.vm_id)[0] not in sh("nft", "list", "table", "bridge", "vmplane")
    finally:
        for p in (a, b):
            p.down()
        await host.remove_firewall(b.vm_id, [b.tap])


async def netns_nat_masquerades_the_subnet_out_of_other_interfaces(host: NetworkHost) -> None:
    a = Peer("vm-peer0000aaaa", "10.77.0.4")
    wan = Peer("vm-peer0000wwww", "10.99.0.2")  # a machine beyond another interface of the node
    await host.ensure_network(NET, [(a.mac, a.ip)])
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    try:
        a.up()
        sh("ip", "-n", a.ns, "route", "add", "default", "via", NET.gateway)
        sh("ip", "netns", "add", wan.ns)
        sh("ip", "link", "add", "vmpwan0", "type", "veth", "peer", "name", "eth0", "netns", wan.ns)
        sh("ip", "addr", "add", "10.99.0.1/24", "dev", "vmpwan0")
        sh("ip", "link", "set", "vmpwan0", "up")
        for argv in (["addr", "add", "10.99.0.2/24", "dev", "eth0"], ["link", "set", "eth0", "up"]):
            sh("ip", "-n", wan.ns, *argv)
        wan.serve()
        assert a.reach(wan, 24) == "10.99.0.1"  # masqueraded: the far side sees the node's address
    finally:
        for p in (a, wan):
            p.down()
        sh("ip", "link", "del", "vmpwan0", check=False)
