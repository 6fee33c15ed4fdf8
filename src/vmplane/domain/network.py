"""The networking vocabulary every layer shares: networks, NICs, and the firewall model.

One firewall model serves every face: `{enabled, policyIn, policyOut}` and ordered rules with
Blue Lobster's (that is Proxmox's) field names. Validation lives here, once, and raises
`InvalidRequest` naming the bad field; drivers only ever see validated values.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidRequest, NotFound

NETWORK_TYPES = ("user", "bridge")
DEFAULT_NETWORK = "user"
"""the shared user-mode network every VM joins unless told otherwise"""
POLICIES = ("ACCEPT", "DROP")
ACTIONS = ("ACCEPT", "DROP", "REJECT")
DIRECTIONS = ("in", "out")
PROTOCOLS = ("tcp", "udp", "icmp", "icmpv6")
PORT_PROTOCOLS = ("tcp", "udp")
MAX_RULES = 256
MAX_COMMENT = 256
MAX_PORT_ITEMS = 32

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- networks and NICs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Network:
    """A network as a node needs it. `bridge` is the host interface name of a bridge network
    (at most 15 characters, derived from the id); user networks have none."""

    id: str
    name: str
    type: str
    subnet: str
    """IPv4 CIDR, e.g. 10.0.0.0/16"""
    gateway: str
    """the host's address in the subnet (bridge: on the bridge; user: QEMU's slirp host)"""
    ipv6_prefix: str | None = None
    bridge: str | None = None
    org_id: str | None = None
    """the owning organization: its bridges' routing context on a node (None: the host's, as
    for networks recorded before organizations had their own)"""

    @property
    def prefix_len(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "type": self.type, "subnet": self.subnet,
            "gateway": self.gateway, "ipv6Prefix": self.ipv6_prefix, "bridge": self.bridge, "orgId": self.org_id,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Network:
        return cls(d["id"], d["name"], d["type"], d["subnet"], d["gateway"], d.get("ipv6Prefix"), d.get("bridge"), d.get("orgId"))


@dataclass(frozen=True, slots=True)
class Nic:
    """One network interface of a VM: its network, MAC, primary address and aliases."""

    network: Network
    mac: str
    ip: str
    """primary IPv4 address, handed out by DHCP"""
    aliases: tuple[str, ...] = ()
    """additional addresses on the same interface (configured through the guest agent)"""
    ipv6: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {"network": self.network.to_wire(), "mac": self.mac, "ip": self.ip, "aliases": list(self.aliases), "ipv6": self.ipv6}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Nic:
        return cls(Network.from_wire(d["network"]), d["mac"], d["ip"], tuple(d.get("aliases") or ()), d.get("ipv6"))


def bridge_name(network_id: str) -> str:
    """The host bridge of a network: `vmbr` + 10 hex digits (interface names hold 15)."""
    return "vmbr" + hashlib.sha256(network_id.encode()).hexdigest()[:10]


def tap_name(vm_id: str, index: int) -> str:
    """The host tap of a VM's NIC: `vmt` + 10 hex digits + NIC index (15 characters at most)."""
    if not 0 <= index < 100:
        raise ValueError("a VM has at most 100 NICs")
    return f"vmt{hashlib.sha256(vm_id.encode()).hexdigest()[:10]}{index}"


def mac_for(vm_id: str, index: int = 0) -> str:
    """A stable, locally administered MAC in QEMU's 52:54:00 range, from the VM id and NIC index
    (NIC 0 keeps the MAC VMs had before they could have several)."""
    seed = vm_id if index == 0 else f"{vm_id}/{index}"
    b = hashlib.sha256(seed.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{x:02x}" for x in b)


# -- the firewall --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    type: str
    action: str
    proto: str | None = None
    dport: str | None = None
    sport: str | None = None
    source: str | None = None
    dest: str | None = None
    comment: str | None = None
    enable: bool = True

    def to_wire(self, pos: int) -> dict[str, Any]:
        out: dict[str, Any] = {"pos": pos, "type": self.type, "action": self.action}
        for k in ("proto", "dport", "sport", "source", "dest", "comment"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        out["enable"] = 1 if self.enable else 0
        return out

    def ports(self, which: str) -> list[tuple[int, int]]:
        """dport/sport as inclusive (low, high) ranges; [] when the rule names no ports."""
        spec = getattr(self, which)
        return [] if spec is None else parse_ports(spec, which)


@dataclass(frozen=True, slots=True)
class Firewall:
    enabled: bool = False
    policy_in: str = "ACCEPT"
    policy_out: str = "ACCEPT"
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def to_wire(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "policyIn": self.policy_in,
            "policyOut": self.policy_out,
            "rules": [r.to_wire(i) for i, r in enumerate(self.rules)],
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any] | None) -> Firewall:
        """From stored (already validated) data."""
        if not d:
            return cls()
        return cls(
            enabled=bool(d.get("enabled")),
            policy_in=d.get("policyIn", "ACCEPT"),
            policy_out=d.get("policyOut", "ACCEPT"),
            rules=tuple(parse_rule(r, "rules") for r in d.get("rules") or ()),
        )

    def with_options(self, enabled: bool | None, policy_in: str | None, policy_out: str | None) -> Firewall:
        return replace(
            self,
            enabled=self.enabled if enabled is None else enabled,
            policy_in=self.policy_in if policy_in is None else parse_policy(policy_in, "policyIn"),
            policy_out=self.policy_out if policy_out is None else parse_policy(policy_out, "policyOut"),
        )

    def with_rule(self, rule: Rule, pos: int | None = None) -> Firewall:
        """The firewall with `rule` inserted at `pos` (appended when None)."""
        if len(self.rules) >= MAX_RULES:
            raise InvalidRequest(f"a firewall holds at most {MAX_RULES} rules", field="pos")
        if pos is None:
            pos = len(self.rules)
        if not 0 <= pos <= len(self.rules):
            raise InvalidRequest(f"pos must be between 0 and {len(self.rules)}", field="pos")
        return replace(self, rules=(*self.rules[:pos], rule, *self.rules[pos:]))

    def without_rule(self, pos: int) -> Firewall:
        self.rule_at(pos)
        return replace(self, rules=self.rules[:pos] + self.rules[pos + 1 :])

    def rule_at(self, pos: int) -> Rule:
        if not 0 <= pos < len(self.rules):
            raise NotFound(f"there is no rule at position {pos}", field="pos")
        return self.rules[pos]

    def verdict(self, direction: str, proto: str, port: int | None, peer: str | None) -> str:
        """What the firewall does to a new connection: the first enabled rule that matches
        decides, else the direction's policy; a disabled firewall accepts everything.

        `peer` is the remote address (the source of inbound, the destination of outbound).
        """
        if not self.enabled:
            return "ACCEPT"
        addr = ipaddress.ip_address(peer) if peer else None
        for rule in self.rules:
            if not rule.enable or rule.type != direction:
                continue
            if rule.proto is not None and rule.proto != proto:
                continue
            if rule.dport is not None and (port is None or not any(lo <= port <= hi for lo, hi in rule.ports("dport"))):
                continue
            if rule.sport is not None:
                continue  # the peer's port is not known here; such a rule never matches
            remote = rule.source if direction == "in" else rule.dest
            if remote is not None and (addr is None or addr not in ipaddress.ip_network(remote, strict=False)):
                continue
            return rule.action
        return self.policy_in if direction == "in" else self.policy_out


def parse_policy(value: Any, where: str) -> str:
    if not isinstance(value, str) or value.upper() not in POLICIES:
        raise InvalidRequest(f"{where} must be ACCEPT or DROP, not {value!r}", field=where)
    return value.upper()


_PORT_ITEM = re.compile(r"^(\d{1,5})(?::(\d{1,5}))?$")


def parse_ports(spec: str, where: str) -> list[tuple[int, int]]:
    """`22`, `8000:9000` or `80,443` (items may be ranges) as (low, high) ranges."""
    items = spec.split(",")
    if len(items) > MAX_PORT_ITEMS:
        raise InvalidRequest(f"{where} lists more than {MAX_PORT_ITEMS} ports", field=where)
    out = []
    for item in items:
        m = _PORT_ITEM.match(item.strip())
        if not m:
            raise InvalidRequest(f"{where} {spec!r} is not a port, a range 'low:high' or a list 'a,b'", field=where)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) else lo
        if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
            raise InvalidRequest(f"{where} {spec!r}: ports must be 1-65535", field=where)
        if lo > hi:
            raise InvalidRequest(f"{where} {spec!r}: a range goes from low to high", field=where)
        out.append((lo, hi))
    return out


def parse_address(value: Any, where: str) -> str:
    """An IPv4/IPv6 address or CIDR, normalised (host bits of a CIDR are cleared)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidRequest(f"{where} must be an IP address or CIDR", field=where)
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidRequest(f"{where} {value!r} is not an IPv4/IPv6 address or CIDR", field=where) from None


def parse_rule(body: Any, where: str = "") -> Rule:
    """A rule from a request body, every field checked."""
    p = f"{where}." if where else ""
    if not isinstance(body, dict):
        raise InvalidRequest("a rule is an object", field=where or "body")
    unknown = set(body) - {"pos", "type", "action", "proto", "dport", "sport", "source", "dest", "comment", "enable"}
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"unknown rule field {name!r}", field=f"{p}{name}")
    direction = body.get("type")
    if direction not in DIRECTIONS:
        raise InvalidRequest(f"type must be 'in' or 'out', not {direction!r}", field=f"{p}type")
    action = body.get("action")
    if not isinstance(action, str) or action.upper() not in ACTIONS:
        raise InvalidRequest(f"action must be ACCEPT, DROP or REJECT, not {action!r}", field=f"{p}action")
    proto = body.get("proto")
    if proto is not None:
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise InvalidRequest(f"proto must be one of {', '.join(PROTOCOLS)}, not {proto!r}", field=f"{p}proto")
        proto = proto.lower()
    ports: dict[str, str | None] = {}
    for k in ("dport", "sport"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if v is not None and v != "":
            if not isinstance(v, str):
                raise InvalidRequest(f"{k} must be a string such as '22', '8000:9000' or '80,443'", field=f"{p}{k}")
            parse_ports(v, f"{p}{k}")
            if proto not in PORT_PROTOCOLS:
                if proto is not None:
                    raise InvalidRequest(f"{k} needs proto tcp or udp, not {proto}", field=f"{p}{k}")
                proto = "tcp"  # Blue Lobster's default protocol
            ports[k] = v.replace(" ", "")
        else:
            ports[k] = None
    addrs: dict[str, str | None] = {}
    for k in ("source", "dest"):
        v = body.get(k)
        addrs[k] = None if v in (None, "") else parse_address(v, f"{p}{k}")
    families = {ipaddress.ip_network(a, strict=False).version for a in addrs.values() if a}
    if len(families) > 1:
        raise InvalidRequest("source and dest must both be IPv4 or both IPv6", field=f"{p}dest")
    if (proto == "icmp" and 6 in families) or (proto == "icmpv6" and 4 in families):
        raise InvalidRequest(f"proto {proto} does not go with the address family of source/dest", field=f"{p}proto")
    comment = body.get("comment")
    if comment is not None:
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT or any(ord(c) < 32 for c in comment):
            raise InvalidRequest(f"comment must be text of at most {MAX_COMMENT} printable characters", field=f"{p}comment")
    enable = body.get("enable", 1)
    if enable in (1, True):
        enabled = True
    elif enable in (0, False):
        enabled = False
    else:
        raise InvalidRequest("enable must be 1 or 0", field=f"{p}enable")
    return Rule(
        type=direction, action=action.upper(), proto=proto, dport=ports["dport"], sport=ports["sport"],
        source=addrs["source"], dest=addrs["dest"], comment=comment, enable=enabled,
    )  # fmt: skip


def parse_firewall(body: Any, where: str = "firewall") -> Firewall:
    """A whole firewall (options and rules) from a request body."""
    if not isinstance(body, dict):
        raise InvalidRequest("the firewall is an object", field=where)
    rules = body.get("rules") or []
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise InvalidRequest(f"rules must be a list of at most {MAX_RULES} rules", field=f"{where}.rules")
    enabled = body.get("enabled", body.get("enable", False))
    if not isinstance(enabled, bool):
        raise InvalidRequest("enabled must be true or false", field=f"{where}.enabled")
    return Firewall(
        enabled=enabled,
        policy_in=parse_policy(body.get("policyIn", "ACCEPT"), f"{where}.policyIn"),
        policy_out=parse_policy(body.get("policyOut", "ACCEPT"), f"{where}.policyOut"),
        rules=tuple(parse_rule(r, f"{where}.rules[{i}]") for i, r in enumerate(rules)),
    )


def allowed_forwards(fw: Firewall, forwards: Iterable[tuple[str, int]], source: str = "127.0.0.1") -> set[tuple[str, int]]:
    """The (protocol, guest port) forwards of a user-mode NIC that the firewall lets in from
    `source` (forwarded ports listen on the node's loopback)."""
    return {(proto, port) for proto, port in forwards if fw.verdict("in", proto, port, source) == "ACCEPT"}
