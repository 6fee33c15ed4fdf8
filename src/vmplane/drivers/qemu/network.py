"""A qemu VM's network on its host and in its guest, for the qemu driver.

On the host (`vmplane.net.host`): the bridges of a node's bridge networks with their dnsmasq
(static DHCP leases for every NIC of the node's VMs), each bridge NIC's tap and the VM's
firewall on them, brought up before its QEMU starts and down after it ends; forwarded ports
of a user-mode NIC opened and closed over QMP. In the guest: alias addresses, configured
through the guest agent once the NICs have their own addresses (after a start, a reset, or a
change). At `resume` (the driver opens) all of it is applied again to running VMs.
"""

import asyncio
import dataclasses
import ipaddress
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...domain.network import Firewall, Network, Nic, tap_name
from ...errors import DriverError, InvalidState
from ...net import host as nethost
from ...net import ipam
from ...net.nft import TapGuard
from .agent import AgentNotResponding
from .cmdline import active_forwards, hostfwd_rule, user_netdev
from .layout import Forward, VmConfig, save_config, write_json_atomic
from .machines import Machines, QemuHost, QemuVm

log = logging.getLogger("vmplane.drivers.qemu")

NET_CHECK_INTERVAL = 2.0
"""how often the driver checks that the dnsmasq of each bridge network still runs"""
ALIAS_AGENT_WAIT = 300.0
"""how long alias addresses wait for a guest agent (after a start or a change)"""


class Networking:
    """The networks of one node's VMs; `net` is the node's bridges, taps, dnsmasq and nftables."""

    def __init__(self, host: QemuHost, machines: Machines, net: nethost.NetworkHost) -> None:
        self.host = host
        self.machines = machines
        self.net = net
        self._net_watch: asyncio.Task[None] | None = None

    def check(self, vm_id: str, nics: Sequence[Nic]) -> None:
        """A VM's NICs are possible here: bridge networks need the node's support."""
        if len(nics) > 99:
            raise DriverError("a VM has at most 99 NICs", vm_id=vm_id)
        for i, nic in enumerate(nics):
            if nic.network.type == "bridge" and not self.net.available:
                raise DriverError(
                    f"NIC {i} is on bridge network {nic.network.name!r}, but {self.host.hostname} cannot run bridge "
                    f"networks: {self.net.support.reason}", vm_id=vm_id,
                )  # fmt: skip
            if nic.network.type not in ("user", "bridge"):
                raise DriverError(f"NIC {i} is on a {nic.network.type!r} network, which this driver does not know", vm_id=vm_id)

    @staticmethod
    def _taps(config: VmConfig) -> list[tuple[str, Network]]:
        """(tap, network) of the VM's bridge NICs."""
        return [(tap_name(config.id, i), nic.network) for i, nic in enumerate(config.nics) if nic.network.type == "bridge"]

    @staticmethod
    def _guards(config: VmConfig) -> list[TapGuard]:
        """What each bridge NIC may send as: its MAC, its IPv4 addresses, its EUI-64
        link-local and SLAAC IPv6 addresses."""
        return [
            TapGuard(
                tap_name(config.id, i), nic.mac, (nic.ip, *nic.aliases),
                (ipam.ipv6_for("fe80::/64", nic.mac), *((nic.ipv6,) if nic.ipv6 else ())),
            )  # fmt: skip
            for i, nic in enumerate(config.nics)
            if nic.network.type == "bridge"
        ]

    def _hosts(self, network_id: str, extra: VmConfig | None = None) -> list[tuple[str, str]]:
        """Static DHCP leases of a network: (mac, ip) of every NIC of this node's VMs on it."""
        configs = {vm.id: vm.config for vm in list(self.machines.vms.values())}
        if extra is not None:
            configs[extra.id] = extra
        return [(nic.mac, nic.ip) for c in configs.values() for nic in c.nics if nic.network.id == network_id]

    async def up(self, vm: QemuVm) -> dict[str, Any]:
        """Before QEMU starts: the bridges (and their dnsmasq) of the VM's networks, its taps,
        its firewall. Returns what run.json records of it."""
        taps = self._taps(vm.config)
        if taps:
            self.check(vm.id, vm.config.nics)
            for network in {n.id: n for _, n in taps}.values():
                await self.net.ensure_network(network, self._hosts(network.id, vm.config))
            for tap, network in taps:
                await self.net.add_tap(tap, network)
            await self.net.apply_firewall(vm.id, [t for t, _ in taps], vm.config.firewall, self._guards(vm.config))
        forwards = active_forwards(vm.config, self.host.forward_address)
        return {"taps": [t for t, _ in taps], "hostfwds": [[f.protocol, f.host_port, f.guest_port] for f in forwards]}

    async def down(self, vm: QemuVm) -> None:
        """After QEMU is gone: its taps and firewall chains. Failures are logged (this runs on
        every cleanup path, whose own outcome must not be masked)."""
        taps = [t for t, _ in self._taps(vm.config)]
        if not taps or not self.net.available:
            return
        try:
            await self.net.remove_firewall(vm.id, taps)
        except DriverError as exc:
            log.error("VM %s: removing its firewall: %s", vm.id, exc.message)
        for tap in taps:
            try:
                await self.net.delete_tap(tap)
            except DriverError as exc:
                log.error("VM %s: %s", vm.id, exc.message)

    async def release(self, config: VmConfig) -> None:
        """After a VM is deleted: networks no other VM of the node uses are torn down; the
        others lose its DHCP leases."""
        for network in {n.id: n for _, n in self._taps(config)}.values():
            try:
                if any(nic.network.id == network.id for other in list(self.machines.vms.values()) for nic in other.config.nics):
                    if self.net.is_up(network):
                        await self.net.ensure_network(network, self._hosts(network.id))
                else:
                    await self.net.teardown_network(network)
            except DriverError as exc:
                log.error("network %s after deleting VM %s: %s", network.id, config.id, exc.message)

    async def resume(self) -> None:
        """At open(): adopt (or restart) the dnsmasq of networks that are in use and apply the
        firewalls of running VMs again (vmplane or the host restarted)."""
        if not self.net.available:
            if any(self._taps(vm.config) for vm in self.machines.vms.values()):
                log.warning("bridge networks are unavailable (%s): VMs with bridge NICs will not start", self.net.support.reason)
            return
        running = [vm for vm in self.machines.vms.values() if self.machines.live_pid(vm) is not None]
        networks: dict[str, Network] = {}
        for vm in self.machines.vms.values():
            for _, network in self._taps(vm.config):
                networks[network.id] = network
        in_use = {n.id for vm in running for _, n in self._taps(vm.config)}
        for network in networks.values():
            if network.id in in_use or self.net.dnsmasq_pid(network) is not None:
                try:
                    await self.net.ensure_network(network, self._hosts(network.id))
                except DriverError as exc:
                    log.error("network %s: %s", network.id, exc.message)
        for vm in running:
            taps = self._taps(vm.config)
            if not taps:
                continue
            try:
                for tap, network in taps:
                    await self.net.add_tap(tap, network)
                await self.net.apply_firewall(vm.id, [t for t, _ in taps], vm.config.firewall, self._guards(vm.config))
            except DriverError as exc:
                log.error("VM %s: applying its network again: %s", vm.id, exc.message)
        if self._net_watch is None or self._net_watch.done():
            self._net_watch = self.machines.background(self._watch(), "net-watch")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(NET_CHECK_INTERVAL)
            try:
                await self.net.check()
            except Exception:  # keep watching whatever happened
                log.exception("checking the dnsmasq of bridge networks")

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            old = vm.config
            if not old.nics and nics:
                log.info("VM %s was defined before networks: it keeps its one user-mode NIC", vm_id)
                nics = ()
            if [(n.network.id, n.network.type, n.mac) for n in nics] != [(n.network.id, n.network.type, n.mac) for n in old.nics]:
                raise DriverError(
                    f"VM {vm_id}'s NICs are fixed at create time: networks and MACs must stay as they are", vm_id=vm_id
                )
            self.check(vm_id, nics)
            vm.config = old.with_network(nics, firewall)
            save_config(vm.paths, vm.config)
            if self.machines.live_pid(vm) is None or self.machines.guest_off(vm):
                return  # applied at the next start
            taps = self._taps(vm.config)
            for network in {n.id: n for _, n in taps}.values():
                if self.net.is_up(network):  # addresses may have changed: new static leases
                    await self.net.ensure_network(network, self._hosts(network.id))
            if taps:
                await self.net.apply_firewall(vm_id, [t for t, _ in taps], firewall, self._guards(vm.config))
            await self._update_forwards(vm)
            old_aliases = tuple(a for n in old.nics for a in n.aliases)
            try:
                done = await self._sync_guest_addresses(vm, old_aliases, ready_timeout=2.0)
            except AgentNotResponding:
                done = False
            if not done:
                log.info("VM %s: the guest is not ready for its addresses yet; they follow when it is", vm_id)
                self.machines.background(self.addresses_later(vm_id, old_aliases), f"aliases-{vm_id}")

    async def move_ports(self, vm_id: str, moves: Mapping[tuple[str, int], int]) -> None:
        """The stopped VM forwards from other host ports at its next start (the control plane
        re-picked ports that another process took): its config's forwards change, nothing else."""
        async with self.machines.lock(vm_id):
            vm = self.machines.vm(vm_id)
            if self.machines.live_pid(vm) is not None:
                raise InvalidState(f"VM {vm_id} runs: its forwarded ports move while it is stopped", current="running")
            forwards = tuple(dataclasses.replace(f, host_port=moves.get((f.protocol, f.host_port), f.host_port)) for f in vm.config.forwards)
            if forwards != vm.config.forwards:
                vm.config = dataclasses.replace(vm.config, forwards=forwards)
                save_config(vm.paths, vm.config)
                log.info("VM %s: forwarded ports moved: %s", vm_id, ", ".join(f"{p}/{o}->{n}" for (p, o), n in sorted(moves.items())))

    async def _update_forwards(self, vm: QemuVm) -> None:
        """Open and close forwarded ports of a running VM's user-mode NIC (QMP hostfwd_add and
        hostfwd_remove) to match its firewall; run.json records what is open."""
        netdev = user_netdev(vm.config)
        try:
            run = json.loads(vm.paths.run.read_text())
        except (OSError, ValueError) as exc:
            raise DriverError(f"run.json of {vm.id} is unreadable: {exc}", vm_id=vm.id) from exc
        if netdev is None:
            return
        if "hostfwds" in run:
            current = {Forward(str(p), int(h), int(g)) for p, h, g in run["hostfwds"]}
        else:  # started by a vmplane that forwarded every exposed port
            current = set(vm.config.forwards)
        wanted = set(active_forwards(vm.config, self.host.forward_address))
        monitor = self.machines.monitor(vm)
        for f in sorted(current - wanted, key=lambda f: (f.protocol, f.host_port)):
            rule = hostfwd_rule(f, self.host.forward_address)
            src = rule.rsplit("-", 1)[0]  # tcp:127.0.0.1:20000
            out = await monitor.execute("human-monitor-command", {"command-line": f"hostfwd_remove {netdev} {src}"})
            if out and "removed" not in out and "not found" not in out:
                raise DriverError(f"closing forwarded port {f.host_port}: {out.strip()}", vm_id=vm.id)
            current.discard(f)
            run["hostfwds"] = [[x.protocol, x.host_port, x.guest_port] for x in sorted(current, key=lambda x: (x.protocol, x.host_port))]
            write_json_atomic(vm.paths.run, run)
        for f in sorted(wanted - current, key=lambda f: (f.protocol, f.host_port)):
            out = await monitor.execute(
                "human-monitor-command", {"command-line": f"hostfwd_add {netdev} {hostfwd_rule(f, self.host.forward_address)}"}
            )
            if out and out.strip():
                raise DriverError(f"opening forwarded port {f.host_port}: {out.strip()}", vm_id=vm.id)
            current.add(f)
            run["hostfwds"] = [[x.protocol, x.host_port, x.guest_port] for x in sorted(current, key=lambda x: (x.protocol, x.host_port))]
            write_json_atomic(vm.paths.run, run)

    def after_reset(self, vm_id: str) -> None:
        """The machine reset (the guest rebooted): a new boot has none of the alias addresses."""
        vm = self.machines.vms.get(vm_id)
        if vm is not None and any(nic.aliases for nic in vm.config.nics):
            self.machines.background(self.addresses_later(vm_id, (), new_boot=True), f"aliases-{vm_id}")

    async def addresses_later(self, vm_id: str, old_aliases: tuple[str, ...], new_boot: bool = False) -> None:
        """Configure alias addresses once the guest agent answers and the NICs have their own
        addresses (after a start or a reset, or after a change the guest was not ready for)."""
        deadline = time.monotonic() + ALIAS_AGENT_WAIT
        try:
            vm = self.machines.running(vm_id)
            if new_boot and vm.agent is not None:
                await vm.agent.close()  # resynchronise with the agent of the new boot
            while True:
                await self.machines.agent(vm).wait_ready(max(1.0, deadline - time.monotonic()))
                async with self.machines.lock(vm_id):
                    vm = self.machines.running(vm_id)
                    if await self._sync_guest_addresses(vm, old_aliases, ready_timeout=5.0):
                        return
                if time.monotonic() > deadline:
                    raise DriverError("the guest's interfaces did not get their addresses by DHCP", vm_id=vm_id)
                await asyncio.sleep(1.0)
        except (DriverError, InvalidState) as exc:
            log.warning("VM %s: alias addresses not configured: %s", vm_id, exc.message)

    async def _sync_guest_addresses(self, vm: QemuVm, old_aliases: tuple[str, ...], ready_timeout: float) -> bool:
        """Make each NIC's alias addresses those configured in the guest (its interface found
        by MAC): add the missing ones, remove former aliases no longer listed. False (nothing
        or part done) while an interface with aliases lacks its own address: the guest's DHCP
        client is still at work, and it flushes the interface when it binds."""
        if not any(nic.aliases for nic in vm.config.nics) and not old_aliases:
            return True
        ifaces = await self.machines.agent(vm).execute("guest-network-get-interfaces", timeout=5.0, ready_timeout=ready_timeout)
        by_mac = {str(i.get("hardware-address", "")).lower(): i for i in ifaces or []}
        former = {str(ipaddress.ip_address(a.split("/")[0])) for a in old_aliases}
        done = True
        for nic in vm.config.nics:
            iface = by_mac.get(nic.mac.lower())
            present = {str(a.get("ip-address")): int(a.get("prefix", 0)) for a in (iface or {}).get("ip-addresses") or []}
            if iface is None or (nic.aliases and nic.ip not in present):
                done = done and not nic.aliases
                continue
            name = nethost.check_ifname(str(iface.get("name", "")))
            wanted = [_alias(nic, a) for a in nic.aliases]
            keep = {nic.ip, *(w.split("/")[0] for w in wanted)}
            for addr, prefix in present.items():
                if addr in former and addr not in keep:
                    await self._guest_ip(vm, ["ip", "addr", "del", f"{addr}/{prefix}", "dev", name])
            for cidr in wanted:
                if cidr.split("/")[0] not in present:
                    await self._guest_ip(vm, ["ip", "addr", "add", cidr, "dev", name])
        return done

    async def _guest_ip(self, vm: QemuVm, argv: list[str]) -> None:
        result = await self.machines.agent(vm).exec(argv, timeout=10.0, max_output=4096, ready_timeout=5.0)
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise DriverError(f"{' '.join(argv)} failed in the guest: {err or result.exit_code}", vm_id=vm.id)



def _alias(nic: Nic, alias: str) -> str:
    """An alias as `ip addr add` takes it: with the network's prefix length when it lies in
    the network's subnet (or IPv6 prefix), else as a single address."""
    ip = ipaddress.ip_address(alias.split("/")[0])
    if ip.version == 4:
        subnet = ipaddress.IPv4Network(nic.network.subnet)
        return f"{ip}/{subnet.prefixlen if ip in subnet else 32}"
    prefix = ipaddress.IPv6Network(nic.network.ipv6_prefix) if nic.network.ipv6_prefix else None
    return f"{ip}/{prefix.prefixlen if prefix is not None and ip in prefix else 128}"
