"""vmplane.pci against a fake sysfs tree with the kernel's write semantics (tests/support_pci)."""

import resource
from pathlib import Path

import pytest

from vmplane import pci
from vmplane.errors import DriverError
from vmplane.pci import Allowlist, PciDevice

from ..support_pci import FakeKernel, install, standard_host

GPU, AUDIO, BRIDGE, NIC, NVME = "0000:01:00.0", "0000:01:00.1", "0000:00:01.0", "0000:02:00.0", "0000:03:00.0"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    return install(standard_host(tmp_path), monkeypatch)


# -- discovery -------------------------------------------------------------------------------


def test_discover_reads_every_field(host: FakeKernel) -> None:
    devices = {d.address: d for d in pci.discover(host.root)}
    assert sorted(devices) == ["0000:00:00.0", BRIDGE, GPU, AUDIO, NIC, NVME]
    assert devices[GPU] == PciDevice(GPU, "10de", "2204", "030000", "nvidia", 1, 0)
    assert devices[GPU].model == "10de:2204"
    assert devices[NIC] == PciDevice(NIC, "8086", "1521", "020000", "igb", 2, 1)
    assert devices["0000:00:00.0"].driver is None
    assert devices[NVME].numa_node is None  # numa_node -1: unknown
    assert PciDevice.from_wire(devices[GPU].to_wire()) == devices[GPU]


def test_discover_without_iommu_and_on_an_empty_tree(tmp_path: Path) -> None:
    k = standard_host(tmp_path / "a", iommu=False)
    assert all(d.iommu_group is None for d in pci.discover(k.root))
    assert not pci.iommu_available(k.root)
    assert pci.iommu_available(standard_host(tmp_path / "b").root)
    assert pci.discover(tmp_path / "nothing") == []
    assert not pci.iommu_available(tmp_path / "nothing")


def test_discover_skips_unreadable_devices_and_foreign_names(host: FakeKernel) -> None:
    (host.root / "devices/pci0000:00" / NVME / "vendor").write_text("garbage\n")
    (host.root / "bus/pci/devices/not-an-address").mkdir()
    assert NVME not in {d.address for d in pci.discover(host.root)}
    with pytest.raises(DriverError, match="cannot read PCI device"):
        pci.read_device(host.root, NVME)


def test_discover_on_this_host_reads_what_it_has() -> None:
    """Read-only: whatever this machine has, discovery parses it without errors."""
    for d in pci.discover(Path("/sys")):
        assert pci.ADDRESS_RE.fullmatch(d.address) and len(d.vendor) == 4 and len(d.class_code) == 6


# -- the allowlist -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "patterns, admitted",
    [
        ([], []),
        (["10de:*"], [GPU, AUDIO]),
        (["10DE:2204"], [GPU]),
        (["*:1521"], [NIC]),
        (["0000:01:00.*"], [GPU, AUDIO]),
        (["0000:01:*"], [GPU, AUDIO]),
        (["0000:0?:00.0"], ["0000:00:00.0", GPU, NIC, NVME]),
        (["8086:1521", "0000:03:00.0"], [NIC, NVME]),
        ([" 144d:a808 "], [NVME]),
    ],
)
def test_allowlist_matching(host: FakeKernel, patterns: list[str], admitted: list[str]) -> None:
    allow = Allowlist(patterns)
    assert [d.address for d in allow.filter(pci.discover(host.root))] == admitted
    assert bool(allow) == bool(patterns)


@pytest.mark.parametrize(
    "bad", ["", "  ", "10de", "10de:22", "10de:2204:1", "nvidia", "0000:01:00", "0000:01:00.8", "01:00.0", "0000:1:00.0",
            "../../x", "0000:01:00.0/../..", "10de:*;rm", "0000:zz:00.0", "[10]de:*"],
)  # fmt: skip
def test_allowlist_refuses_bad_patterns_by_name(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        Allowlist(["10de:*", bad])
    assert repr(bad) in str(e.value) or "empty" in str(e.value)


def test_offered_devices(host: FakeKernel) -> None:
    # the GPU alone is not offered: its audio function shares its group and is not admitted
    assert pci.offered(host.root, Allowlist(["10de:2204"])) == []
    # bridges are never offered, even when admitted; the root port in the group is no obstacle
    offered = pci.offered(host.root, Allowlist(["10de:*", "8086:*"]))
    assert [d.address for d in offered] == [GPU, AUDIO, NIC]
    assert pci.offered(host.root, Allowlist()) == []


def test_nothing_is_offered_without_an_iommu(tmp_path: Path) -> None:
    k = standard_host(tmp_path, iommu=False)
    assert pci.offered(k.root, Allowlist(["*:*"])) == []


# -- IOMMU groups ----------------------------------------------------------------------------


def test_group_devices_lists_the_whole_group(host: FakeKernel) -> None:
    assert [d.address for d in pci.group_devices(host.root, GPU)] == [BRIDGE, GPU, AUDIO]
    assert [d.address for d in pci.group_devices(host.root, NIC)] == [NIC]


def test_group_devices_without_iommu(tmp_path: Path) -> None:
    k = standard_host(tmp_path, iommu=False)
    with pytest.raises(DriverError, match="no IOMMU group.*intel_iommu=on"):
        pci.group_devices(k.root, GPU)


def test_group_closure_adds_group_mates_but_not_bridges(host: FakeKernel) -> None:
    devices = pci.discover(host.root)
    assert pci.group_closure(devices, [GPU]) == [GPU, AUDIO]
    assert pci.group_closure(devices, [NIC]) == [NIC]


def test_plan_passthrough_takes_whole_groups(host: FakeKernel) -> None:
    allow = Allowlist(["10de:*", "8086:1521"])
    assert [d.address for d in pci.plan_passthrough(host.root, [GPU, AUDIO, NIC], allow)] == [GPU, AUDIO, NIC]
    with pytest.raises(DriverError, match=r"shares IOMMU group 1 with 0000:01:00.1.*all of 0000:01:00.0, 0000:01:00.1"):
        pci.plan_passthrough(host.root, [GPU], allow)
    with pytest.raises(DriverError, match="not in this node's PCI allowlist"):
        pci.plan_passthrough(host.root, [NVME], allow)
    for bridge in (BRIDGE, "0000:00:00.0"):  # a root port, a host bridge
        with pytest.raises(DriverError, match="is a bridge"):
            pci.plan_passthrough(host.root, [bridge], Allowlist(["8086:*"]))
    with pytest.raises(DriverError, match="more than once"):
        pci.plan_passthrough(host.root, [NIC, NIC], allow)
    with pytest.raises(DriverError, match="no PCI device 0000:09:00.0"):
        pci.plan_passthrough(host.root, ["0000:09:00.0"], allow)


# -- binding ---------------------------------------------------------------------------------


def test_bind_writes_override_unbinds_and_probes(host: FakeKernel) -> None:
    assert pci.bind_vfio(host.root, NIC) is True
    assert host.writes == [
        (f"bus/pci/devices/{NIC}/driver_override", "vfio-pci"),
        ("bus/pci/drivers/igb/unbind", NIC),
        ("bus/pci/drivers_probe", NIC),
    ]
    assert host.driver_of(NIC) == "vfio-pci" and host.override_of(NIC) == "vfio-pci"
    assert pci.read_device(host.root, NIC).driver == "vfio-pci"
    assert (host.root / "bus/pci/drivers/vfio-pci" / NIC).is_symlink()
    assert pci.check_vfio_group(2, host.dev) == host.dev / "vfio" / "2"


def test_bind_is_idempotent(host: FakeKernel) -> None:
    pci.bind_vfio(host.root, NIC)
    host.writes.clear()
    assert pci.bind_vfio(host.root, NIC) is False
    assert host.writes == []


def test_unbind_gives_the_device_back(host: FakeKernel) -> None:
    pci.bind_vfio(host.root, NIC)
    host.writes.clear()
    assert pci.unbind_vfio(host.root, NIC) is True
    assert host.writes == [
        (f"bus/pci/devices/{NIC}/driver_override", "\n"),
        ("bus/pci/drivers/vfio-pci/unbind", NIC),
        ("bus/pci/drivers_probe", NIC),
    ]
    assert host.driver_of(NIC) == "igb" and host.override_of(NIC) is None
    assert not host.group_node(2).exists()
    host.writes.clear()
    assert pci.unbind_vfio(host.root, NIC) is False  # nothing left to undo
    assert host.writes == []
    assert pci.unbind_vfio(host.root, "0000:42:00.0") is False  # a device that is gone


def test_a_device_without_a_driver_is_bound_and_stays_driverless_after(host: FakeKernel) -> None:
    host.write(host.root / "bus/pci/drivers/nvme/unbind", NVME)
    host.devices[NVME].native = None  # its driver will not take it back
    host.writes.clear()
    assert pci.bind_vfio(host.root, NVME) is True
    assert [w[0] for w in host.writes] == [f"bus/pci/devices/{NVME}/driver_override", "bus/pci/drivers_probe"]
    pci.unbind_vfio(host.root, NVME)
    assert host.driver_of(NVME) is None


def test_a_whole_group_binds_and_its_vfio_node_appears(host: FakeKernel) -> None:
    for d in pci.plan_passthrough(host.root, [GPU, AUDIO], Allowlist(["10de:*"])):
        pci.bind_vfio(host.root, d.address)
    assert host.driver_of(GPU) == host.driver_of(AUDIO) == "vfio-pci"
    assert host.driver_of(BRIDGE) == "pcieport"  # bridges keep their driver
    assert pci.check_vfio_group(1, host.dev).exists()
    pci.unbind_vfio(host.root, GPU)
    assert host.group_node(1).exists()  # the audio function still holds the group
    pci.unbind_vfio(host.root, AUDIO)
    assert not host.group_node(1).exists()
    assert (host.driver_of(GPU), host.driver_of(AUDIO)) == ("nvidia", "snd_hda_intel")


def test_bind_refuses_bridges_and_needs_vfio_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    k = install(standard_host(tmp_path, vfio_loaded=False), monkeypatch)
    with pytest.raises(DriverError, match="modprobe vfio-pci"):
        pci.bind_vfio(k.root, NIC)
    with pytest.raises(DriverError, match="bridge"):
        pci.bind_vfio(k.root, BRIDGE)
    assert k.writes == [] and k.driver_of(NIC) == "igb"


def test_a_failed_bind_leaves_the_device_with_its_driver(host: FakeKernel) -> None:
    """vfio-pci declines the device at the probe: the override is cleared, igb takes it back."""
    original = host._accepts
    host._accepts = lambda driver, address: driver != "vfio-pci" and original(driver, address)  # type: ignore[method-assign]
    with pytest.raises(DriverError, match="vfio-pci did not take PCI device 0000:02:00.0.*no driver"):
        pci.bind_vfio(host.root, NIC)
    assert host.driver_of(NIC) == "igb" and host.override_of(NIC) is None


def test_a_refused_write_is_a_clear_error_and_is_undone(host: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse_unbind(path: Path, text: str) -> None:
        if path.name == "unbind" and path.parent.name == "igb":
            raise PermissionError(13, "Permission denied", str(path))
        host.write(path, text)

    monkeypatch.setattr(pci, "_write", refuse_unbind)
    with pytest.raises(DriverError, match=r"igb/unbind failed: Permission denied \(binding devices needs root\)"):
        pci.bind_vfio(host.root, NIC)
    assert host.driver_of(NIC) == "igb" and host.override_of(NIC) is None


def test_real_writes_never_create_files(tmp_path: Path) -> None:
    """The production writer opens without O_CREAT: a wrong path fails, it does not appear."""
    with pytest.raises(FileNotFoundError):
        pci._write(tmp_path / "driver_override", "vfio-pci")
    assert not (tmp_path / "driver_override").exists()
    (tmp_path / "attr").write_text("(null)\n")
    pci._write(tmp_path / "attr", "x")
    assert (tmp_path / "attr").read_text().startswith("x")


@pytest.mark.parametrize(
    "bad", ["../../x", "0000:01:00.0/../../../etc", "0000:01:00.0\n", "0000:01:00.8", "0000:01:20.0", "01:00.0",
            "", ".", "0000:01:00.0 ", 5, None, "0000:01:00.0/driver_override"],
)  # fmt: skip
def test_bad_addresses_are_refused_before_any_path(host: FakeKernel, bad: object) -> None:
    for call in (pci.bind_vfio, pci.unbind_vfio, pci.read_device, pci.group_devices):
        with pytest.raises(DriverError, match="is not a PCI address"):
            call(host.root, bad)  # type: ignore[arg-type]
    with pytest.raises(DriverError, match="is not a PCI address"):
        pci.plan_passthrough(host.root, [bad], Allowlist(["*:*"]))  # type: ignore[list-item]
    assert host.writes == []


def test_upper_case_addresses_are_normalised(host: FakeKernel) -> None:
    assert pci.check_address("0000:0A:1F.7") == "0000:0a:1f.7"


def test_vfio_group_path() -> None:
    assert pci.vfio_group_path(16) == Path("/dev/vfio/16")
    assert pci.vfio_group_path(3, Path("/tmp/dev")) == Path("/tmp/dev/vfio/3")
    for bad in (-1, True, "3", "../x"):
        with pytest.raises(DriverError):
            pci.vfio_group_path(bad)  # type: ignore[arg-type]


def test_check_vfio_group_names_the_missing_node(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match=r"vfio/7 is missing.*IOMMU"):
        pci.check_vfio_group(7, tmp_path)


def test_check_memlock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pci, "_has_cap_ipc_lock", lambda: False)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (64 << 20, 64 << 20))
    with pytest.raises(DriverError, match="locked-memory limit is 64 MiB.*LimitMEMLOCK"):
        pci.check_memlock(1 << 30)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    pci.check_memlock(1 << 40)
    monkeypatch.setattr(pci, "_has_cap_ipc_lock", lambda: True)
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (0, 0))
    pci.check_memlock(1 << 40)



def test_a_device_grouped_with_a_host_bridge_is_not_offered(tmp_path: Path) -> None:
    """A host bridge (class 0600) is no PCI-to-PCI bridge: VFIO would need it too, and it is
    never passed through, so its group-mates cannot be either."""
    k = FakeKernel(root=tmp_path / "sys", dev=tmp_path / "dev")
    k.add_device("0000:00:00.0", "8086", "1237", "060000", group=0)
    k.add_device("0000:00:02.0", "8086", "46a6", "030000", driver="i915", group=0)
    assert pci.offered(k.root, Allowlist(["8086:*"])) == []
