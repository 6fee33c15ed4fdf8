"""A VM's firewall as nftables text: the rendering, and (as root, with nft) that the kernel of
this machine takes it, checked with `nft -c` in a throwaway network namespace."""

import os
import shutil
import subprocess
import uuid

import pytest

from vmplane.domain.network import Firewall, parse_firewall, parse_rule
from vmplane.net import nft

TAPS = ["vmt0123456789a0", "vmt0123456789a1"]
VM = "vm-abcd1234efgh"


def fw(**body: object) -> Firewall:
    return parse_firewall({"enabled": True, **body})


def chain(text: str, name: str) -> list[str]:
    """The statements of `add rule ... <name> <stmt>` lines, in order."""
    prefix = f"add rule bridge vmplane {name} "
    return [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]


class TestMatches:
    @pytest.mark.parametrize(
        ("rule", "text"),
        [
            ({"proto": "tcp", "dport": "22"}, "tcp dport 22 "),
            ({"proto": "udp", "dport": "53,80:90,85,443"}, "udp dport { 53, 80-90, 443 } "),
            ({"proto": "tcp", "sport": "1024:65535", "dport": "8000:9000"}, "tcp sport 1024-65535 tcp dport 8000-9000 "),
            ({"dport": "22"}, "tcp dport 22 "),  # Blue Lobster's default protocol
            ({"proto": "icmp"}, "meta l4proto icmp "),
            ({"proto": "icmpv6", "source": "fd00::/8"}, "ip6 saddr fd00::/8 meta l4proto ipv6-icmp "),
            ({"source": "10.1.2.3"}, "ip saddr 10.1.2.3 "),
            ({"source": "10.1.2.3/8", "dest": "192.168.0.0/16"}, "ip saddr 10.0.0.0/8 ip daddr 192.168.0.0/16 "),
            ({"dest": "2001:db8::1"}, "ip6 daddr 2001:db8::1 "),
            ({}, ""),
        ],
    )
    def test_rule_fields(self, rule: dict[str, str], text: str) -> None:
        assert nft.render_match(parse_rule({"type": "in", "action": "ACCEPT", **rule})) == text

    def test_port_sets_merge_overlaps(self) -> None:
        assert nft.render_ports([(80, 80)]) == "80"
        assert nft.render_ports([(80, 80), (81, 90), (85, 100), (443, 443)]) == "{ 80-100, 443 }"
        with pytest.raises(ValueError):
            nft.render_ports([(0, 10)])


class TestVmRuleset:
    def test_chains_dispatch_rules_in_order_then_the_policy(self) -> None:
        text = nft.vm_ruleset(VM, TAPS, fw(policyIn="DROP", policyOut="ACCEPT", rules=[
            {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"},
            {"type": "out", "action": "DROP", "dest": "10.9.9.9"},
            {"type": "in", "action": "DROP", "proto": "tcp", "dport": "23", "enable": 0},
            {"type": "in", "action": "REJECT", "proto": "udp", "dport": "53", "source": "10.0.0.0/8"},
        ]))  # fmt: skip
        cin, cout = nft.chain_names(VM)
        assert (cin, cout) == ("in_vm_abcd1234efgh", "out_vm_abcd1234efgh")
        assert chain(text, cin) == [
            "meta mark & 0x01000000 == 0x01000000 return",
            "ether type arp return",
            "udp sport 67 udp dport 68 return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } return",
            'tcp dport 22 return comment "rule 0"',
            # the disabled rule 2 is left out
            'ip saddr 10.0.0.0/8 udp dport 53 meta mark set meta mark | 0x02000000 return comment "rule 3"',
            "drop",
        ]
        assert chain(text, cout)[2:] == [
            "udp sport 68 udp dport 67 return",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } return",
            'ip daddr 10.9.9.9 drop comment "rule 1"',
            "return",
        ]
        for tap in TAPS:
            assert f'add element bridge vmplane vm_in {{ "{tap}" : jump {cin} }}' in text
            assert f'add element bridge vmplane vm_out {{ "{tap}" : jump {cout} }}' in text
        # only this VM's chains are flushed; the base chains are rewritten whole
        flushed = [ln.split()[-1] for ln in text.splitlines() if ln.startswith("flush chain bridge")]
        assert flushed == ["forward", "input", "output", cin, cout]
        assert "flush ruleset" not in text and "delete table" not in text

    def test_the_base_dispatches_on_taps_and_answers_rejects_in_the_inet_table(self) -> None:
        text = nft.vm_ruleset(VM, TAPS, fw())
        assert chain(text, "forward") == ["iifname vmap @guard", "iifname vmap @vm_out", "oifname vmap @vm_in"]
        assert chain(text, "input") == ["iifname vmap @guard", "iifname vmap @vm_out"]
        assert chain(text, "output") == ["oifname vmap @vm_in", "meta mark & 0x02000000 == 0x02000000 drop"]
        assert "add rule inet vmplane forward iifname @bridges meta mark & 0x02000000 == 0x02000000 meta l4proto tcp reject with tcp reset" in text
        assert "add rule inet vmplane prerouting iifname @bridges ct state established,related meta mark set meta mark | 0x01000000" in text

    def test_comments_never_reach_the_ruleset(self) -> None:
        nasty = 'x" ; flush ruleset ; add rule inet t c "'
        text = nft.vm_ruleset(VM, TAPS, fw(rules=[{"type": "in", "action": "ACCEPT", "comment": nasty}]))
        assert "flush ruleset" not in text and nasty not in text
        assert 'return comment "rule 0"' in text

    def test_a_disabled_firewall_removes_the_chains(self) -> None:
        text = nft.vm_ruleset(VM, TAPS, Firewall(enabled=False, policy_in="DROP"))
        assert nft.vm_removal(VM, TAPS).startswith(text)  # the removal, less the guards
        cin, cout = nft.chain_names(VM)
        assert f"delete chain bridge vmplane {cin}" in text and f"delete chain bridge vmplane {cout}" in text
        for tap in TAPS:
            assert f'delete element bridge vmplane vm_in {{ "{tap}" }}' in text
        assert " drop" not in "\n".join(chain(text, cin))

    def test_a_disabled_firewall_keeps_the_guards(self) -> None:
        text = nft.vm_ruleset(VM, TAPS, Firewall(enabled=False), GUARDS)
        assert chain(text, f"g_{TAPS[0]}")[0] == "ether saddr != 52:54:00:aa:bb:cc drop"
        assert f'add element bridge vmplane guard {{ "{TAPS[1]}" : jump g_{TAPS[1]} }}' in text

    def test_removal_takes_the_guards_away(self) -> None:
        text = nft.vm_removal(VM, TAPS)
        for tap in TAPS:
            assert f'delete element bridge vmplane guard {{ "{tap}" }}' in text and f"delete chain bridge vmplane g_{tap}" in text

    def test_names_are_checked(self) -> None:
        with pytest.raises(ValueError):
            nft.vm_ruleset("vm-x; flush ruleset", TAPS, fw())
        with pytest.raises(ValueError):
            nft.vm_ruleset(VM, ['tap" }'], fw())
        with pytest.raises(ValueError):
            nft.network_up("br0 } ; flush ruleset", None)
        with pytest.raises(ValueError):
            nft.vm_ruleset(VM, TAPS, fw(), [nft.TapGuard("vmt.x", "52:54:00:aa:bb:cc", (), ())])
        with pytest.raises(ValueError):
            nft.vm_ruleset(VM, TAPS, fw(), [nft.TapGuard(TAPS[0], "52:54:00:aa:bb:cc drop", (), ())])
        with pytest.raises(ValueError):
            nft.vm_ruleset(VM, TAPS, fw(), [nft.TapGuard(TAPS[0], "52:54:00:aa:bb:cc", ("10.0.0.1 } accept",), ())])


GUARDS = [
    nft.TapGuard(TAPS[0], "52:54:00:AA:BB:CC", ("10.128.0.4", "10.128.0.9"), ("fe80::5054:ff:feaa:bbcc", "fd00:1::5054:ff:feaa:bbcc")),
    nft.TapGuard(TAPS[1], "52:54:00:aa:bb:cd", (), ("fe80::5054:ff:feaa:bbcd",)),
]


class TestGuards:
    """What a bridge NIC may send as: on whatever the firewall says."""

    def test_a_nic_sends_only_its_mac_its_addresses_and_dhcp(self) -> None:
        assert chain(nft.vm_ruleset(VM, TAPS, fw(), GUARDS), f"g_{TAPS[0]}") == [
            "ether saddr != 52:54:00:aa:bb:cc drop",
            "ether type != { ip, arp, ip6 } drop",
            "arp saddr ether != 52:54:00:aa:bb:cc drop",
            "arp saddr ip != { 0.0.0.0, 10.128.0.4, 10.128.0.9 } drop",
            "ip saddr 0.0.0.0 udp sport 68 udp dport 67 return",
            "ip saddr != { 10.128.0.4, 10.128.0.9 } drop",
            "ip6 saddr != { ::, fd00:1::5054:ff:feaa:bbcc, fe80::5054:ff:feaa:bbcc } drop",
        ]

    def test_a_nic_without_ipv4_addresses_sends_no_ipv4_but_dhcp(self) -> None:
        body = chain(nft.vm_ruleset(VM, TAPS, fw(), GUARDS), f"g_{TAPS[1]}")
        assert "arp saddr ip != { 0.0.0.0 } drop" in body and "ether type ip drop" in body
        assert body.index("ip saddr 0.0.0.0 udp sport 68 udp dport 67 return") < body.index("ether type ip drop")

    def test_the_guard_comes_before_every_firewall(self) -> None:
        text = nft.vm_ruleset(VM, TAPS, fw(policyOut="ACCEPT"), GUARDS)
        assert chain(text, "forward")[0] == "iifname vmap @guard" and chain(text, "input")[0] == "iifname vmap @guard"


# -- the kernel takes it -------------------------------------------------------------------


def _can_check() -> None:
    if os.geteuid() == 0 and shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin") and shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin"):
        return
    if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but not root or nft / ip missing (scripts/install-qemu.sh installs them)")
    pytest.skip("needs root, nft and ip")


@pytest.fixture
def netns() -> object:
    _can_check()
    name = f"vmpt-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def nft_in(ns: str, text: str, check_only: bool) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", ns, "nft", *(["-c"] if check_only else []), "-f", "-"]
    return subprocess.run(argv, input=text, capture_output=True, text=True, timeout=30)


def test_the_kernel_takes_every_ruleset(netns: str) -> None:
    everything = fw(policyIn="DROP", policyOut="DROP", rules=[
        {"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22,80,8000:9000", "source": "10.0.0.0/8"},
        {"type": "in", "action": "REJECT", "proto": "udp", "sport": "53", "dest": "10.77.0.4"},
        {"type": "in", "action": "ACCEPT", "proto": "icmp"},
        {"type": "in", "action": "ACCEPT", "proto": "icmpv6", "source": "fd00::/8"},
        {"type": "out", "action": "REJECT"},
        {"type": "out", "action": "DROP", "dest": "2001:db8::/32"},
    ])  # fmt: skip
    steps = [
        nft.network_up("vmbr0123456789", "10.77.0.0/24"),
        nft.vm_ruleset(VM, TAPS, everything, GUARDS),
        nft.vm_ruleset(VM, TAPS, everything, GUARDS),  # applying again changes nothing
        nft.vm_ruleset(VM, TAPS, Firewall(), GUARDS),
        nft.vm_ruleset(VM, TAPS, fw(policyIn="ACCEPT")),
        nft.vm_removal(VM, TAPS),
        nft.vm_removal(VM, TAPS),  # removing what is not there is fine
        nft.network_down("vmbr0123456789", "10.77.0.0/24"),
        nft.network_down("vmbr0123456789", "10.77.0.0/24"),
    ]
    for i, text in enumerate(steps):
        assert nft_in(netns, text, check_only=True).returncode == 0, (i, nft_in(netns, text, True).stderr)
        r = nft_in(netns, text, check_only=False)
        assert r.returncode == 0, (i, r.stderr)
    listing = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "in_vm_" not in listing and "g_vmt" not in listing and "vmt0123456789a0" not in listing and "10.77.0.0" not in listing
