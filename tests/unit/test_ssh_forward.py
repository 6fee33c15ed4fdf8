"""The SSH forward as the qemu driver builds it, as the API shows it, and the ssh argv the
CLI runs."""

from pathlib import Path

from vmplane.cli.ssh import ssh_argv
from vmplane.domain import Resources, StoredSpec, VmSpec
from vmplane.domain.network import Firewall, Rule
from vmplane.drivers.qemu.cmdline import active_forwards
from vmplane.drivers.qemu.layout import Forward, VmConfig

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILgOI49zZ+FOg3BwbO2ALx7k7+tVpHmlu0DCkEIV22Tc"


def spec(**extra: object) -> VmSpec:
    return VmSpec(id="vm-abcdabcdabcd", uuid="u", name="n", resources=Resources(1, 256, 2), extra=dict(extra))


def test_a_reserved_ssh_port_is_a_forward_to_guest_port_22_kept_in_the_config() -> None:
    cfg = VmConfig.from_spec(spec(ssh={"hostPort": 20007, "hostKey": KEY, "reserved": True}), 0.0)
    assert cfg.forwards == (Forward("tcp", 20007, 22),)
    assert VmConfig.from_json(cfg.to_json()).forwards == cfg.forwards  # what a restarted vmplane reads
    # the user's own forward of port 22 is the SSH port: no second forward
    own = spec(expose=[{"port": 22, "hostPort": 20100, "protocol": "tcp"}], ssh={"hostPort": 20100, "reserved": False})
    assert VmConfig.from_spec(own, 0.0).forwards == (Forward("tcp", 20100, 22),)


def test_the_firewall_filters_the_ssh_forward_like_any_other() -> None:
    cfg = VmConfig.from_spec(spec(ssh={"hostPort": 20007, "reserved": True}), 0.0)
    assert active_forwards(cfg, "127.0.0.1") == (Forward("tcp", 20007, 22),)  # the default: no firewall
    drop = Firewall(enabled=True, rules=(Rule(type="in", action="DROP", proto="tcp", dport="22"),))
    assert active_forwards(cfg.with_network((), drop), "127.0.0.1") == ()


def test_the_api_shows_where_to_log_in() -> None:
    assert StoredSpec.from_json({}).ssh_endpoint is None and StoredSpec.from_json(None).ssh_endpoint is None
    assert StoredSpec.from_json({"ssh": {"hostPort": 20007, "hostKey": KEY, "reserved": True}}).ssh_endpoint == {
        "host": "127.0.0.1", "port": 20007, "user": "root", "hostKey": KEY,
    }  # fmt: skip


def test_ssh_argv_checks_the_known_host_key_and_puts_extra_arguments_after_the_host(tmp_path: Path) -> None:
    ep = {"host": "127.0.0.1", "port": 20007, "user": "root", "hostKey": KEY}
    argv = ssh_argv(ep, "vm-x", tmp_path / "kh", "/k", None, ["-o", "BatchMode=yes", "uname", "-a"])
    assert argv[1:3] == ["-p", "20007"]
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv and "StrictHostKeyChecking=yes" in argv
    assert argv[argv.index("-i") + 1] == "/k" and "IdentitiesOnly=yes" in argv
    assert argv[-7:] == ["-l", "root", "127.0.0.1", "-o", "BatchMode=yes", "uname", "-a"]
    # no known key: learnt on first use under an alias of the VM (ports are reused by other VMs)
    argv = ssh_argv({**ep, "hostKey": None}, "vm-x", None, None, "alice", [])
    assert "HostKeyAlias=vmplane-vm-x" in argv and "StrictHostKeyChecking=accept-new" in argv
    assert argv[-3:] == ["-l", "alice", "127.0.0.1"] and "-i" not in argv
