"""Drivers and NICs without booting anything: QEMU's netdevs per NIC, the forwarded ports a
firewall admits, vm.json with and without NICs, the sim driver recording set_network."""

import json
from pathlib import Path

import pytest

from vmplane.domain import Resources, VmSpec
from vmplane.domain.network import Firewall, Network, Nic, mac_for, parse_firewall, tap_name
from vmplane.drivers.qemu.cmdline import active_forwards, build_argv, hostfwd_rule, net_args
from vmplane.drivers.qemu.layout import Forward, VmConfig, VmPaths
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError

VM = "vm-abcdefgh1234"
USER = Network("net-user0000000", "user", "user", "10.0.0.0/16", "10.0.0.2")
LAN = Network("net-lan00000000", "lan", "bridge", "10.77.0.0/24", "10.77.0.1", None, "vmbr0123456789")
FORWARDS = (Forward("tcp", 20022, 22), Forward("tcp", 20080, 80), Forward("udp", 20053, 53))


def config(nics: tuple[Nic, ...] = (), firewall: Firewall = Firewall(), forwards: tuple[Forward, ...] = FORWARDS) -> VmConfig:
    return VmConfig(id=VM, uuid="00000000-0000-4000-8000-000000000000", name="n", resources=Resources(1, 256, 2),
                    mac=mac_for(VM), forwards=forwards, nics=nics, firewall=firewall)  # fmt: skip


def pairs(argv: list[str]) -> list[tuple[str, str]]:
    return [(argv[i], argv[i + 1]) for i in range(0, len(argv), 2)]


class TestNetdevs:
    def test_no_nics_is_the_one_user_nic_of_before(self) -> None:
        assert pairs(net_args(config(), "127.0.0.1")) == [
            ("-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:20022-:22,hostfwd=tcp:127.0.0.1:20080-:80,hostfwd=udp:127.0.0.1:20053-:53"),
            ("-device", f"virtio-net-pci,netdev=n0,mac={mac_for(VM)},romfile="),
        ]

    def test_a_user_nic_gets_its_address_by_dhcp_and_a_bridge_nic_is_a_tap(self) -> None:
        nics = (Nic(LAN, mac_for(VM, 0), "10.77.0.4"), Nic(USER, mac_for(VM, 1), "10.0.3.7"), Nic(USER, mac_for(VM, 2), "10.0.3.8"))
        argv = net_args(config(nics), "127.0.0.1")
        assert pairs(argv) == [
            ("-netdev", f"tap,id=n0,ifname={tap_name(VM, 0)},script=no,downscript=no"),
            ("-device", f"virtio-net-pci,netdev=n0,mac={mac_for(VM, 0)},romfile="),
            # the first user NIC carries the forwarded ports
            ("-netdev", "user,id=n1,net=10.0.0.0/16,host=10.0.0.2,dhcpstart=10.0.3.7,hostfwd=tcp:127.0.0.1:20022-:22,"
                        "hostfwd=tcp:127.0.0.1:20080-:80,hostfwd=udp:127.0.0.1:20053-:53"),
            ("-device", f"virtio-net-pci,netdev=n1,mac={mac_for(VM, 1)},romfile="),
            ("-netdev", "user,id=n2,net=10.0.0.0/16,host=10.0.0.2,dhcpstart=10.0.3.8"),
            ("-device", f"virtio-net-pci,netdev=n2,mac={mac_for(VM, 2)},romfile="),
        ]  # fmt: skip
        full = build_argv(config(nics), VmPaths(Path(f"/var/lib/vmplane/vms/{VM}")), accel="tcg")
        assert argv == full[full.index("-netdev"):full.index("-netdev") + len(argv)]

    def test_only_bridge_nics_forward_nothing(self) -> None:
        argv = net_args(config((Nic(LAN, mac_for(VM), "10.77.0.4"),)), "127.0.0.1")
        assert "hostfwd" not in " ".join(argv) and active_forwards(config((Nic(LAN, mac_for(VM), "10.77.0.4"),)), "127.0.0.1") == ()

    def test_bad_values_are_refused(self) -> None:
        with pytest.raises(DriverError):
            net_args(config((Nic(USER, mac_for(VM), "192.168.1.1"),)), "127.0.0.1")  # outside the subnet
        with pytest.raises(DriverError):
            net_args(config((Nic(LAN, "52:54:00:00:00:01,x=y", "10.77.0.4"),)), "127.0.0.1")
        with pytest.raises(ValueError):
            hostfwd_rule(Forward("tcp", 1, 2), "127.0.0.1,hostfwd=tcp::1-:2")


class TestForwardsAndTheFirewall:
    def test_the_firewall_decides_which_forwards_are_open(self) -> None:
        def open_ports(**fw: object) -> list[int]:
            return [f.guest_port for f in active_forwards(config(firewall=parse_firewall({"enabled": True, **fw})), "127.0.0.1")]

        assert [f.guest_port for f in active_forwards(config(), "127.0.0.1")] == [22, 80, 53]  # disabled: all
        assert open_ports(policyIn="ACCEPT") == [22, 80, 53]
        assert open_ports(policyIn="DROP") == []
        assert open_ports(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"}]) == [22]
        assert open_ports(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "proto": "udp"}]) == [53]
        assert open_ports(rules=[{"type": "in", "action": "REJECT", "dport": "80"}]) == [22, 53]
        # forwarded connections come from the node's loopback
        assert open_ports(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "source": "127.0.0.0/8"}]) == [22, 80, 53]
        assert open_ports(policyIn="DROP", rules=[{"type": "in", "action": "ACCEPT", "source": "10.0.0.0/8"}]) == []

    def test_ports_open_to_everyone_ignore_rules_naming_a_source(self) -> None:
        fw = parse_firewall({"enabled": True, "policyIn": "DROP", "rules": [
            {"type": "in", "action": "ACCEPT", "source": "127.0.0.1"}, {"type": "in", "action": "ACCEPT", "dport": "80"}]})  # fmt: skip
        assert [f.guest_port for f in active_forwards(config(firewall=fw), "0.0.0.0")] == [80]


class TestVmJson:
    def test_nics_and_firewall_survive_json(self) -> None:
        fw = parse_firewall({"enabled": True, "policyIn": "DROP", "rules": [{"type": "in", "action": "ACCEPT", "dport": "22", "comment": "ssh"}]})
        c = config((Nic(LAN, mac_for(VM), "10.77.0.4", ("10.77.0.9",)), Nic(USER, mac_for(VM, 1), "10.0.3.7")), fw)
        assert VmConfig.from_json(json.loads(json.dumps(c.to_json()))) == c

    def test_a_vm_json_from_before_networks_still_reads(self) -> None:
        data = config().to_json()
        del data["nics"], data["firewall"]
        old = VmConfig.from_json(data)
        assert old.nics == () and old.firewall == Firewall() and old.forwards == FORWARDS


class TestSimRecordsTheNetwork:
    async def test_set_network_is_kept_across_a_restart(self, tmp_path: Path) -> None:
        sim = SimDriver(hostname="node-1", latency=0, state_dir=tmp_path)
        await sim.open()
        assert sim.capabilities.network_types == {"user", "bridge"} and sim.capabilities.firewall is False
        nic = Nic(LAN, mac_for(VM), "10.77.0.4")
        await sim.create_vm(VmSpec(id=VM, uuid="u", name="n", resources=Resources(1, 256, 2), nics=(nic,)))
        fw = parse_firewall({"enabled": True, "policyIn": "DROP"})
        await sim.set_network(VM, (Nic(LAN, nic.mac, nic.ip, ("10.77.0.9",)),), fw)
        again = SimDriver(hostname="node-1", latency=0, state_dir=tmp_path)
        await again.open()
        spec = again._vms[VM].spec
        assert spec.firewall == fw and spec.nics[0].aliases == ("10.77.0.9",)
        with pytest.raises(DriverError):
            await again.set_network("vm-unknown00000", (), fw)


class TestQemuWithoutBridges:
    async def test_a_bridge_nic_on_a_node_without_bridges_is_refused_clearly(self, tmp_path: Path) -> None:
        from vmplane.drivers.qemu import QemuDriver
        from vmplane.net.host import Support

        d = QemuDriver(state_dir=tmp_path, hostname="h", accel="tcg")
        d.net.support = Support(False, "vmplane runs without CAP_NET_ADMIN (not root)")
        spec = VmSpec(id=VM, uuid="u", name="n", resources=Resources(1, 256, 2), nics=(Nic(LAN, mac_for(VM), "10.77.0.4"),))
        with pytest.raises(DriverError, match="bridge network 'lan'.*CAP_NET_ADMIN"):
            await d.create_vm(spec)
        assert list((tmp_path / "vms").iterdir()) == []
