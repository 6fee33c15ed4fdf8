"""The node's side of bridge networks: bridges, taps, one dnsmasq per bridge, nftables.

- A bridge network is a Linux bridge (`Network.bridge`, else `bridge_name(id)`) with the
  network's gateway address on it (and `<ipv6 prefix>::1/64` when it has one), a fixed MAC
  (so taps coming and going never change it), and `nf_call_iptables` on: bridged IP traffic
  also passes the inet hooks, where conntrack and `reject` work (see `nft`). With NAT
  (default) its subnet is masqueraded out of every other interface and IPv4 forwarding is on.
- An organization's bridges route in the organization's own network namespace
  (`netns_name(org_id)`, `vmpl-<hash>`), so a tenant's subnet never shadows a route of the
  host's or of another organization's, and two organizations may use the same subnet on one
  node. The bridge itself (and its taps, where QEMU opens them) stays in the host's
  namespace with no address; a veth pair links it to the namespace, where the peer (named
  like the bridge) holds the gateway address and dnsmasq serves DHCP. With NAT, a second
  veth pair (`vmu<hash>` on the host, `uplink` in the namespace, a /30 of the transit pool)
  is the namespace's default route: the namespace masquerades its subnets to its uplink
  address, the host masquerades that out of its other interfaces. Networks of no recorded
  organization (VM configs written before this) keep their bridge and gateway on the host.
- Each VM NIC on a bridge network is a persistent tap (`tap_name(vm_id, index)`), owned by
  the uid QEMU runs as and enslaved to the bridge; QEMU opens it by name.
- One dnsmasq per bridge serves DHCP only (`--port=0`): static leases for the MACs listed in
  its hosts file (`--dhcp-range=<net>,static`: unknown MACs get nothing), the gateway as
  router, and IPv6 router advertisements when the network has a prefix. It runs detached like
  QEMU (it survives a vmplane restart, is adopted again by its pid file and command line, and
  restarted by `check()` when it died); a changed hosts file reaches it by SIGHUP. It drops to
  `nobody` when that user can read its hosts file (the state dir is world-traversable) and
  stays root otherwise.
- A VM's firewall and the guards of its NICs (no spoofed MAC, IPv4, ARP or IPv6 source:
  `nft.TapGuard`, always on) are one `nft -f -` transaction (`nft.vm_ruleset`).

Every command is an argument list (no shell); interface names, addresses and MACs are
checked before they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import hashlib
import ipaddress
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import procfs
from ..domain.network import Firewall, Network, bridge_name
from ..errors import DriverError
from . import nft
from .nft import TapGuard  # by name: in NetHost's body `nft` is its method

log = logging.getLogger("vmplane.net")

SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
LEASE_TIME = "12h"
COMMAND_TIMEOUT = 20.0
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
CAP_NET_ADMIN = 12


def which(tool: str) -> str | None:
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def has_net_admin() -> bool:
    """True if this process holds CAP_NET_ADMIN (root normally does)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def bridge_of(network: Network) -> str:
    name = network.bridge or bridge_name(network.id)
    return check_ifname(name)


def check_ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise DriverError(f"{name!r} is not a valid interface name")
    return name


def check_mac(mac: str) -> str:
    mac = mac.lower()
    if not _MAC.match(mac):
        raise DriverError(f"{mac!r} is not a MAC address")
    return mac


def netns_name(org_id: str) -> str:
    """The network namespace of an organization's bridges on a node."""
    return "vmpl-" + hashlib.sha256(f"org/{org_id}".encode()).hexdigest()[:10]


def gate_name(network_id: str) -> str:
    """The host end of the veth that links a network's bridge to its namespace."""
    return "vmg" + hashlib.sha256(network_id.encode()).hexdigest()[:10]


def uplink_name(org_id: str) -> str:
    """The host end of an organization namespace's NAT uplink."""
    return "vmu" + hashlib.sha256(f"org/{org_id}".encode()).hexdigest()[:10]


def transit_link(pool: str, org_id: str) -> ipaddress.IPv4Network:
    """The /30 of `pool` linking the host (first address) and the organization's namespace
    (second): chosen by a hash of the organization id (NetworkHost refuses a collision)."""
    net = ipaddress.IPv4Network(pool)
    blocks = 1 << (30 - net.prefixlen)
    index = int(hashlib.sha256(f"transit/{org_id}".encode()).hexdigest(), 16) % blocks
    return ipaddress.IPv4Network((int(net.network_address) + 4 * index, 30))


def bridge_mac(network_id: str) -> str:
    """A stable, locally administered unicast MAC for the bridge of a network."""
    b = hashlib.sha256(f"bridge/{network_id}".encode()).digest()[:5]
    return "02:" + ":".join(f"{x:02x}" for x in b)


@dataclass(frozen=True, slots=True)
class Support:
    bridge: bool
    reason: str


def detect() -> Support:
    """Whether this process can run bridge networks: CAP_NET_ADMIN, `ip`, `dnsmasq`, `nft`,
    and br_netfilter (which the firewall's conntrack and rejects rely on)."""
    if not has_net_admin():
        return Support(False, "vmplane runs without CAP_NET_ADMIN (not root)")
    missing = [t for t in ("ip", "dnsmasq", "nft") if which(t) is None]
    if missing:
        return Support(False, f"{', '.join(missing)} not installed (scripts/install-qemu.sh installs them)")
    if not Path("/proc/sys/net/bridge").is_dir():
        modprobe = which("modprobe")
        if modprobe is not None:
            subprocess.run([modprobe, "br_netfilter"], capture_output=True, timeout=COMMAND_TIMEOUT, check=False)
        if not Path("/proc/sys/net/bridge").is_dir():
            return Support(False, "the kernel has no br_netfilter (modprobe br_netfilter failed)")
    return Support(True, "CAP_NET_ADMIN, ip, dnsmasq, nft and br_netfilter present")


class NetworkHost:
    """Bridges, taps, dnsmasq and nftables of one node. Methods are idempotent; calls on one
    network are serialised."""

    def __init__(self, state_dir: Path, *, nat: bool = True, owner_uid: int | None = None, transit_pool: str = "100.64.0.0/10") -> None:
        self.dir = Path(state_dir) / "net"
        self.nat = nat
        self.transit_pool = str(ipaddress.IPv4Network(transit_pool))
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        self.support = detect()
        self._locks: dict[str, asyncio.Lock] = {}
        self._active: dict[str, Network] = {}
        """networks this process brought up (or adopted): check() keeps their dnsmasq alive"""

    @property
    def available(self) -> bool:
        return self.support.bridge

    def require(self) -> None:
        if not self.available:
            raise DriverError(f"bridge networks are not available on this node: {self.support.reason}")

    # -- commands --------------------------------------------------------------------------

    async def run(self, argv: list[str], input: bytes | None = None, check: bool = True) -> tuple[int, str, str]:
        tool = which(argv[0]) or argv[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                tool, *argv[1:],
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise DriverError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), COMMAND_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise DriverError(f"{' '.join(argv[:4])} did not finish in {COMMAND_TIMEOUT:g} s") from None
        rc = proc.returncode or 0
        if check and rc != 0:
            msg = err.decode(errors="replace").strip().splitlines()
            raise DriverError(f"{' '.join(argv[:6])} failed: {' / '.join(msg[-3:])[-400:] or f'status {rc}'}")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    async def nft(self, text: str) -> None:
        await self.run(["nft", "-f", "-"], input=text.encode())

    async def link_exists(self, name: str) -> bool:
        rc, _, _ = await self.run(["ip", "-o", "link", "show", "dev", name], check=False)
        return rc == 0

    # -- networks --------------------------------------------------------------------------

    def net_dir(self, network: Network) -> Path:
        if not re.match(r"^[a-z]{2,8}-[0-9a-z]{4,40}$", network.id):
            raise DriverError(f"{network.id!r} is not a network id")
        return self.dir / network.id

    def _lock(self, network_id: str) -> asyncio.Lock:
        return self._locks.setdefault(network_id, asyncio.Lock())

    async def ensure_network(self, network: Network, hosts: Iterable[tuple[str, str]]) -> None:
        """Bring the network's bridge, addresses, NAT and dnsmasq up (or adopt them), with
        static DHCP leases for `hosts` (mac, ip)."""
        self.require()
        if network.type != "bridge":
            raise DriverError(f"network {network.id} is a {network.type} network, not a bridge")
        async with self._lock(network.id):
            await self._ensure_bridge(network)
            d = self.net_dir(network)
            d.mkdir(parents=True, exist_ok=True)
            changed = self._write_hosts(network, hosts)
            pid = self.dnsmasq_pid(network)
            if pid is None:
                await self._start_dnsmasq(network)
            elif changed:
                procfs.kill(pid, signal.SIGHUP)
            self._active[network.id] = network

    async def _ensure_bridge(self, network: Network) -> None:
        br = bridge_of(network)
        subnet = ipaddress.IPv4Network(network.subnet)
        gateway = ipaddress.IPv4Address(network.gateway)
        if gateway not in subnet:
            raise DriverError(f"gateway {gateway} is outside {subnet}")
        if not await self.link_exists(br):
            await self.run(["ip", "link", "add", "name", br, "address", bridge_mac(network.id), "type", "bridge",
                            "nf_call_iptables", "1", "nf_call_ip6tables", "1"])  # fmt: skip
        else:
            await self.run(["ip", "link", "set", "dev", br, "type", "bridge", "nf_call_iptables", "1", "nf_call_ip6tables", "1"])
        if network.org_id is None:  # (a network recorded before organizations had namespaces)
            await self._address(None, br, network)
            await self.run(["ip", "link", "set", "dev", br, "up"])
            await self.nft(nft.network_up(br, str(subnet) if self.nat else None))
            if self.nat:
                _write_sysctl("net/ipv4/ip_forward", "1")
            return
        ns = await self._ensure_netns(network.org_id, self.dnsmasq_pid(network))
        gate = gate_name(network.id)
        if not await self.link_exists(gate):
            # the namespace's end is named like the bridge: dnsmasq serves that interface
            await self.run(["ip", "-n", ns, "link", "del", "dev", br], check=False)
            await self.run(["ip", "link", "add", "name", gate, "type", "veth", "peer", "name", br, "netns", ns])
        await self.run(["ip", "link", "set", "dev", gate, "master", br])
        await self.run(["ip", "link", "set", "dev", gate, "up"])
        await self.run(["ip", "addr", "flush", "dev", br])  # the host has no address on a tenant's bridge
        await self.run(["ip", "link", "set", "dev", br, "up"])
        await self._address(ns, br, network)
        await self.run(["ip", "-n", ns, "link", "set", "dev", br, "up"])
        await self.nft(nft.network_up(br, None))
        if self.nat:
            await self.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=nft.namespace_nat().encode())

    async def _address(self, ns: str | None, dev: str, network: Network) -> None:
        """The gateway address (and `<prefix>::1/64`) on `dev`, in `ns` (None: the host)."""
        ip = ["ip"] if ns is None else ["ip", "-n", ns]
        subnet = ipaddress.IPv4Network(network.subnet)
        await self.run([*ip, "addr", "replace", f"{network.gateway}/{subnet.prefixlen}", "dev", dev])
        if network.ipv6_prefix:
            prefix = ipaddress.IPv6Network(network.ipv6_prefix)
            await self.run([*ip, "-6", "addr", "replace", f"{prefix.network_address + 1}/{prefix.prefixlen}", "dev", dev])

    async def _ensure_netns(self, org_id: str, dnsmasq: int | None) -> str:
        """The organization's namespace, with loopback up, forwarding on and, with NAT, its
        uplink to the host. Idempotent. A name whose mount is gone (vmplane restarted in
        another mount namespace) is attached again to the namespace the network's running
        dnsmasq is in."""
        ns = netns_name(org_id)
        usable = Path("/run/netns", ns).exists() and (await self.run(["ip", "-n", ns, "link", "show", "dev", "lo"], check=False))[0] == 0
        if not usable:
            if Path("/run/netns", ns).exists():
                await self.run(["ip", "netns", "del", ns], check=False)
                Path("/run/netns", ns).unlink(missing_ok=True)
            if dnsmasq is not None:
                await self.run(["ip", "netns", "attach", ns, str(dnsmasq)])
            else:
                await self.run(["ip", "netns", "add", ns])
        await self.run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        await self.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        if not self.nat:
            return ns
        link = transit_link(self.transit_pool, org_id)
        host_ip, ns_ip = link.network_address + 1, link.network_address + 2
        up = uplink_name(org_id)
        if not await self.link_exists(up):
            rc, out, _ = await self.run(["ip", "-o", "-4", "addr", "show", "to", str(link)], check=False)
            if rc == 0 and out.strip():
                raise DriverError(f"the transit link {link} of organization {org_id} is taken on this node (VMPLANE_TENANT_TRANSIT_POOL)")
            await self.run(["ip", "-n", ns, "link", "del", "dev", "uplink"], check=False)
            await self.run(["ip", "link", "add", "name", up, "type", "veth", "peer", "name", "uplink", "netns", ns])
        await self.run(["ip", "addr", "replace", f"{host_ip}/30", "dev", up])
        await self.run(["ip", "link", "set", "dev", up, "up"])
        await self.run(["ip", "-n", ns, "addr", "replace", f"{ns_ip}/30", "dev", "uplink"])
        await self.run(["ip", "-n", ns, "link", "set", "dev", "uplink", "up"])
        await self.run(["ip", "-n", ns, "route", "replace", "default", "via", str(host_ip), "dev", "uplink"])
        await self.nft(nft.uplink_up(str(link)))
        _write_sysctl("net/ipv4/ip_forward", "1")
        return ns

    async def _drop_netns(self, org_id: str) -> None:
        """Remove the organization's namespace (and uplink) when no bridge of it is left."""
        ns = netns_name(org_id)
        if not Path("/run/netns", ns).exists():
            return
        rc, out, _ = await self.run(["ip", "-n", ns, "-o", "link", "show"], check=False)
        names = [line.split(": ")[1].split("@")[0] for line in out.splitlines() if line.count(": ") >= 2]
        if rc != 0 or any(n.startswith("vmbr") for n in names):
            return
        up = uplink_name(org_id)
        if await self.link_exists(up):
            await self.run(["ip", "link", "del", "dev", up], check=False)
        await self.nft(nft.uplink_down(str(transit_link(self.transit_pool, org_id))))
        await self.run(["ip", "netns", "del", ns], check=False)

    def _write_hosts(self, network: Network, hosts: Iterable[tuple[str, str]]) -> bool:
        """Write the dhcp-hostsfile; True if its content changed."""
        subnet = ipaddress.IPv4Network(network.subnet)
        lines = []
        for mac, ip in sorted(set(hosts)):
            addr = ipaddress.IPv4Address(ip)
            if addr not in subnet:
                raise DriverError(f"address {addr} is outside the subnet {subnet} of network {network.id}")
            lines.append(f"{check_mac(mac)},{addr}\n")
        text = "".join(lines)
        path = self.net_dir(network) / "hosts"
        with contextlib.suppress(OSError):
            if path.read_text() == text:
                return False
        tmp = path.with_name(".hosts.tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return True

    def dnsmasq_pid(self, network: Network) -> int | None:
        """The pid of the network's live dnsmasq (read from its pid file, checked against its
        command line), else None."""
        d = self.net_dir(network)
        try:
            pid = int((d / "dnsmasq.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if procfs.is_ours(pid, str(d) + os.sep) else None

    def _dnsmasq_argv(self, network: Network) -> list[str]:
        d = self.net_dir(network)
        br = bridge_of(network)
        subnet = ipaddress.IPv4Network(network.subnet)
        inside = [] if network.org_id is None else [which("ip") or "ip", "netns", "exec", netns_name(network.org_id)]
        argv = [
            *inside,  # (`ip netns exec` execs dnsmasq: the pid stays the same)
            which("dnsmasq") or "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",  # DHCP only: no DNS server
            "--bind-interfaces",
            f"--interface={br}",
            "--except-interface=lo",
            f"--dhcp-range={subnet.network_address},static,{subnet.netmask},{LEASE_TIME}",
            f"--dhcp-hostsfile={d / 'hosts'}",
            f"--dhcp-leasefile={d / 'leases'}",
            f"--pid-file={d / 'dnsmasq.pid'}",
            f"--dhcp-option=option:router,{ipaddress.IPv4Address(network.gateway)}",
            "--dhcp-authoritative",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=-",
        ]
        if network.ipv6_prefix:
            prefix = ipaddress.IPv6Network(network.ipv6_prefix)
            argv += ["--enable-ra", f"--dhcp-range={prefix.network_address},ra-only,{prefix.prefixlen}"]
        user = _unprivileged_user(d / "hosts")
        if user is not None:
            argv += [f"--user={user[0]}", f"--group={user[1]}"]
        else:
            argv += ["--user=root", "--group=root"]
        return argv

    async def _start_dnsmasq(self, network: Network) -> int:
        d = self.net_dir(network)
        argv = self._dnsmasq_argv(network)
        if "--user=root" in argv:
            log.warning("dnsmasq of %s stays root: user nobody cannot read %s (make the data dir world-traversable)", network.id, d)
        (d / "dnsmasq.pid").unlink(missing_ok=True)
        try:
            pid = procfs.spawn(argv, cwd=d, log=d / "dnsmasq.log")
        except OSError as exc:
            raise DriverError(f"cannot run dnsmasq: {exc.strerror}") from exc
        # dnsmasq writes its pid file once its sockets are bound; it exits at once on errors
        deadline = time.monotonic() + 5.0
        while True:
            if self.dnsmasq_pid(network) == pid:
                return pid
            if not procfs.is_ours(pid, str(d) + os.sep):
                tail = _tail(d / "dnsmasq.log")
                raise DriverError(f"dnsmasq for network {network.id} exited at start: {tail}")
            if time.monotonic() > deadline:
                procfs.kill(pid)
                raise DriverError(f"dnsmasq for network {network.id} did not start within 5 s")
            await asyncio.sleep(0.01)

    async def check(self) -> None:
        """Restart the dnsmasq of every active network that died."""
        for network in list(self._active.values()):
            async with self._lock(network.id):
                if network.id not in self._active or self.dnsmasq_pid(network) is not None:
                    continue
                if not await self.link_exists(bridge_of(network)):
                    log.warning("bridge of network %s is gone; it comes back at the next VM start", network.id)
                    self._active.pop(network.id, None)
                    continue
                log.warning("dnsmasq of network %s is not running; restarting it", network.id)
                try:
                    await self._start_dnsmasq(network)
                except DriverError as exc:
                    log.error("restarting dnsmasq of network %s: %s", network.id, exc.message)

    async def teardown_network(self, network: Network) -> None:
        """Stop the network's dnsmasq, delete its bridge and NAT entry. Idempotent."""
        if network.type != "bridge" or not self.available:
            return
        async with self._lock(network.id):
            self._active.pop(network.id, None)
            d = self.net_dir(network)
            pid = self.dnsmasq_pid(network)
            if pid is not None:
                procfs.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 5.0
                while procfs.is_ours(pid, str(d) + os.sep) and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                procfs.kill(pid, signal.SIGKILL)
            br = bridge_of(network)
            if await self.link_exists(br):
                await self.run(["ip", "link", "del", "dev", br])
            await self.nft(nft.network_down(br, network.subnet))
            if network.org_id is not None:
                gate = gate_name(network.id)
                if await self.link_exists(gate):  # (its peer in the namespace goes with it)
                    await self.run(["ip", "link", "del", "dev", gate], check=False)
                await self._drop_netns(network.org_id)
            shutil.rmtree(d, ignore_errors=True)

    def is_up(self, network: Network) -> bool:
        return network.id in self._active

    # -- taps ------------------------------------------------------------------------------

    async def add_tap(self, tap: str, network: Network) -> None:
        """Create the tap (owned by QEMU's uid), enslave it to the network's bridge, up."""
        self.require()
        tap = check_ifname(tap)
        br = bridge_of(network)
        if not await self.link_exists(tap):
            await self.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap", "user", str(self.owner_uid)])
        await self.run(["ip", "link", "set", "dev", tap, "master", br])
        await self.run(["ip", "link", "set", "dev", tap, "up"])

    async def delete_tap(self, tap: str) -> None:
        tap = check_ifname(tap)
        if self.available and await self.link_exists(tap):
            rc, _, err = await self.run(["ip", "link", "del", "dev", tap], check=False)
            if rc != 0 and await self.link_exists(tap):
                raise DriverError(f"cannot delete tap {tap}: {err.strip()}")

    # -- firewalls -------------------------------------------------------------------------

    async def apply_firewall(self, vm_id: str, taps: list[str], firewall: Firewall, guards: Iterable[TapGuard] = ()) -> None:
        """Make the VM's firewall `firewall` on its taps and the guards of its NICs (what
        each may send as), in one transaction."""
        self.require()
        await self.nft(nft.vm_ruleset(vm_id, [check_ifname(t) for t in taps], firewall, guards))

    async def remove_firewall(self, vm_id: str, taps: list[str]) -> None:
        if self.available:
            await self.nft(nft.vm_removal(vm_id, [check_ifname(t) for t in taps]))


def _write_sysctl(name: str, value: str) -> None:
    path = Path("/proc/sys") / name
    try:
        if path.read_text().strip() != value:
            path.write_text(value)
    except OSError as exc:
        raise DriverError(f"cannot set {name.replace('/', '.')}={value}: {exc.strerror}") from exc


def _unprivileged_user(path: Path) -> tuple[str, str] | None:
    """(user, group) dnsmasq can drop to and still read `path` after a SIGHUP, else None."""
    try:
        pw = pwd.getpwnam("nobody")
        group = grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        return None
    for parent in path.absolute().parents:
        try:
            if not parent.stat().st_mode & 0o001:
                return None
        except OSError:
            return None
    return pw.pw_name, group


def _tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return " / ".join(lines[-3:])[-400:]
