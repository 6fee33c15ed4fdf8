"""The typed records of the domain floor: a VM's stored spec reads every shape today's writers
store and writes it back byte for byte; derived facts are computed on the record."""

import json
from dataclasses import fields

import sqlalchemy as sa

from vmplane.domain import (
    Expose,
    Iso,
    PluginRef,
    SshForward,
    StoredSpec,
    Template,
    Vm,
    VmNic,
)
from vmplane.store.tables import isos, templates, vms

NIC = {"networkId": "net-a", "network": "default", "type": "user", "mac": "52:54:00:aa:bb:cc", "ips": ["10.0.0.5", "10.0.0.9"]}
BRIDGE_NIC = {"networkId": "net-b", "network": "lan", "type": "bridge", "mac": "52:54:00:dd:ee:ff", "ips": ["192.168.7.3"], "ipv6": "fd00::5054:ff:fedd:eeff"}

SHAPES = [
    {},  # a VM from before specs held anything
    {"nodeId": None},
    {  # native create, after IPAM, the SSH forward, PCI placement and a move in flight
        "nodeId": "node-1", "sourceName": "ubuntu", "cloudInit": {"userData": "#cloud-config\n", "metaData": {"a": 1}},
        "sshKeys": ["ssh-ed25519 AAAA k"], "expose": [{"port": 80, "hostPort": 20001, "protocol": "tcp"}],
        "pciPassthrough": ["10de:1db6"], "nics": [NIC, BRIDGE_NIC], "pciAssigned": ["0000:01:00.0"],
        "ssh": {"hostPort": 20007, "hostKey": None, "reserved": True}, "moveTo": "node-2",
    },
    {  # Blue Lobster: its cloud-config as a mapping, the account, the price
        "nodeId": "node-1", "cloudInit": {"userData": {"users": ["default", {"name": "ubuntu"}]}}, "username": "ubuntu",
        "metadata": {"project": "ml"}, "instanceType": "v1_cpu_small", "priceCentsPerHour": 3, "gpuModel": None, "nics": [NIC],
    },
    {  # a config (Volant) and a plugin: expose in the config's key order, kernel arguments
        "nodeId": None, "expose": [{"port": 8080, "protocol": "tcp", "hostPort": 20100}], "kernelCmdline": "quiet",
        "plugin": {"name": "web", "runtime": "web", "version": "1", "shared": False}, "deployment": "dep-1",
    },
    {"nodeId": None, "imported": {"importId": "imp-1", "source": "ova", "os": "linux"}, "osType": "l26"},
    {"nodeId": None, "nics": [{"networkId": "net-a", "network": "default", "mac": "52:54:00:00:00:01", "ips": ["10.0.0.2"]}]},  # no type: user
    {"nodeId": None, "somethingOld": {"kept": True}},  # a key no code declares survives
]


def test_every_stored_shape_round_trips_byte_for_byte() -> None:
    for shape in SHAPES:
        assert json.dumps(StoredSpec.from_json(shape).to_json()) == json.dumps(shape)
    assert StoredSpec.from_json(None).to_json() == {}


def test_a_change_writes_its_key_and_keeps_the_rest_as_stored() -> None:
    spec = StoredSpec.from_json(SHAPES[2])
    moved = spec.with_(move_to=None)
    assert moved.to_json() == {k: v for k, v in SHAPES[2].items() if k != "moveTo"}
    assert list(moved.to_json()) == [k for k in SHAPES[2] if k != "moveTo"]  # the order stands
    odd = StoredSpec.from_json(SHAPES[-1]).with_(ssh=SshForward(20008, None, reserved=False))
    assert odd.to_json() == {"nodeId": None, "somethingOld": {"kept": True}, "ssh": {"hostPort": 20008, "hostKey": None, "reserved": False}}
    assert StoredSpec().with_(pci_assigned=("0000:01:00.0",)).to_json() == {"pciAssigned": ["0000:01:00.0"]}


def test_fields_are_typed() -> None:
    spec = StoredSpec.from_json(SHAPES[2])
    assert spec.nics[1] == VmNic.from_json(BRIDGE_NIC) and spec.nics[1].addresses == ("192.168.7.3", "fd00::5054:ff:fedd:eeff")
    assert spec.expose == (Expose(80, "tcp", 20001),) and spec.forward(80) == Expose(80, "tcp", 20001) and spec.forward(80, "udp") is None
    assert spec.ssh == SshForward(20007, None, True) and spec.move_to == "node-2" and spec.pci_assigned == ("0000:01:00.0",)
    assert StoredSpec.from_json(SHAPES[4]).plugin == PluginRef("web", "web", "1", False)
    assert StoredSpec.from_json(SHAPES[6]).nics[0].type == "user"


def test_derived_facts() -> None:
    spec = StoredSpec.from_json(SHAPES[2])
    assert spec.primary_ip == "10.0.0.5" and spec.first_ipv4 == "10.0.0.5" and spec.first_ipv6 == "fd00::5054:ff:fedd:eeff"
    assert spec.network_types == frozenset({"bridge"}) and spec.has_user_nic
    assert spec.ssh_endpoint == {"host": "127.0.0.1", "port": 20007, "user": "root", "hostKey": None}
    bridged = StoredSpec.from_json({"nics": [BRIDGE_NIC]})
    assert not bridged.has_user_nic and bridged.ssh_endpoint is None
    assert StoredSpec().has_user_nic and StoredSpec().primary_ip is None and StoredSpec().runtime == ""
    assert StoredSpec.from_json(SHAPES[4]).runtime == "web" and StoredSpec.from_json(SHAPES[4]).plugin_name == "web"


def _row(table: sa.Table, **values: object) -> sa.Row:
    """A row of `table` as the store reads it (SQLite in memory)."""
    engine = sa.create_engine("sqlite://")
    table.metadata.create_all(engine, tables=[table])
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [values])
        return conn.execute(sa.select(table)).one()


def test_records_are_the_tables_rows() -> None:
    assert [f.name for f in fields(Vm)] == list(vms.c.keys())
    assert [f.name for f in fields(Template)] == list(templates.c.keys())
    values = {
        "id": "vm-1", "uuid": "u", "name": "a", "org_id": "org-1", "team_id": None, "node_id": "node-1", "template_id": None, "snapshot_id": None,
        "status": "running", "cpu": 1, "ram_mb": 512, "disk_gb": 10, "tags": [], "spec": SHAPES[2], "error": None, "started_at": 1.0, "created_at": 1.0, "updated_at": 2.0,
        "guest_ready": False,
        "running_spec": {"cpu": 1, "ramMb": 512, "diskGb": 10},
        "cdrom_iso_id": "iso-0123456789ab",
    }  # fmt: skip
    vm = Vm.from_row(_row(vms, **values))
    assert vm.primary_ip == "10.0.0.5" and vm.ssh_endpoint is not None and vm.to_row() == {"seq": 1, **values}
    tpl = Template.from_row(
        _row(templates, id="tpl-1", name="t", org_id=None, os="linux", node_id=None, source_url=None, status="ready", format="qcow2",
             size_mb=1, image_path=None, checksum=None, boot={"sshHostKey": "ssh-ed25519 K"}, error=None, created_at=1.0, updated_at=1.0)
    )  # fmt: skip
    assert tpl.shared and tpl.ssh_host_key == "ssh-ed25519 K"
    assert [f.name for f in fields(Iso)] == list(isos.c.keys())
