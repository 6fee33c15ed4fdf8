"""IPv6 ingress policies (FastVM's model, with its field names) as rules of the one firewall.

A policy says which public IPv6 traffic may reach a VM: `{"mode": "open" | "restricted",
"ingress": [{"protocol", "portStart", "portEnd"?, "sourceCidrs"?, "description"?}]}`. It
governs inbound IPv6 only: IPv4 (the path control, exec and forwarded ports use) and outbound
traffic keep whatever the rest of the firewall says.

The policy is not stored beside the firewall: it *is* the head of the firewall's rules.

- `apply_to(firewall)` removes every inbound rule with an IPv6 source (they belong to the
  policy), then puts first one `in ACCEPT <protocol> dport <ports> source <cidr>` rule per
  allow rule and source CIDR (default `::/0`; a rule of no source, `sourceCidrs: []`, admits
  nothing and is kept as one disabled rule, which reads back), then the catch-all `in <verdict> source ::/0`:
  DROP for `restricted` (which also enables the firewall), ACCEPT for `open`. The other rules
  follow, untouched; the policies (`policyIn`, `policyOut`) are kept. Neighbour discovery and
  replies to the guest's own connections are let through by every enabled firewall.
- `Ipv6Ingress.of(firewall)` reads a firewall back as a policy: the first enabled inbound
  rule that matches all IPv6 traffic (source `::/0` or none; no protocol or ports) decides the
  mode, and the ACCEPT tcp/udp rules before it are the allow rules. Without such a rule the
  inbound policy decides; a disabled firewall is `open`. What this module writes reads back
  the same; a firewall written through another face reads as the nearest policy.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidRequest
from .network import MAX_COMMENT, MAX_RULES, Firewall, Rule

MODES = ("open", "restricted")
PROTOCOLS = ("tcp", "udp")
ANY_V6 = "::/0"
MAX_SOURCES = 64
CATCH_ALL_COMMENT = "IPv6 ingress policy"


@dataclass(frozen=True, slots=True)
class Allow:
    """One allow rule: a protocol, a port range and the IPv6 networks it admits."""

    protocol: str
    port_start: int
    port_end: int
    sources: tuple[str, ...] = (ANY_V6,)
    description: str | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"protocol": self.protocol, "portStart": self.port_start, "portEnd": self.port_end, "sourceCidrs": list(self.sources)}
        if self.description is not None:
            out["description"] = self.description
        return out

    def rules(self) -> list[Rule]:
        """One ACCEPT rule per source; a rule of no source (`sourceCidrs: []`) admits nothing
        and is kept as one disabled rule, so that it reads back."""
        ports = str(self.port_start) if self.port_start == self.port_end else f"{self.port_start}:{self.port_end}"
        if not self.sources:
            return [Rule(type="in", action="ACCEPT", proto=self.protocol, dport=ports, source=ANY_V6, comment=self.description, enable=False)]
        return [Rule(type="in", action="ACCEPT", proto=self.protocol, dport=ports, source=s, comment=self.description) for s in self.sources]


@dataclass(frozen=True, slots=True)
class Ipv6Ingress:
    mode: str = "restricted"
    """FastVM's default for a new VM: restricted, nothing allowed"""
    allow: tuple[Allow, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {"mode": self.mode, "ingress": [a.to_wire() for a in self.allow]}

    def apply_to(self, firewall: Firewall) -> Firewall:
        """`firewall` with this policy as the head of its rules (see the module's docstring)."""
        kept = tuple(r for r in firewall.rules if not (r.type == "in" and r.source is not None and _version(r.source) == 6))
        head = [rule for a in self.allow for rule in a.rules()]
        verdict = "DROP" if self.mode == "restricted" else "ACCEPT"
        head.append(Rule(type="in", action=verdict, source=ANY_V6, comment=CATCH_ALL_COMMENT))
        if len(head) + len(kept) > MAX_RULES:
            raise InvalidRequest(
                f"the policy needs {len(head)} firewall rules (one per source CIDR); with the VM's {len(kept)} other rules "
                f"that is more than {MAX_RULES}",
                field="ingress",
            )
        return replace(firewall, enabled=firewall.enabled or self.mode == "restricted", rules=(*head, *kept))

    def with_changes(self, mode: str | None, allow: tuple[Allow, ...] | None) -> Ipv6Ingress:
        """A partial update: what is None keeps its value."""
        return Ipv6Ingress(self.mode if mode is None else mode, self.allow if allow is None else allow)

    @classmethod
    def of(cls, firewall: Firewall) -> Ipv6Ingress:
        """The policy `firewall` enforces on inbound IPv6 (see the module's docstring)."""
        found: list[Allow] = []
        mode = "open" if not firewall.enabled or firewall.policy_in == "ACCEPT" else "restricted"
        for r in firewall.rules:
            if r.type != "in" or (r.source is not None and _version(r.source) != 6):
                continue
            if not r.enable:  # admits nothing: an allow rule of no source, if it has the shape of one
                if r.action == "ACCEPT" and r.proto in PROTOCOLS and r.dport is not None and r.sport is None and r.dest is None:
                    found.extend(Allow(r.proto, lo, hi, (), r.comment) for lo, hi in r.ports("dport"))
                continue
            if r.proto is None and r.dport is None and r.sport is None and r.dest is None and r.source in (None, ANY_V6):
                if firewall.enabled:
                    mode = "open" if r.action == "ACCEPT" else "restricted"
                break
            if r.action == "ACCEPT" and r.proto in PROTOCOLS and r.dport is not None and r.sport is None and r.dest is None:
                for lo, hi in r.ports("dport"):
                    found.append(Allow(r.proto, lo, hi, (r.source or ANY_V6,), r.comment))
        return cls(mode, _merge(found))


def _merge(allows: list[Allow]) -> tuple[Allow, ...]:
    """Consecutive allow rules that differ only in their source are one rule with several."""
    out: list[Allow] = []
    for a in allows:
        prev = out[-1] if out else None
        if prev is not None and (prev.protocol, prev.port_start, prev.port_end, prev.description) == (a.protocol, a.port_start, a.port_end, a.description):
            out[-1] = replace(prev, sources=prev.sources + tuple(s for s in a.sources if s not in prev.sources))
        else:
            out.append(a)
    return tuple(out)


def _version(cidr: str) -> int:
    return ipaddress.ip_network(cidr, strict=False).version


# -- parsing the wire form -----------------------------------------------------------------


def parse_mode(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in MODES:
        raise InvalidRequest(f"{where} must be 'open' or 'restricted', not {value!r}", field=where)
    return value


def _port(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise InvalidRequest(f"{where} must be a port number from 1 to 65535", field=where)
    return value


def parse_allow(body: Any, where: str) -> Allow:
    """One allow rule from its wire form, every field checked."""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where} must be an object", field=where)
    protocol = body.get("protocol")
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"{where}.protocol must be 'tcp' or 'udp', not {protocol!r}", field=f"{where}.protocol")
    start = _port(body.get("portStart"), f"{where}.portStart")
    end = start if body.get("portEnd") is None else _port(body.get("portEnd"), f"{where}.portEnd")
    if end < start:
        raise InvalidRequest(f"{where}.portEnd ({end}) is below portStart ({start})", field=f"{where}.portEnd")
    raw = body.get("sourceCidrs")
    if raw is None:
        sources: tuple[str, ...] = (ANY_V6,)
    else:  # [] lists no source: the rule admits nothing (left out, it admits ::/0)
        if not isinstance(raw, list) or len(raw) > MAX_SOURCES:
            raise InvalidRequest(f"{where}.sourceCidrs must list at most {MAX_SOURCES} IPv6 CIDRs (leave it out for ::/0)", field=f"{where}.sourceCidrs")
        found: list[str] = []
        for i, cidr in enumerate(raw):
            net = _ipv6_network(cidr, f"{where}.sourceCidrs[{i}]")
            if net not in found:
                found.append(net)
        sources = tuple(found)
    description = body.get("description")
    if description is not None and (
        not isinstance(description, str) or len(description) > MAX_COMMENT or any(ord(c) < 32 or ord(c) == 127 for c in description)
    ):
        raise InvalidRequest(f"{where}.description must be text of at most {MAX_COMMENT} printable characters", field=f"{where}.description")
    return Allow(protocol, start, end, sources, description)


def _ipv6_network(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 64:
        raise InvalidRequest(f"{where} must be an IPv6 CIDR such as 2001:db8::/32", field=where)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise InvalidRequest(f"{where} {value!r} is not an IPv6 CIDR", field=where) from None
    if net.version != 6:
        raise InvalidRequest(f"{where} {value!r} is IPv4; the policy covers public IPv6 only", field=where)
    return str(net)


def parse_allow_rules(body: Any, where: str) -> tuple[Allow, ...]:
    if not isinstance(body, list) or len(body) > MAX_RULES:
        raise InvalidRequest(f"{where} must be a list of at most {MAX_RULES} rules", field=where)
    return tuple(parse_allow(r, f"{where}[{i}]") for i, r in enumerate(body))


def parse_ingress(body: Any, where: str = "") -> Ipv6Ingress:
    """A whole policy from its wire form (`mode` required; `ingress` defaults to none)."""
    p = f"{where}." if where else ""
    if not isinstance(body, dict):
        raise InvalidRequest(f"{where or 'the policy'} must be an object", field=where or "body")
    mode = parse_mode(body.get("mode"), f"{p}mode")
    allow = () if body.get("ingress") is None else parse_allow_rules(body["ingress"], f"{p}ingress")
    return Ipv6Ingress(mode, allow)
