"""A fake sysfs tree shaped like the kernel's, and a small emulation of what the kernel does
when its PCI attributes are written, so `vmplane.pci` binds and unbinds devices for real
against it.

The tree, as on a real host (relative symlinks, as sysfs has them):

    devices/pci0000:00/<addr>/{vendor,device,class,numa_node,driver_override}
    devices/pci0000:00/<addr>/driver      -> ../../../bus/pci/drivers/<name>
    devices/pci0000:00/<addr>/iommu_group -> ../../../kernel/iommu_groups/<n>
    bus/pci/devices/<addr>                -> ../../../devices/pci0000:00/<addr>
    bus/pci/drivers/<name>/{bind,unbind}, bus/pci/drivers/<name>/<addr> -> the device
    bus/pci/drivers_probe
    kernel/iommu_groups/<n>/devices/<addr> -> the device

`FakeKernel.write` stands in for `vmplane.pci._write` (install it with `install(monkeypatch)`):
it refuses writes the kernel refuses (ENODEV for an unbind from a driver the device is not
with, EACCES for read-only attributes, ENOENT for missing files) and applies the others by
moving the symlinks: driver_override, drivers/<d>/unbind, drivers/<d>/bind, drivers_probe
(the override wins; else the device's own driver, if loaded; vfio-pci refuses bridges).
Binding a device of IOMMU group n to vfio-pci creates `<dev>/vfio/<n>`, as the kernel does.
"""

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VFIO = "vfio-pci"


@dataclass
class FakeDevice:
    address: str
    vendor: str
    device: str
    class_code: str
    native: str | None
    """the driver that takes the device at a probe without an override"""
    group: int | None


@dataclass
class FakeKernel:
    root: Path
    """the fake sysfs root (what vmplane calls sysfs_root)"""
    dev: Path
    """the fake /dev"""
    devices: dict[str, FakeDevice] = field(default_factory=dict)
    writes: list[tuple[str, str]] = field(default_factory=list)
    """(path relative to root, text) of every write, in order"""

    def __post_init__(self) -> None:
        (self.root / "bus" / "pci" / "devices").mkdir(parents=True, exist_ok=True)
        (self.root / "bus" / "pci" / "drivers").mkdir(parents=True, exist_ok=True)
        (self.root / "bus" / "pci" / "drivers_probe").touch()
        (self.root / "devices").mkdir(exist_ok=True)
        self.dev.mkdir(parents=True, exist_ok=True)

    # -- building the tree -----------------------------------------------------------------

    def load_driver(self, name: str) -> None:
        d = self.root / "bus" / "pci" / "drivers" / name
        d.mkdir(exist_ok=True)
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            (d / attr).touch()
        for dev in self.devices.values():  # a driver that loads takes its unbound devices
            if dev.native == name and self.driver_of(dev.address) is None and self.override_of(dev.address) is None:
                self._attach(dev.address, name)

    def add_device(
        self,
        address: str,
        vendor: str,
        device: str,
        class_code: str = "030000",
        *,
        driver: str | None = None,
        group: int | None = None,
        numa_node: int = -1,
    ) -> None:
        dev = FakeDevice(address, vendor, device, class_code, driver, group)
        self.devices[address] = dev
        real = self._real_dir(address)
        real.mkdir(parents=True)
        (real / "vendor").write_text(f"0x{vendor}\n")
        (real / "device").write_text(f"0x{device}\n")
        (real / "class").write_text(f"0x{class_code}\n")
        (real / "numa_node").write_text(f"{numa_node}\n")
        (real / "driver_override").write_text("(null)\n")
        os.symlink(f"../../../devices/{real.parent.name}/{address}", self.root / "bus" / "pci" / "devices" / address)
        if group is not None:
            members = self.root / "kernel" / "iommu_groups" / str(group) / "devices"
            members.mkdir(parents=True, exist_ok=True)
            os.symlink(f"../../../kernel/iommu_groups/{group}", real / "iommu_group")
            os.symlink(f"../../../../devices/{real.parent.name}/{address}", members / address)
        if driver is not None:
            self.load_driver(driver)
            if self.driver_of(address) is None:
                self._attach(address, driver)

    def _real_dir(self, address: str) -> Path:
        return self.root / "devices" / f"pci{address[:4]}:00" / address

    # -- reading the state (what a test checks) --------------------------------------------

    def driver_of(self, address: str) -> str | None:
        link = self._real_dir(address) / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def override_of(self, address: str) -> str | None:
        value = (self._real_dir(address) / "driver_override").read_text().strip()
        return None if value == "(null)" else value

    def group_node(self, group: int) -> Path:
        return self.dev / "vfio" / str(group)

    # -- the kernel's side of writes -------------------------------------------------------

    def write(self, path: Path, text: str) -> None:
        """What the kernel does on write(2) of `text` to `path`."""
        path = Path(path)
        rel = path.relative_to(self.root)
        if not path.exists():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        self.writes.append((str(rel), text))
        parts = rel.parts
        if parts[:3] == ("bus", "pci", "devices") and len(parts) == 5 and parts[4] == "driver_override":
            value = text.rstrip("\n")
            (self._real_dir(parts[3]) / "driver_override").write_text(f"{value or '(null)'}\n")
        elif parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5 and parts[4] == "unbind":
            address = text.strip()
            if address not in self.devices or self.driver_of(address) != parts[3]:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
            self._detach(address)
        elif parts[:3] == ("bus", "pci", "drivers") and len(parts) == 5 and parts[4] == "bind":
            address = text.strip()
            if address not in self.devices:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
            if self.driver_of(address) is not None:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
            if not self._accepts(parts[3], address):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(path))
            self._attach(address, parts[3])
        elif rel == Path("bus/pci/drivers_probe"):
            address = text.strip()
            if address not in self.devices:
                raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
            if self.driver_of(address) is None:
                wanted = self.override_of(address) or self.devices[address].native
                if wanted is not None and (self.root / "bus/pci/drivers" / wanted).is_dir() and self._accepts(wanted, address):
                    self._attach(address, wanted)
        else:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    def _accepts(self, driver: str, address: str) -> bool:
        dev = self.devices[address]
        override = self.override_of(address)
        if override is not None and override != driver:
            return False
        if driver == VFIO:  # vfio-pci takes normal (header type 0) devices only
            return not dev.class_code.startswith(("0604", "0609"))
        return override == driver or dev.native == driver

    def _attach(self, address: str, driver: str) -> None:
        real = self._real_dir(address)
        os.symlink(f"../../../bus/pci/drivers/{driver}", real / "driver")
        os.symlink(f"../../../../devices/{real.parent.name}/{address}", self.root / "bus/pci/drivers" / driver / address)
        group = self.devices[address].group
        if driver == VFIO and group is not None:
            (self.dev / "vfio").mkdir(exist_ok=True)
            (self.dev / "vfio" / "vfio").touch()
            self.group_node(group).touch(mode=0o600)

    def _detach(self, address: str) -> None:
        driver = self.driver_of(address)
        assert driver is not None
        (self._real_dir(address) / "driver").unlink()
        (self.root / "bus/pci/drivers" / driver / address).unlink()
        group = self.devices[address].group
        if driver == VFIO and group is not None:
            if not any(d.group == group and self.driver_of(d.address) == VFIO for d in self.devices.values()):
                self.group_node(group).unlink(missing_ok=True)


def standard_host(tmp: Path, *, iommu: bool = True, vfio_loaded: bool = True) -> FakeKernel:
    """A small workstation: a GPU with its audio function behind a root port (one IOMMU group,
    no ACS), a NIC and an NVMe drive in groups of their own.

        0000:00:00.0  8086:1237 host bridge      (no driver)     group 0
        0000:00:01.0  8086:1901 PCI bridge       pcieport        group 1
        0000:01:00.0  10de:2204 VGA              nvidia          group 1  NUMA 0
        0000:01:00.1  10de:1aef audio            snd_hda_intel   group 1  NUMA 0
        0000:02:00.0  8086:1521 Ethernet         igb             group 2  NUMA 1
        0000:03:00.0  144d:a808 NVMe             nvme            group 3
    """
    k = FakeKernel(root=tmp / "sys", dev=tmp / "dev")
    g: Any = (lambda n: n) if iommu else (lambda n: None)
    k.add_device("0000:00:00.0", "8086", "1237", "060000", group=g(0))
    k.add_device("0000:00:01.0", "8086", "1901", "060400", driver="pcieport", group=g(1))
    k.add_device("0000:01:00.0", "10de", "2204", "030000", driver="nvidia", group=g(1), numa_node=0)
    k.add_device("0000:01:00.1", "10de", "1aef", "040300", driver="snd_hda_intel", group=g(1), numa_node=0)
    k.add_device("0000:02:00.0", "8086", "1521", "020000", driver="igb", group=g(2), numa_node=1)
    k.add_device("0000:03:00.0", "144d", "a808", "010802", driver="nvme", group=g(3))
    if vfio_loaded:
        k.load_driver(VFIO)
    return k


def install(kernel: FakeKernel, monkeypatch: Any) -> FakeKernel:
    """Route vmplane.pci's sysfs writes through `kernel`'s emulation."""
    import vmplane.pci

    monkeypatch.setattr(vmplane.pci, "_write", kernel.write)
    return kernel
