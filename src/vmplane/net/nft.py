"""A VM's firewall as nftables text: pure functions, no I/O (`host` feeds the text to `nft -f -`).

Layout (two tables, both named `vmplane`, shared by every VM of the node):

- `table bridge vmplane` holds the rules. Base chains on the bridge `forward`, `input` and
  `output` hooks dispatch through two verdict maps keyed by the VM's tap interfaces:
  `iifname vmap @vm_out` (traffic the VM sends) and `oifname vmap @vm_in` (traffic to it).
  Each VM with an enabled firewall has two chains, `in_<vm>` and `out_<vm>`: established and
  related traffic first, then ARP / DHCP / IPv6 neighbour discovery (a DROP policy never
  breaks the guest's lease or its neighbours), then the rules in order (the first match wins),
  then the policy. An accepting verdict is `return` so that traffic between two VMs passes
  the sender's `out_` chain and then the receiver's `in_` chain.
- `table inet vmplane` supplies what the bridge family cannot do on every kernel (bridge
  conntrack and bridge `reject` are optional kernel modules, missing on our CI machines):
  the bridges run with `nf_call_iptables` (br_netfilter), so bridged IP traffic also passes
  the inet hooks, where conntrack runs. Its chains mark established/related packets on our
  bridges with ESTABLISHED_MARK (which the bridge chains test), and reject the packets the
  bridge chains marked with REJECT_MARK (TCP reset, else ICMP port/admin unreachable) in the
  inet `forward` and `input` hooks — the kernel builds resets for bridged packets there. It
  also masquerades the subnets of networks with NAT.

Every bridge NIC also has a guard chain, always on whatever its VM's firewall says
(`g_<tap>`, dispatched first by `iifname vmap @guard` in the bridge `forward` and `input`
hooks): the NIC may send only its own MAC as source, only IPv4, ARP and IPv6 frames (no VLAN
tags, no other ethertypes), ARP only with its own MAC and one of its assigned IPv4 addresses
as sender (0.0.0.0 for RFC 5227 probes), IPv4 only from its assigned addresses (0.0.0.0 only
for DHCP client traffic to port 67) and IPv6 only from its EUI-64 link-local address, its
SLAAC address in the network's prefix, or :: (duplicate address detection). Anything else
is dropped before it reaches another port of the bridge or the node.

Applying one VM's firewall is one transaction (`vm_ruleset`): the tables, maps and base
chains are (re)declared idempotently (their rules flushed and written again, so a flushed
ruleset heals), then only this VM's chains are flushed and refilled and its map elements
set. Nothing a user typed reaches the text: rules carry only validated, re-parsed values;
rule comments are left out (each rule is tagged `comment "rule N"` with its position).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..domain.network import Firewall, Rule
from ..ids import looks_like_id

TABLE = "vmplane"
ESTABLISHED_MARK = 0x01000000
"""set on packets of established/related connections on our bridges (inet prerouting/postrouting)"""
REJECT_MARK = 0x02000000
"""set by a REJECT verdict in a bridge chain; the inet forward/input chains answer such packets"""
OUR_BITS = ESTABLISHED_MARK | REJECT_MARK
CLEAR_MASK = 0xFFFFFFFF & ~OUR_BITS
BRIDGE_PRIORITY = -200
"""the bridge family's `filter` priority: before br_netfilter hands packets to the inet hooks"""
INET_MARK_PRIORITY = -140
"""after conntrack (-200) and mangle (-150)"""

_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_CHAIN_SAFE = re.compile(r"^[A-Za-z0-9_]{1,15}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PROTO = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp"}


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise ValueError(f"{name!r} is not an interface name")
    return f'"{name}"'


def chain_key(vm_id: str) -> str:
    """The part of a chain name that names the VM: its id with `-` as `_` (nft identifiers
    take letters, digits and `_`; ids are checked to be plain vmplane ids)."""
    if not looks_like_id(vm_id):
        raise ValueError(f"{vm_id!r} is not a VM id")
    return vm_id.replace("-", "_")


@dataclass(frozen=True, slots=True)
class TapGuard:
    """What one bridge NIC may send as: its tap, MAC, IPv4 addresses (primary and aliases)
    and IPv6 addresses (its EUI-64 link-local one and, with a prefix, its SLAAC one)."""

    tap: str
    mac: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]


def guard_chain(tap: str) -> str:
    if not _CHAIN_SAFE.match(tap):
        raise ValueError(f"{tap!r} is not a tap name")
    return f"g_{tap}"


def chain_names(vm_id: str) -> tuple[str, str]:
    key = chain_key(vm_id)
    return f"in_{key}", f"out_{key}"


# -- the shared skeleton -------------------------------------------------------------------


def base_ruleset() -> list[str]:
    """Commands that create the tables, maps, sets and base chains if missing and (re)write
    the base chains' rules. Idempotent; safe in every transaction."""
    b = f"bridge {TABLE}"
    i = f"inet {TABLE}"
    ours = f"0x{OUR_BITS:08x}"
    clear = f"0x{CLEAR_MASK:08x}"
    est = f"0x{ESTABLISHED_MARK:08x}"
    rej = f"0x{REJECT_MARK:08x}"
    lines = [
        f"add table {b}",
        f"add map {b} vm_in {{ type ifname : verdict ; }}",
        f"add map {b} vm_out {{ type ifname : verdict ; }}",
        f"add map {b} guard {{ type ifname : verdict ; }}",
    ]
    for hook in ("forward", "input", "output"):
        lines += [
            f"add chain {b} {hook} {{ type filter hook {hook} priority {BRIDGE_PRIORITY} ; policy accept ; }}",
            f"flush chain {b} {hook}",
        ]
    # forward: the sender's out_ chain, then the receiver's in_ chain; input: VM -> node;
    # output: node -> VM (no inet hook follows there, so a REJECT can only drop)
    # the guard first (what a NIC may send as), then the firewalls
    lines += [
        f"add rule {b} forward iifname vmap @guard",
        f"add rule {b} input iifname vmap @guard",
        f"add rule {b} forward iifname vmap @vm_out",
        f"add rule {b} forward oifname vmap @vm_in",
        f"add rule {b} input iifname vmap @vm_out",
        f"add rule {b} output oifname vmap @vm_in",
        f"add rule {b} output meta mark & {rej} == {rej} drop",
        f"add table {i}",
        f"add set {i} bridges {{ type ifname ; }}",
        f"add set {i} nat4 {{ type ipv4_addr ; flags interval ; }}",
    ]
    for name, spec in (
        ("prerouting", f"type filter hook prerouting priority {INET_MARK_PRIORITY} ; policy accept ;"),
        ("postrouting", f"type filter hook postrouting priority {INET_MARK_PRIORITY} ; policy accept ;"),
        ("forward", "type filter hook forward priority 0 ; policy accept ;"),
        ("input", "type filter hook input priority 0 ; policy accept ;"),
        ("nat", "type nat hook postrouting priority srcnat ; policy accept ;"),
    ):
        lines += [f"add chain {i} {name} {{ {spec} }}", f"flush chain {i} {name}"]
    lines += [
        # bridged traffic (br_netfilter: in = the bridge) and traffic the node sends or routes
        # onto a bridge: mark what conntrack knows as established or related
        f"add rule {i} prerouting iifname @bridges meta mark & {ours} != 0 meta mark set meta mark & {clear}",
        f"add rule {i} prerouting iifname @bridges ct state established,related meta mark set meta mark | {est}",
        f"add rule {i} postrouting oifname @bridges meta mark & {est} != 0 meta mark set meta mark & 0x{0xFFFFFFFF & ~ESTABLISHED_MARK:08x}",
        f"add rule {i} postrouting oifname @bridges ct state established,related meta mark set meta mark | {est}",
    ]
    for hook in ("forward", "input"):
        lines += [
            f"add rule {i} {hook} iifname @bridges meta mark & {rej} == {rej} meta l4proto tcp reject with tcp reset",
            f"add rule {i} {hook} iifname @bridges meta mark & {rej} == {rej} meta l4proto udp reject with icmpx port-unreachable",
            f"add rule {i} {hook} iifname @bridges meta mark & {rej} == {rej} reject with icmpx admin-prohibited",
        ]
    lines.append(f"add rule {i} nat ip saddr @nat4 oifname != @bridges masquerade")
    return lines


# -- one VM --------------------------------------------------------------------------------


def vm_ruleset(vm_id: str, taps: Iterable[str], firewall: Firewall, guards: Iterable[TapGuard] = ()) -> str:
    """One transaction that makes the VM's firewall `firewall` on `taps` (a disabled firewall
    removes the VM's chains and map elements: its traffic is accepted) and (re)writes the
    guard chains of `guards`, which are on whatever the firewall says."""
    taps = list(taps)
    guard_lines = [line for g in guards for line in _guard(g)]
    if not firewall.enabled:
        return "\n".join(_removal(vm_id, taps) + guard_lines) + "\n"
    b = f"bridge {TABLE}"
    cin, cout = chain_names(vm_id)
    lines = base_ruleset()
    for chain in (cin, cout):
        lines += [f"add chain {b} {chain}", f"flush chain {b} {chain}"]
    for direction, chain in (("in", cin), ("out", cout)):
        for stmt in _chain_body(direction, firewall):
            lines.append(f"add rule {b} {chain} {stmt}")
    for tap in taps:
        t = _ifname(tap)
        lines += [
            f"add element {b} vm_in {{ {t} : jump {cin} }}",
            f"add element {b} vm_out {{ {t} : jump {cout} }}",
        ]
    return "\n".join(lines + guard_lines) + "\n"


def vm_removal(vm_id: str, taps: Iterable[str]) -> str:
    """One transaction that removes the VM's chains and map elements and the guards of its
    taps, present or not (each object is added first so that deleting it cannot fail: nft
    1.0.6 has no `destroy`)."""
    taps = list(taps)
    b = f"bridge {TABLE}"
    lines = _removal(vm_id, taps)
    for tap in taps:
        t, chain = _ifname(tap), guard_chain(tap)
        lines += [
            f"add chain {b} {chain}",
            f"add element {b} guard {{ {t} : jump {chain} }}",
            f"delete element {b} guard {{ {t} }}",
            f"flush chain {b} {chain}",
            f"delete chain {b} {chain}",
        ]
    return "\n".join(lines) + "\n"


def _removal(vm_id: str, taps: list[str]) -> list[str]:
    """The firewall part of `vm_removal`: the VM's in_/out_ chains and their map elements."""
    b = f"bridge {TABLE}"
    cin, cout = chain_names(vm_id)
    lines = base_ruleset()
    lines += [f"add chain {b} {cin}", f"add chain {b} {cout}"]
    for tap in taps:
        t = _ifname(tap)
        lines += [
            f"add element {b} vm_in {{ {t} : jump {cin} }}",
            f"add element {b} vm_out {{ {t} : jump {cout} }}",
            f"delete element {b} vm_in {{ {t} }}",
            f"delete element {b} vm_out {{ {t} }}",
        ]
    # (every tap that jumps to the chains must be listed, or deleting them fails: the
    # transaction then changes nothing)
    lines += [f"flush chain {b} {cin}", f"flush chain {b} {cout}"]
    lines += [f"delete chain {b} {cin}", f"delete chain {b} {cout}"]
    return lines


def _guard(g: TapGuard) -> list[str]:
    """The guard chain of one tap and its map element (see the module's docstring). Every
    value is re-parsed; a NIC with no IPv4 address may send no IPv4 (but DHCP) and no ARP."""
    b = f"bridge {TABLE}"
    t, chain = _ifname(g.tap), guard_chain(g.tap)
    mac = g.mac.lower()
    if not _MAC.match(mac):
        raise ValueError(f"{g.mac!r} is not a MAC address")
    v4 = sorted({ipaddress.IPv4Address(a) for a in g.ipv4} - {ipaddress.IPv4Address(0)})
    v6 = sorted({ipaddress.IPv6Address(a) for a in g.ipv6} | {ipaddress.IPv6Address(0)})
    arp_ok = ", ".join(str(a) for a in [ipaddress.IPv4Address(0), *v4])
    body = [
        f"ether saddr != {mac} drop",
        "ether type != { ip, arp, ip6 } drop",
        f"arp saddr ether != {mac} drop",
        f"arp saddr ip != {{ {arp_ok} }} drop",
        "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",  # DHCP discover/request
    ]
    body.append(f"ip saddr != {{ {', '.join(str(a) for a in v4)} }} drop" if v4 else "ether type ip drop")
    body.append(f"ip6 saddr != {{ {', '.join(str(a) for a in v6)} }} drop")
    lines = [f"add chain {b} {chain}", f"flush chain {b} {chain}"]
    lines += [f"add rule {b} {chain} {stmt}" for stmt in body]
    lines.append(f"add element {b} guard {{ {t} : jump {chain} }}")
    return lines


def _chain_body(direction: str, fw: Firewall) -> list[str]:
    est = f"0x{ESTABLISHED_MARK:08x}"
    out = [f"meta mark & {est} == {est} return"]
    out += ["ether type arp return"]
    if direction == "in":
        out += [
            "udp sport 67 udp dport 68 return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } return",
        ]
    else:
        out += [
            "udp sport 68 udp dport 67 return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } return",
        ]
    for pos, rule in enumerate(fw.rules):
        if rule.enable and rule.type == direction:
            out.append(f"{render_match(rule)}{_verdict(rule.action)} comment \"rule {pos}\"")
    out.append(_verdict(fw.policy_in if direction == "in" else fw.policy_out))
    return out


def _verdict(action: str) -> str:
    if action == "ACCEPT":
        return "return"
    if action == "DROP":
        return "drop"
    if action == "REJECT":
        return f"meta mark set meta mark | 0x{REJECT_MARK:08x} return"
    raise ValueError(f"unknown action {action!r}")


def render_match(rule: Rule) -> str:
    """The match part of a rule ('' for a rule that matches everything), ending in a space."""
    parts: list[str] = []
    for field, key in (("source", "saddr"), ("dest", "daddr")):
        value = getattr(rule, field)
        if value is not None:
            net = ipaddress.ip_network(value, strict=False)
            text = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
            parts.append(f"{'ip' if net.version == 4 else 'ip6'} {key} {text}")
    proto = rule.proto
    ports = [(k, rule.ports(k)) for k in ("sport", "dport") if getattr(rule, k) is not None]
    if proto is None and ports:
        proto = "tcp"
    if proto is not None:
        if proto not in _PROTO:
            raise ValueError(f"unknown protocol {proto!r}")
        if ports:
            if proto not in ("tcp", "udp"):
                raise ValueError(f"ports need tcp or udp, not {proto}")
            for key, ranges in ports:
                parts.append(f"{proto} {key} {render_ports(ranges)}")
        else:
            parts.append(f"meta l4proto {_PROTO[proto]}")
    return "".join(p + " " for p in parts)


def render_ports(ranges: list[tuple[int, int]]) -> str:
    """`22`, `8000-9000` or `{ 22, 80, 8000-9000 }` (overlapping items merged: nft refuses
    overlapping intervals in a set)."""
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if not (1 <= lo <= hi <= 65535):
            raise ValueError(f"bad port range {lo}-{hi}")
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    items = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in merged]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


# -- networks ------------------------------------------------------------------------------


def network_up(bridge: str, nat_subnet: str | None) -> str:
    """Register a bridge with the inet table (conntrack marks, rejects) and, with NAT, its
    IPv4 subnet for masquerading."""
    i = f"inet {TABLE}"
    lines = base_ruleset() + [f"add element {i} bridges {{ {_ifname(bridge)} }}"]
    if nat_subnet is not None:
        lines.append(f"add element {i} nat4 {{ {ipaddress.IPv4Network(nat_subnet)} }}")
    return "\n".join(lines) + "\n"


def network_down(bridge: str, subnet: str) -> str:
    i = f"inet {TABLE}"
    net = ipaddress.IPv4Network(subnet)
    lines = base_ruleset() + [
        f"add element {i} bridges {{ {_ifname(bridge)} }}",
        f"delete element {i} bridges {{ {_ifname(bridge)} }}",
        f"add element {i} nat4 {{ {net} }}",
        f"delete element {i} nat4 {{ {net} }}",
    ]
    return "\n".join(lines) + "\n"


def uplink_up(link: str) -> str:
    """Masquerade an organization namespace's transit link out of the host's other interfaces."""
    i = f"inet {TABLE}"
    return "\n".join(base_ruleset() + [f"add element {i} nat4 {{ {ipaddress.IPv4Network(link)} }}"]) + "\n"


def uplink_down(link: str) -> str:
    i = f"inet {TABLE}"
    net = ipaddress.IPv4Network(link)
    return "\n".join(base_ruleset() + [f"add element {i} nat4 {{ {net} }}", f"delete element {i} nat4 {{ {net} }}"]) + "\n"


def namespace_nat() -> str:
    """Inside an organization's namespace: masquerade what leaves by its uplink (its
    networks reach the outside as the uplink's transit address)."""
    i = f"inet {TABLE}"
    return "\n".join([
        f"add table {i}",
        f"add chain {i} nat {{ type nat hook postrouting priority srcnat ; policy accept ; }}",
        f"flush chain {i} nat",
        f'add rule {i} nat oifname "uplink" masquerade',
    ]) + "\n"  # fmt: skip
