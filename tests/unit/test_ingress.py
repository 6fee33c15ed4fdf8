"""IPv6 ingress policies as rules of the one firewall: what they let in, what they leave alone,
and that reading a firewall back gives the policy written."""

import pytest

from vmplane.domain.ingress import Allow, Ipv6Ingress, parse_allow_rules, parse_ingress
from vmplane.domain.network import Firewall, Rule, parse_firewall
from vmplane.errors import InvalidRequest

SSH = Allow("tcp", 22, 22, ("2001:db8::/32",), "ssh")
GAME = Allow("udp", 6000, 6010)


def test_restricted_lets_in_only_the_allowed_ipv6_and_never_touches_ipv4() -> None:
    fw = Ipv6Ingress("restricted", (SSH, GAME)).apply_to(Firewall())
    assert fw.enabled and fw.policy_in == fw.policy_out == "ACCEPT"
    assert fw.verdict("in", "tcp", 22, "2001:db8::9") == "ACCEPT"
    assert fw.verdict("in", "tcp", 22, "2a01::9") == "DROP"  # not from the allowed network
    assert fw.verdict("in", "tcp", 80, "2001:db8::9") == "DROP"
    assert fw.verdict("in", "udp", 6005, "2a01::9") == "ACCEPT"  # no sourceCidrs: ::/0
    assert fw.verdict("in", "tcp", 80, "203.0.113.5") == "ACCEPT"  # IPv4: control, exec, forwards
    assert fw.verdict("out", "tcp", 443, "2a01::9") == "ACCEPT"
    empty = Ipv6Ingress().apply_to(Firewall())
    assert empty.verdict("in", "tcp", 22, "2001:db8::1") == "DROP" and empty.verdict("in", "tcp", 22, "10.0.0.5") == "ACCEPT"


def test_open_accepts_ipv6_even_where_other_rules_would_drop_it() -> None:
    base = Firewall(True, "DROP", "ACCEPT", (Rule("in", "ACCEPT", "tcp", "22", source="10.0.0.0/8"),))
    fw = Ipv6Ingress("open").apply_to(base)
    assert fw.verdict("in", "tcp", 9999, "2a01::1") == "ACCEPT"
    assert fw.verdict("in", "tcp", 9999, "192.0.2.1") == "DROP"  # the IPv4 policy stays
    assert fw.policy_in == "DROP" and fw.rules[-1] == base.rules[0]


def test_a_policy_replaces_only_the_ipv6_inbound_rules() -> None:
    v4 = Rule("in", "DROP", "tcp", "25", source="10.0.0.0/8")
    out = Rule("out", "DROP", "tcp", "25", dest="2001:db8::/32")
    old_v6 = Rule("in", "ACCEPT", "tcp", "8080", source="2001:db8::/32")
    fw = Ipv6Ingress("restricted", (GAME,)).apply_to(Firewall(True, "ACCEPT", "ACCEPT", (old_v6, v4, out)))
    assert old_v6 not in fw.rules and fw.rules[-2:] == (v4, out)
    assert [(r.action, r.source) for r in fw.rules[:2]] == [("ACCEPT", "::/0"), ("DROP", "::/0")]


@pytest.mark.parametrize(
    "policy",
    [
        Ipv6Ingress(),
        Ipv6Ingress("open"),
        Ipv6Ingress("restricted", (SSH, GAME)),
        Ipv6Ingress("open", (SSH,)),
        Ipv6Ingress("restricted", (Allow("tcp", 1, 65535, ("2001:db8::/32", "2001:db8:1::/48", "::/0"), "all"), GAME)),
    ],
)
def test_what_is_written_reads_back_the_same(policy: Ipv6Ingress) -> None:
    for base in (Firewall(), Firewall(True, "DROP", "DROP", (Rule("in", "ACCEPT", "tcp", "22", source="10.0.0.0/8"),))):
        fw = policy.apply_to(base)
        assert Ipv6Ingress.of(fw) == policy
        assert Ipv6Ingress.of(Firewall.from_wire(fw.to_wire())) == policy  # through the store
        assert Ipv6Ingress.of(policy.apply_to(fw)) == policy  # idempotent


def test_firewalls_written_elsewhere_read_as_the_nearest_policy() -> None:
    assert Ipv6Ingress.of(Firewall()) == Ipv6Ingress("open")  # disabled: everything gets in
    assert Ipv6Ingress.of(Firewall(True, "DROP", "ACCEPT")).mode == "restricted"
    native = parse_firewall({"enabled": True, "policyIn": "DROP", "rules": [
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "80,443"},
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "source": "192.0.2.0/24"},
        {"type": "in", "action": "ACCEPT", "proto": "udp", "dport": "53", "sport": "53"},
    ]})  # fmt: skip
    assert Ipv6Ingress.of(native) == Ipv6Ingress("restricted", (Allow("tcp", 80, 80), Allow("tcp", 443, 443)))
    catch_all = parse_firewall({"enabled": True, "rules": [{"type": "in", "action": "DROP"}]})
    assert Ipv6Ingress.of(catch_all).mode == "restricted"


def test_parsing_names_the_bad_field() -> None:
    assert parse_ingress({"mode": "restricted"}) == Ipv6Ingress()
    p = parse_ingress({"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 22, "sourceCidrs": ["2001:DB8::1/32", "2001:db8::/32"]}]})
    assert p.allow == (Allow("tcp", 22, 22, ("2001:db8::/32",)),)
    bad = [
        ({"mode": "closed"}, "mode"),
        ({}, "mode"),
        ({"mode": "open", "ingress": {}}, "ingress"),
        ({"mode": "open", "ingress": [{"protocol": "icmp", "portStart": 1}]}, "ingress[0].protocol"),
        ({"mode": "open", "ingress": [{"protocol": "tcp"}]}, "ingress[0].portStart"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 70000}]}, "ingress[0].portStart"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": True}]}, "ingress[0].portStart"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 9, "portEnd": 8}]}, "ingress[0].portEnd"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 9, "sourceCidrs": "2001:db8::/32"}]}, "ingress[0].sourceCidrs"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 9, "sourceCidrs": ["10.0.0.0/8"]}]}, "ingress[0].sourceCidrs[0]"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 9, "sourceCidrs": ["nope"]}]}, "ingress[0].sourceCidrs[0]"),
        ({"mode": "open", "ingress": [{"protocol": "tcp", "portStart": 9, "description": "a\nb"}]}, "ingress[0].description"),
    ]
    for body, field in bad:
        with pytest.raises(InvalidRequest) as err:
            parse_ingress(body)
        assert err.value.field == field, (body, err.value.message)
    with pytest.raises(InvalidRequest) as err:
        parse_allow_rules([{"protocol": "tcp", "portStart": 1}, 5], "firewall.ingress")
    assert err.value.field == "firewall.ingress[1]"


def test_too_many_rules_are_refused() -> None:
    many = tuple(Allow("tcp", p, p, tuple(f"2001:db8:{i:x}::/48" for i in range(64))) for p in range(1, 6))
    with pytest.raises(InvalidRequest) as err:
        Ipv6Ingress("restricted", many).apply_to(Firewall())
    assert err.value.field == "ingress"


def test_a_rule_of_no_source_admits_nothing_and_reads_back() -> None:
    """`sourceCidrs: []` lists no network the rule allows: the port stays closed under
    `restricted`, and the rule comes back as it was sent (a disabled rule keeps it)."""
    p = parse_ingress({"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 22, "sourceCidrs": []}, {"protocol": "tcp", "portStart": 80}]})
    assert p.allow == (Allow("tcp", 22, 22, ()), Allow("tcp", 80, 80))
    fw = p.apply_to(Firewall())
    assert fw.verdict("in", "tcp", 22, "2001:db8::9") == "DROP" and fw.verdict("in", "tcp", 80, "2001:db8::9") == "ACCEPT"
    assert Ipv6Ingress.of(fw) == p
    assert Ipv6Ingress.of(fw).to_wire()["ingress"][0]["sourceCidrs"] == []
    again = Ipv6Ingress("restricted", (GAME,)).apply_to(fw)  # a new policy replaces the disabled rule too
    assert Ipv6Ingress.of(again) == Ipv6Ingress("restricted", (GAME,)) and len(again.rules) == 2
