"""IPAM arithmetic: which addresses of a subnet are handed to NICs, and which comes next.

The first three host addresses are kept for the node (.1 bridge gateway, .2 QEMU's user-mode
host, .3 its DNS), as are the network and broadcast addresses. Ownership is recorded in the
store, whose key makes an address impossible to hand out twice.
"""

import ipaddress

from ..errors import Conflict, InvalidRequest

RESERVED_HOSTS = 3
MIN_PREFIX, MAX_PREFIX = 8, 29


def check_subnet(subnet: str, where: str = "subnet") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"{where} {subnet!r} is not an IPv4 network in CIDR form with no host bits set ({exc})", field=where) from None
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise InvalidRequest(f"{where} must be between a /{MIN_PREFIX} and a /{MAX_PREFIX}", field=where)
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_unspecified:
        raise InvalidRequest(f"{where} {subnet} is a loopback, link-local or multicast range", field=where)
    return net


def check_range(net: ipaddress.IPv4Network, pool: ipaddress.IPv4Network, operator: bool, where: str = "subnet") -> None:
    """Whether a caller may take `net`: an operator any private range, a tenant only a subnet
    of the operator's pool (VMPLANE_TENANT_SUBNET_POOL)."""
    if operator:
        if not net.is_private:
            raise InvalidRequest(f"{where} {net} is not a private range (10/8, 172.16/12, 192.168/16, ...)", field=where)
    elif not net.subnet_of(pool):
        raise InvalidRequest(f"{where} {net} is outside this installation's tenant range {pool}; pick a subnet of it or leave {where} out", field=where)


def free_subnet(pool: ipaddress.IPv4Network, used: list[ipaddress.IPv4Network], prefixlen: int = 24) -> ipaddress.IPv4Network:
    """The first /`prefixlen` of `pool` that overlaps none of `used`; Conflict when none is left."""
    used = sorted(u for u in used if u.overlaps(pool))
    candidate = int(pool.network_address)
    size = 1 << (32 - prefixlen)
    end = int(pool.broadcast_address)
    for u in used:
        lo, hi = int(u.network_address), int(u.broadcast_address)
        if candidate + size - 1 < lo:
            break
        candidate = max(candidate, (hi + size) // size * size)
    if candidate + size - 1 > end:
        raise Conflict(f"no free /{prefixlen} is left in {pool} for this organization", field="subnet")
    return ipaddress.IPv4Network((candidate, prefixlen))


def check_ipv6_prefix(prefix: str, where: str = "ipv6Prefix") -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(prefix, strict=True)
    except ValueError as exc:
        raise InvalidRequest(f"{where} {prefix!r} is not an IPv6 prefix in CIDR form ({exc})", field=where) from None
    if net.prefixlen != 64:
        raise InvalidRequest(f"{where} must be a /64 (addresses are made from MACs, as SLAAC does)", field=where)
    if net.is_loopback or net.is_multicast or net.is_link_local:
        raise InvalidRequest(f"{where} {prefix} is a loopback, link-local or multicast range", field=where)
    return net


def usable(subnet: str) -> tuple[int, int]:
    """(first, last) address, as integers, that NICs may get."""
    net = ipaddress.IPv4Network(subnet)
    return int(net.network_address) + 1 + RESERVED_HOSTS, int(net.broadcast_address) - 1


def gateway(subnet: str, network_type: str) -> str:
    net = ipaddress.IPv4Network(subnet)
    return str(net.network_address + (1 if network_type == "bridge" else 2))


def pick(subnet: str, count: int, highest: int | None, taken: set[int] | None) -> list[int]:
    """`count` free addresses: after the highest one taken while the range lasts, else the
    lowest free ones (`taken` is then needed; None asks the caller to load it).
    Raises Conflict when the subnet is full."""
    first, last = usable(subnet)
    start = first if highest is None else max(first, highest + 1)
    if start + count - 1 <= last:
        return list(range(start, start + count))
    if taken is None:
        raise LookupError("the tail of the range is used up: load the taken addresses")
    out = []
    for addr in range(first, last + 1):
        if addr not in taken:
            out.append(addr)
            if len(out) == count:
                return out
    raise Conflict(f"network {subnet} has no free address left ({last - first + 1 - len(taken)} free, {count} needed)", field="networks")


def to_str(addr: int) -> str:
    return str(ipaddress.IPv4Address(addr))


def to_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def ipv6_for(prefix: str, mac: str) -> str:
    """The SLAAC (modified EUI-64) address of `mac` in a /64: what the guest configures itself."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    net = ipaddress.IPv6Network(prefix)
    return str(net.network_address + int.from_bytes(eui, "big"))
