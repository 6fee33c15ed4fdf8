"""PCI passthrough in the drivers, against a fake sysfs tree with the kernel's write semantics
(tests/support_pci): what nodes offer, the settings, QEMU's command line and vm.json, and the
qemu driver binding devices before QEMU starts and giving them back. A real guest with a
real device needs a host with an IOMMU; here real QEMU is started only to see it fail on a
device the real host does not have, and the driver clean up after it."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from vmplane import ids
from vmplane.config import Settings
from vmplane.domain import Resources, VmSpec
from vmplane.drivers.base import PowerState
from vmplane.drivers.qemu import QemuDriver, build_argv
from vmplane.drivers.qemu.layout import VmConfig, VmPaths, load_config, vm_paths
from vmplane.drivers.registry import build_qemu_driver, build_sim_nodes
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError
from vmplane.pci import PciDevice

from ..support_pci import FakeKernel, install, standard_host

GPU, AUDIO, NIC, NVME = "0000:01:00.0", "0000:01:00.1", "0000:02:00.0", "0000:03:00.0"
ALLOW = ("10de:*", "8086:1521")
HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None
needs_qemu = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-system-x86_64 / qemu-img not installed")


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return install(standard_host(tmp_path), monkeypatch)


def spec(*devices: str, name: str = "p") -> VmSpec:
    return VmSpec(id=ids.new_id("vm"), uuid=ids.new_uuid(), name=name, resources=Resources(1, 64, 1), pci_devices=devices)


# -- settings ------------------------------------------------------------------------------


def test_settings_take_the_allowlist_and_the_sysfs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().pci_allowlist == [] and Settings().sysfs_root == Path("/sys")
    monkeypatch.setenv("VMPLANE_PCI_ALLOWLIST", "10de:*, 0000:02:00.*")
    monkeypatch.setenv("VMPLANE_SYSFS_ROOT", "/tmp/fake-sys")
    s = Settings()
    assert s.pci_allowlist == ["10de:*", "0000:02:00.*"] and s.sysfs_root == Path("/tmp/fake-sys")
    monkeypatch.setenv("VMPLANE_PCI_ALLOWLIST", '["8086:1521"]')
    assert Settings().pci_allowlist == ["8086:1521"]
    monkeypatch.setenv("VMPLANE_PCI_ALLOWLIST", "10de:*,../../x")
    with pytest.raises(ValueError, match=r"'\.\./\.\./x'"):
        Settings()
    monkeypatch.setenv("VMPLANE_PCI_ALLOWLIST", "[oops")
    with pytest.raises(ValueError, match="not a JSON list"):
        Settings()


# -- sim -----------------------------------------------------------------------------------


async def test_sim_node_offers_the_fake_trees_devices(host: FakeKernel) -> None:
    d = SimDriver(hostname="s", latency=0, sysfs_root=host.root, pci_allowlist=ALLOW)
    assert d.capabilities.pci_passthrough
    info = await d.node_info()
    assert [p.address for p in info.pci_devices] == [GPU, AUDIO, NIC]
    assert info.pci_devices[0] == PciDevice(GPU, "10de", "2204", "030000", "nvidia", 1, 0)

    plain = SimDriver(hostname="s", latency=0, sysfs_root=host.root)  # no allowlist: nothing offered
    assert not plain.capabilities.pci_passthrough and (await plain.node_info()).pci_devices == ()
    with pytest.raises(DriverError, match="offers no PCI devices"):
        await plain.create_vm(spec(NIC))


async def test_sim_gives_each_device_to_one_vm_and_takes_whole_groups(host: FakeKernel, tmp_path: Path) -> None:
    d = SimDriver(hostname="s", latency=0, sysfs_root=host.root, pci_allowlist=ALLOW, state_dir=tmp_path / "state")
    await d.open()
    first = spec(GPU, AUDIO)
    await d.create_vm(first)
    with pytest.raises(DriverError, match=f"{GPU}.*given to VM {first.id}"):
        await d.create_vm(spec(GPU.upper(), AUDIO))
    with pytest.raises(DriverError, match="shares IOMMU group 2|not in this node's PCI allowlist"):
        await d.create_vm(spec(NVME))
    with pytest.raises(DriverError, match="is not a PCI address"):
        await d.create_vm(spec("../../x"))
    await d.create_vm(spec(NIC))
    # the assignment outlives the process, as a real node's does
    again = SimDriver(hostname="s", latency=0, sysfs_root=host.root, pci_allowlist=ALLOW, state_dir=tmp_path / "state")
    await again.open()
    with pytest.raises(DriverError, match="given to VM"):
        await again.create_vm(spec(NIC))
    await again.delete_vm(first.id)
    await again.create_vm(spec(GPU, AUDIO))


async def test_registry_wires_the_settings_into_sim_nodes(host: FakeKernel, tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, sim_nodes=2, sysfs_root=host.root, pci_allowlist=["8086:1521"])
    nodes = build_sim_nodes(s, None)
    for _node_id, driver in nodes:
        assert [p.address for p in (await driver.node_info()).pci_devices] == [NIC]
    for _node_id, driver in build_sim_nodes(Settings(data_dir=tmp_path, sysfs_root=host.root), None):
        assert (await driver.node_info()).pci_devices == ()


# -- qemu: what needs no QEMU --------------------------------------------------------------


def qemu(tmp_path: Path, host: FakeKernel, allow: tuple[str, ...] = ALLOW, dev_root: Path | None = None) -> QemuDriver:
    return QemuDriver(
        state_dir=tmp_path / "qemu", hostname="h", accel="tcg",
        sysfs_root=host.root, dev_root=dev_root or host.dev, pci_allowlist=allow,
    )  # fmt: skip


async def test_qemu_offers_devices_only_with_an_iommu_and_an_allowlist(tmp_path: Path, host: FakeKernel) -> None:
    d = qemu(tmp_path, host)
    assert d.capabilities.pci_passthrough
    assert [p.address for p in (await d.node_info()).pci_devices] == [GPU, AUDIO, NIC]
    assert not qemu(tmp_path, host, allow=()).capabilities.pci_passthrough
    assert (await qemu(tmp_path, host, allow=()).node_info()).pci_devices == ()
    no_iommu = standard_host(tmp_path / "other", iommu=False)
    assert not qemu(tmp_path, no_iommu).capabilities.pci_passthrough
    s = Settings(data_dir=tmp_path, sysfs_root=host.root, pci_allowlist=list(ALLOW))
    built = build_qemu_driver(s, tmp_path / "q2", "h", "tcg")
    assert built.capabilities.pci_passthrough
    assert [p.address for p in (await built.node_info()).pci_devices] == [GPU, AUDIO, NIC]


def test_argv_passes_each_device_with_vfio_pci(tmp_path: Path) -> None:
    config = VmConfig.from_spec(spec(GPU, AUDIO), 0.0)
    argv = build_argv(config, VmPaths(tmp_path), accel="tcg")
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device" and argv[i + 1].startswith("vfio-pci")]
    assert devices == [f"vfio-pci,host={GPU},id=hostpci0", f"vfio-pci,host={AUDIO},id=hostpci1"]
    assert not any(a.startswith("vfio-pci") for a in build_argv(VmConfig.from_spec(spec(), 0.0), VmPaths(tmp_path), accel="tcg"))
    with pytest.raises(DriverError, match="is not a PCI address"):
        build_argv(dataclasses.replace(config, pci_devices=("0000:01:00.0,x-bad=1",)), VmPaths(tmp_path), accel="tcg")


def test_vm_json_keeps_the_devices_and_old_files_still_load(tmp_path: Path) -> None:
    config = VmConfig.from_spec(spec(NIC.upper()), 0.0)
    assert config.pci_devices == (NIC,)
    data = json.loads(json.dumps(config.to_json()))
    assert data["pciDevices"] == [NIC] and VmConfig.from_json(data) == config
    del data["pciDevices"]  # a vm.json written before passthrough existed
    assert VmConfig.from_json(data).pci_devices == ()
    paths = VmPaths(tmp_path)
    paths.config.write_text(json.dumps({**data, "pciDevices": ["../../../etc"]}))
    with pytest.raises(DriverError, match="is not a PCI address"):
        load_config(paths)
    with pytest.raises(DriverError, match="is not a PCI address"):
        VmConfig.from_spec(spec("0000:01:00.0/../x"), 0.0)


# -- qemu: define, bind, start, give back ---------------------------------------------------


@needs_qemu
async def test_qemu_create_checks_the_request(tmp_path: Path, host: FakeKernel) -> None:
    d = qemu(tmp_path, host)
    await d.open()
    first = spec(NIC)
    await d.create_vm(first)
    assert load_config(vm_paths(d.state_dir, first.id)).pci_devices == (NIC,)
    with pytest.raises(DriverError, match=f"given to VM {first.id}"):
        await d.create_vm(spec(NIC))
    with pytest.raises(DriverError, match="shares IOMMU group 1 with 0000:01:00.1"):
        await d.create_vm(spec(GPU))
    with pytest.raises(DriverError, match="offers no PCI passthrough"):
        await qemu(tmp_path / "b", host, allow=()).create_vm(spec(NIC))
    assert sorted(p.name for p in d.vms_dir.iterdir()) == [first.id]  # failed creates leave nothing
    assert host.writes == []  # defining binds nothing
    await d.delete_vm(first.id)


@needs_qemu
async def test_qemu_start_without_the_vfio_node_fails_clearly_and_gives_the_devices_back(tmp_path: Path, host: FakeKernel) -> None:
    d = qemu(tmp_path, host, dev_root=tmp_path / "empty-dev")
    await d.open()
    s = spec(GPU, AUDIO)
    await d.create_vm(s)
    with pytest.raises(DriverError, match=r"empty-dev/vfio/1 is missing.*IOMMU"):
        await d.start_vm(s.id)
    assert (host.driver_of(GPU), host.driver_of(AUDIO)) == ("nvidia", "snd_hda_intel")
    assert host.override_of(GPU) is None and host.override_of(AUDIO) is None
    assert not vm_paths(d.state_dir, s.id).pci_bound.exists()
    assert (await d.get_vm(s.id)).state == PowerState.STOPPED  # type: ignore[union-attr]
    await d.delete_vm(s.id)


@needs_qemu
async def test_qemu_start_binds_then_gives_back_when_qemu_fails(tmp_path: Path, host: FakeKernel) -> None:
    """Real QEMU (under its -sandbox) gets as far as the vfio-pci device, which this host does
    not really have, and exits; the driver leaves no process and gives the device back."""
    d = qemu(tmp_path, host)
    await d.open()
    s = spec(NIC)
    await d.create_vm(s)
    with pytest.raises(DriverError) as e:
        await d.start_vm(s.id)
    print("QEMU said:", e.value.message)
    assert "vfio" in e.value.message.lower() and NIC in e.value.message
    binds = [w for w in host.writes if w[0].endswith(("driver_override", "unbind", "drivers_probe"))]
    assert binds[:3] == [(f"bus/pci/devices/{NIC}/driver_override", "vfio-pci"), ("bus/pci/drivers/igb/unbind", NIC), ("bus/pci/drivers_probe", NIC)]
    assert host.driver_of(NIC) == "igb" and host.override_of(NIC) is None
    assert (await d.get_vm(s.id)).state == PowerState.STOPPED  # type: ignore[union-attr]
    await d.delete_vm(s.id)


@needs_qemu
async def test_qemu_delete_gives_back_what_it_bound_and_only_that(tmp_path: Path, host: FakeKernel) -> None:
    d = qemu(tmp_path, host)
    await d.open()
    # the NIC was bound to vfio-pci by the operator (as vfio-pci.ids= does at boot): not ours to give back
    host.write(host.root / "bus/pci/drivers/igb/unbind", NIC)
    host.devices[NIC].native = "vfio-pci"
    host.write(host.root / "bus/pci/drivers_probe", NIC)
    assert host.driver_of(NIC) == "vfio-pci"
    gpu_vm, nic_vm = spec(GPU, AUDIO), spec(NIC)
    for s in (gpu_vm, nic_vm):
        await d.create_vm(s)
        moved = await d.vfio.bind(d.machines.vm(s.id))  # what start_vm does before it runs QEMU
        assert moved == ([GPU, AUDIO] if s is gpu_vm else [])
    assert json.loads(vm_paths(d.state_dir, gpu_vm.id).pci_bound.read_text()) == {"bound": [GPU, AUDIO]}
    assert not vm_paths(d.state_dir, nic_vm.id).pci_bound.exists()
    assert host.group_node(1).exists()
    await d.delete_vm(gpu_vm.id)
    assert (host.driver_of(GPU), host.driver_of(AUDIO)) == ("nvidia", "snd_hda_intel")
    assert not host.group_node(1).exists()
    await d.delete_vm(nic_vm.id)
    assert host.driver_of(NIC) == "vfio-pci"
    await d.delete_vm(gpu_vm.id)  # idempotent


@needs_qemu
async def test_qemu_delete_fails_loudly_when_the_host_refuses(tmp_path: Path, host: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    import vmplane.pci

    d = qemu(tmp_path, host)
    await d.open()
    s = spec(NIC)
    await d.create_vm(s)
    await d.vfio.bind(d.machines.vm(s.id))

    def refuse(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(vmplane.pci, "_write", refuse)
    with pytest.raises(DriverError, match="Permission denied"):
        await d.delete_vm(s.id)
    assert vm_paths(d.state_dir, s.id).dir.exists()  # kept, so a retry knows what to give back
    monkeypatch.setattr(vmplane.pci, "_write", host.write)
    await d.delete_vm(s.id)
    assert host.driver_of(NIC) == "igb" and not vm_paths(d.state_dir, s.id).dir.exists()
