"""The networking vocabulary (networks, NICs, the firewall model) as `net` has always named it.

It lives in `domain.network` now (the domain floor holds every value object the layers share,
and the domain imports nothing above it); this module re-exports it so the host side and its
callers keep their imports."""

from ..domain.network import (
    ACTIONS,
    DIRECTIONS,
    MAX_COMMENT,
    MAX_PORT_ITEMS,
    MAX_RULES,
    NETWORK_TYPES,
    POLICIES,
    PORT_PROTOCOLS,
    PROTOCOLS,
    Firewall,
    IPAddress,
    IPNetwork,
    Network,
    Nic,
    Rule,
    allowed_forwards,
    bridge_name,
    mac_for,
    parse_address,
    parse_firewall,
    parse_policy,
    parse_ports,
    parse_rule,
    tap_name,
)

__all__ = [
    "ACTIONS", "DIRECTIONS", "MAX_COMMENT", "MAX_PORT_ITEMS", "MAX_RULES", "NETWORK_TYPES", "POLICIES", "PORT_PROTOCOLS",
    "PROTOCOLS", "Firewall", "IPAddress", "IPNetwork", "Network", "Nic", "Rule", "allowed_forwards", "bridge_name",
    "mac_for", "parse_address", "parse_firewall", "parse_policy", "parse_ports", "parse_rule", "tap_name",
]  # fmt: skip
