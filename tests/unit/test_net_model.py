"""The firewall model's verdicts, IPAM arithmetic and PCI device matching in placement."""

import pytest

from vmplane.domain.network import Firewall, allowed_forwards, bridge_name, mac_for, parse_firewall, parse_rule, tap_name
from vmplane.errors import Conflict, InvalidRequest, NotFound
from vmplane.net import ipam
from vmplane.pci import PciDevice
from vmplane.placement import Demand, NodeUsage, Policy, choose_node, pick_devices


def fw(*rules: dict, policy_in: str = "DROP", enabled: bool = True) -> Firewall:
    return parse_firewall({"enabled": enabled, "policyIn": policy_in, "rules": list(rules)})


def test_first_matching_rule_decides_then_the_policy() -> None:
    f = fw(
        {"type": "in", "action": "DROP", "proto": "tcp", "dport": "22", "source": "10.0.0.66"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "8000:8080,443", "source": "10.0.0.0/8"},
        {"type": "in", "action": "ACCEPT", "proto": "udp", "dport": "53", "enable": 0},
    )
    assert f.verdict("in", "tcp", 22, "10.0.0.66") == "DROP"
    assert f.verdict("in", "tcp", 22, "192.0.2.1") == "ACCEPT"
    assert f.verdict("in", "tcp", 8042, "10.1.2.3") == "ACCEPT"
    assert f.verdict("in", "tcp", 443, "10.1.2.3") == "ACCEPT"
    assert f.verdict("in", "tcp", 8042, "192.0.2.1") == "DROP"  # source does not match
    assert f.verdict("in", "udp", 53, "10.1.2.3") == "DROP"  # disabled rule
    assert f.verdict("out", "tcp", 80, "192.0.2.1") == "ACCEPT"  # policyOut
    assert fw(policy_in="DROP", enabled=False).verdict("in", "tcp", 1, None) == "ACCEPT"
    assert allowed_forwards(f, [("tcp", 22), ("tcp", 80), ("udp", 53)]) == {("tcp", 22)}


def test_rule_parsing_normalises() -> None:
    r = parse_rule({"type": "in", "action": "accept", "dport": 22, "source": "10.1.2.3/8"})
    assert (r.action, r.proto, r.dport, r.source, r.enable) == ("ACCEPT", "tcp", "22", "10.0.0.0/8", True)
    assert r.ports("dport") == [(22, 22)]
    assert parse_rule({"type": "out", "action": "DROP", "dest": "FD00::1"}).dest == "fd00::1"
    with pytest.raises(InvalidRequest) as e:
        parse_rule({"type": "in", "action": "ACCEPT", "dport": "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,32,33"})
    assert e.value.field == "dport"


def test_positions() -> None:
    f = Firewall()
    a = parse_rule({"type": "in", "action": "ACCEPT", "dport": "1"})
    b = parse_rule({"type": "in", "action": "ACCEPT", "dport": "2"})
    f = f.with_rule(a).with_rule(b, 0)
    assert [r.dport for r in f.rules] == ["2", "1"]
    assert f.without_rule(0).rules == (a,)
    with pytest.raises(NotFound):
        f.without_rule(2)
    with pytest.raises(InvalidRequest):
        f.with_rule(a, 3)
    assert Firewall.from_wire(f.to_wire()) == f


def test_ipam_picks_after_the_highest_then_fills_gaps() -> None:
    assert ipam.usable("10.1.0.0/29") == (ipam.to_int("10.1.0.4"), ipam.to_int("10.1.0.6"))
    assert ipam.gateway("10.1.0.0/24", "bridge") == "10.1.0.1" and ipam.gateway("10.1.0.0/24", "user") == "10.1.0.2"
    first = ipam.to_int("10.1.0.4")
    assert ipam.pick("10.1.0.0/29", 2, None, None) == [first, first + 1]
    assert ipam.pick("10.1.0.0/29", 1, first + 1, None) == [first + 2]
    with pytest.raises(LookupError):
        ipam.pick("10.1.0.0/29", 1, first + 2, None)
    assert ipam.pick("10.1.0.0/29", 1, first + 2, {first, first + 2}) == [first + 1]
    with pytest.raises(Conflict):
        ipam.pick("10.1.0.0/29", 2, first + 2, {first, first + 2})
    assert ipam.ipv6_for("fd00:1::/64", "52:54:00:12:34:56") == "fd00:1::5054:ff:fe12:3456"


def test_names_fit_interface_limits() -> None:
    assert len(bridge_name("net-abcdefghjkmn")) <= 15 and len(tap_name("vm-abcdefghjkmn", 7)) <= 15
    assert tap_name("vm-a000", 0) != tap_name("vm-a000", 1)
    assert mac_for("vm-x", 0) != mac_for("vm-x", 1) and mac_for("vm-x").startswith("52:54:00:")


def test_placement_needs_free_devices() -> None:
    gpu = PciDevice("0000:01:00.0", "10de", "2204", "030000", "nvidia", 1, 0)
    audio = PciDevice("0000:01:00.1", "10de", "1aef", "040300", "snd_hda_intel", 1, 0)
    gpu2 = PciDevice("0000:02:00.0", "10de", "2204", "030000", "nvidia", 2, 0)
    nic = PciDevice("0000:03:00.0", "8086", "1572", "020000", "i40e", 3, 0)
    assert pick_devices(("10de:2204", "0000:01:00.0"), (gpu, gpu2)) == ["0000:01:00.0", "0000:02:00.0"]
    assert pick_devices(("10de:2204", "10de:2204", "10de:2204"), (gpu, gpu2)) is None
    # the rest of an IOMMU group comes along
    assert pick_devices(("0000:01:00.0",), (gpu, audio, gpu2)) == ["0000:01:00.0", "0000:01:00.1"]

    def node(i: str, devices: tuple) -> NodeUsage:
        return NodeUsage(i, True, 8, 8192, 100, 0, 0, 0, devices)

    nodes = [node("n1", (nic,)), node("n2", (gpu, gpu2)), node("n3", ())]
    assert choose_node(Demand(1, 512, 10, pci=("10de:2204",)), nodes, Policy()).id == "n2"
    assert choose_node(Demand(1, 512, 10, pci=("0000:03:00.0",)), nodes, Policy()).id == "n1"
    with pytest.raises(Exception) as e:
        choose_node(Demand(1, 512, 10, pci=("10de:9999",)), nodes, Policy())
    assert "PCI devices 10de:9999" in str(e.value)


def test_placement_needs_the_network_types() -> None:
    plain = NodeUsage("n1", True, 8, 8192, 100, 0, 0, 0)
    bridged = NodeUsage("n2", True, 8, 8192, 100, 4, 4096, 50, network_types=frozenset({"user", "bridge"}))
    assert choose_node(Demand(1, 512, 10), [plain, bridged], Policy()).id == "n1"
    assert choose_node(Demand(1, 512, 10, network_types=frozenset({"bridge"})), [plain, bridged], Policy()).id == "n2"
    with pytest.raises(Exception) as e:
        choose_node(Demand(1, 512, 10, network_types=frozenset({"bridge"})), [plain], Policy())
    assert "bridge networks" in str(e.value) and "CAP_NET_ADMIN" in str(e.value)


# -- tenant ranges (issue 19) -----------------------------------------------------------------


def test_tenants_take_subnets_of_the_pool_and_operators_any_private_range() -> None:
    import ipaddress

    from vmplane.errors import InvalidRequest
    from vmplane.net import ipam

    pool = ipaddress.IPv4Network("10.128.0.0/9")
    ipam.check_range(ipaddress.IPv4Network("10.200.3.0/24"), pool, operator=False)
    ipam.check_range(ipaddress.IPv4Network("192.168.0.0/16"), pool, operator=True)
    for subnet, operator in (("8.0.0.0/8", False), ("192.168.0.0/16", False), ("10.0.0.0/8", False), ("8.0.0.0/8", True)):
        with pytest.raises(InvalidRequest) as e:
            ipam.check_range(ipaddress.IPv4Network(subnet), pool, operator=operator)
        assert e.value.field == "subnet"


def test_a_free_subnet_skips_the_organizations_own() -> None:
    import ipaddress

    from vmplane.errors import Conflict
    from vmplane.net import ipam

    pool = ipaddress.IPv4Network("10.128.0.0/22")
    n = ipaddress.IPv4Network
    assert ipam.free_subnet(pool, []) == n("10.128.0.0/24")
    assert ipam.free_subnet(pool, [n("10.128.0.0/24"), n("10.0.0.0/16")]) == n("10.128.1.0/24")
    assert ipam.free_subnet(pool, [n("10.128.1.128/25"), n("10.128.0.0/25")]) == n("10.128.2.0/24")
    with pytest.raises(Conflict):
        ipam.free_subnet(pool, [n("10.128.0.0/23"), n("10.128.2.0/23")])
