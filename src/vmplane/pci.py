"""PCI passthrough (VFIO): host device discovery from sysfs, the allowlist, and binding
devices to / from `vfio-pci`. The sysfs root is a parameter so tests run on a fake tree.

What the kernel offers, and what this module relies on (Documentation/ABI/testing/sysfs-bus-pci):

- `<sysfs>/bus/pci/devices/<address>/` with `vendor`, `device`, `class` ("0x10de\\n"),
  `numa_node` ("-1\\n" when unknown), a `driver` symlink into `bus/pci/drivers/<name>` when a
  driver holds the device, and an `iommu_group` symlink into `kernel/iommu_groups/<n>` when an
  IOMMU is on.
- `driver_override`: the only driver allowed to take the device at the next probe ("(null)" when
  unset; writing "\\n" clears it). `bus/pci/drivers/<name>/unbind` takes an address and detaches
  the device from that driver; `bus/pci/drivers_probe` takes an address and attaches the
  device to the first driver that will have it (the override if set).
- VFIO hands out whole IOMMU groups: a group (`/dev/vfio/<n>`) is usable only when every member
  is bound to vfio-pci (or to no driver), except PCI bridges, which may keep their driver.
  So a VM takes every non-bridge device of each group it uses, or none.

Every address that reaches a path is checked against a strict pattern first. Blocking file
IO: callers on an event loop run these functions with `asyncio.to_thread`. Failures raise
`DriverError` saying what failed and how to fix it.
"""

import errno
import fnmatch
import logging
import os
import re
import resource
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DriverError

log = logging.getLogger("vmplane.pci")

VFIO_DRIVER = "vfio-pci"
ADDRESS_RE = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")
"""domain:bus:device.function as sysfs names devices (lower-case hex)."""
_DRIVER_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
_HEX_FILE_RE = re.compile(r"0x([0-9a-fA-F]+)")
BRIDGE_CLASSES = ("0604", "0609")
"""PCI-to-PCI bridges (normal and subtractive decode): VFIO lets them keep their driver, and
vfio-pci does not take them."""
MEMLOCK_MARGIN = 1 << 30
"""VFIO pins all guest RAM; QEMU locks this much more (ROMs, rings; libvirt's figure)."""
CAP_IPC_LOCK = 14


@dataclass(frozen=True, slots=True)
class PciDevice:
    address: str
    """domain:bus:device.function, e.g. 0000:01:00.0"""
    vendor: str
    """4 lower-case hex digits, e.g. 10de"""
    device: str
    class_code: str
    """6 hex digits, e.g. 030000"""
    driver: str | None
    iommu_group: int | None
    numa_node: int | None

    @property
    def model(self) -> str:
        """vendor:device, e.g. 10de:2204"""
        return f"{self.vendor}:{self.device}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "address": self.address, "vendor": self.vendor, "device": self.device, "model": self.model,
            "classCode": self.class_code, "driver": self.driver, "iommuGroup": self.iommu_group, "numaNode": self.numa_node,
        }  # fmt: skip

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "PciDevice":
        return cls(d["address"], d["vendor"], d["device"], d["classCode"], d.get("driver"), d.get("iommuGroup"), d.get("numaNode"))


def is_bridge(device: PciDevice) -> bool:
    """A PCI-to-PCI bridge: it may stay with its driver in a group given to VFIO."""
    return device.class_code[:4] in BRIDGE_CLASSES


def never_offered(device: PciDevice) -> bool:
    """Bridges of any kind (class 06: host, ISA/LPC, PCI bridges) are the host's plumbing and
    are never passed through, whatever the allowlist says."""
    return device.class_code[:2] == "06"


# -- addresses and paths -------------------------------------------------------------------


def check_address(address: object) -> str:
    """`address` as sysfs spells it (lower case), or DriverError: it becomes part of paths."""
    if not isinstance(address, str) or not ADDRESS_RE.fullmatch(address.lower()):
        raise DriverError(f"{address!r} is not a PCI address (domain:bus:device.function, e.g. 0000:01:00.0)")
    return address.lower()


def device_dir(sysfs_root: Path, address: str) -> Path:
    return Path(sysfs_root) / "bus" / "pci" / "devices" / check_address(address)


def driver_dir(sysfs_root: Path, driver: str) -> Path:
    if not _DRIVER_NAME_RE.fullmatch(driver):
        raise DriverError(f"{driver!r} is not a driver name")
    return Path(sysfs_root) / "bus" / "pci" / "drivers" / driver


def vfio_group_path(group: int, dev_root: Path = Path("/dev")) -> Path:
    """The VFIO character device of IOMMU group `group` (QEMU opens it)."""
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise DriverError(f"{group!r} is not an IOMMU group number")
    return Path(dev_root) / "vfio" / str(group)


def iommu_available(sysfs_root: Path) -> bool:
    """True when the kernel runs with an IOMMU (it lists groups in kernel/iommu_groups)."""
    try:
        return any(True for _ in (Path(sysfs_root) / "kernel" / "iommu_groups").iterdir())
    except OSError:
        return False


# -- discovery -----------------------------------------------------------------------------


def discover(sysfs_root: Path) -> list[PciDevice]:
    """Every PCI device of the host, by address. Devices whose attributes cannot be read are
    skipped (logged), never guessed."""
    base = Path(sysfs_root) / "bus" / "pci" / "devices"
    try:
        names = sorted(p.name for p in base.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DriverError(f"cannot list PCI devices in {base}: {exc.strerror}") from exc
    out: list[PciDevice] = []
    for name in names:
        if not ADDRESS_RE.fullmatch(name):
            log.warning("ignoring %s/%s: not a PCI address", base, name)
            continue
        try:
            out.append(_read_device(base / name, name))
        except (OSError, ValueError) as exc:
            log.warning("ignoring PCI device %s: %s", name, exc)
    return out


def read_device(sysfs_root: Path, address: str) -> PciDevice:
    """One device, or DriverError if the host has no such device."""
    path = device_dir(sysfs_root, address)
    if not path.is_dir():
        raise DriverError(f"this host has no PCI device {address}")
    try:
        return _read_device(path, path.name)
    except (OSError, ValueError) as exc:
        raise DriverError(f"cannot read PCI device {address}: {exc}") from exc


def _read_device(path: Path, address: str) -> PciDevice:
    return PciDevice(
        address=address,
        vendor=_hex_attr(path / "vendor", 4),
        device=_hex_attr(path / "device", 4),
        class_code=_hex_attr(path / "class", 6),
        driver=_driver_of(path),
        iommu_group=_group_of(path),
        numa_node=_numa_node(path),
    )


def _hex_attr(path: Path, digits: int) -> str:
    text = path.read_text().strip()
    m = _HEX_FILE_RE.fullmatch(text)
    if m is None or len(m.group(1)) > digits:
        raise ValueError(f"{path.name} is {text!r}, not a {digits}-digit hex number")
    return m.group(1).lower().rjust(digits, "0")


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except FileNotFoundError:
        return None


def _driver_of(device_path: Path) -> str | None:
    name = _link_name(device_path / "driver")
    if name is not None and not _DRIVER_NAME_RE.fullmatch(name):
        raise ValueError(f"driver link names {name!r}")
    return name


def _group_of(device_path: Path) -> int | None:
    name = _link_name(device_path / "iommu_group")
    if name is None:
        return None
    if not name.isdigit():
        raise ValueError(f"iommu_group link names {name!r}")
    return int(name)


def _numa_node(device_path: Path) -> int | None:
    try:
        value = int(device_path.joinpath("numa_node").read_text().strip())
    except FileNotFoundError:  # kernels without NUMA support have no such file
        return None
    return None if value < 0 else value


def group_devices(sysfs_root: Path, address: str) -> list[PciDevice]:
    """Every device in the IOMMU group of `address` (itself included), by address."""
    device = read_device(sysfs_root, address)
    if device.iommu_group is None:
        raise DriverError(
            f"PCI device {device.address} is in no IOMMU group: the IOMMU is off "
            "(enable VT-d/AMD-Vi in the firmware and boot with intel_iommu=on or amd_iommu=on)"
        )
    members = Path(sysfs_root) / "kernel" / "iommu_groups" / str(device.iommu_group) / "devices"
    try:
        names = sorted(p.name for p in members.iterdir())
    except OSError as exc:
        raise DriverError(f"cannot list IOMMU group {device.iommu_group}: {exc.strerror}") from exc
    return [device if n == device.address else read_device(sysfs_root, n) for n in names]


# -- the allowlist -------------------------------------------------------------------------


def _field_ok(value: str, length: int, digits: str) -> bool:
    """One field of a pattern: exact hex of `length` digits, `?` for one digit, `*` for any."""
    if not re.fullmatch(f"[{digits}?*]+", value):
        return False
    return "*" in value or len(value) == length


class Allowlist:
    """Which host devices may be offered for passthrough. Patterns are `vendor:device` with
    `*` wildcards (`10de:*`, `8086:1521`) or device addresses with globs (`0000:01:00.*`,
    `0000:41:*`). Empty: nothing is offered."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns: tuple[str, ...] = tuple(self._parse(p) for p in patterns)

    @staticmethod
    def _parse(pattern: object) -> str:
        if not isinstance(pattern, str):
            raise ValueError(f"PCI allowlist pattern {pattern!r} is not a string")
        p = pattern.strip().lower()
        if not p:
            raise ValueError("PCI allowlist pattern is empty")
        parts = p.split(":")
        if len(parts) == 2 and "." not in p:  # vendor:device
            if all(_field_ok(x, 4, "0-9a-f") for x in parts):
                return "id:" + p
            raise ValueError(f"PCI allowlist pattern {pattern!r}: vendor and device are 4 hex digits or * (e.g. 10de:*)")
        if len(parts) == 3:  # domain:bus:device.function
            domain, bus, rest = parts
            slot, dot, function = rest.partition(".")
            ok = _field_ok(domain, 4, "0-9a-f") and _field_ok(bus, 2, "0-9a-f")
            if dot:
                ok = ok and _field_ok(slot, 2, "0-9a-f") and _field_ok(function, 1, "0-7")
            else:
                ok = ok and rest == "*"
            if ok:
                return "addr:" + p
            raise ValueError(
                f"PCI allowlist pattern {pattern!r} is not an address glob like 0000:01:00.0, 0000:01:00.* or 0000:01:*"
            )
        raise ValueError(
            f"PCI allowlist pattern {pattern!r} is neither vendor:device (10de:*) nor an address (0000:01:00.*)"
        )

    def admits(self, device: PciDevice) -> bool:
        for rule in self.patterns:
            kind, _, pattern = rule.partition(":")
            subject = device.model if kind == "id" else device.address
            if fnmatch.fnmatchcase(subject, pattern):
                return True
        return False

    def filter(self, devices: Iterable[PciDevice]) -> list[PciDevice]:
        return [d for d in devices if self.admits(d)]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allowlist) and other.patterns == self.patterns

    def __hash__(self) -> int:
        return hash(self.patterns)

    def __repr__(self) -> str:
        return f"Allowlist({[r.partition(':')[2] for r in self.patterns]!r})"


def offered(sysfs_root: Path, allowlist: Allowlist) -> list[PciDevice]:
    """The devices this host offers for passthrough: admitted by the allowlist, not bridges,
    in an IOMMU group, and whose group has no other non-bridge device the allowlist keeps
    from being taken with them (such a device could never be passed through)."""
    if not allowlist:
        return []
    devices = discover(sysfs_root)
    groups: dict[int, list[PciDevice]] = {}
    for d in devices:
        if d.iommu_group is not None:
            groups.setdefault(d.iommu_group, []).append(d)
    out: list[PciDevice] = []
    for d in allowlist.filter(devices):
        if never_offered(d) or d.iommu_group is None:
            continue
        blockers = [
            m.address for m in groups[d.iommu_group]
            if not is_bridge(m) and (never_offered(m) or not allowlist.admits(m))
        ]  # fmt: skip
        if blockers:
            log.warning(
                "PCI device %s is not offered: IOMMU group %d also holds %s, which cannot be passed through with it",
                d.address, d.iommu_group, ", ".join(blockers),
            )  # fmt: skip
            continue
        out.append(d)
    return out


def group_closure(devices: Sequence[PciDevice], addresses: Iterable[str]) -> list[str]:
    """`addresses` plus every other non-bridge device of `devices` sharing an IOMMU group
    with one of them: what a VM must be given together (no IO; for placement)."""
    wanted = {check_address(a) for a in addresses}
    groups = {d.iommu_group for d in devices if d.address in wanted and d.iommu_group is not None}
    wanted |= {d.address for d in devices if d.iommu_group in groups and not is_bridge(d)}
    return sorted(wanted)


def plan_passthrough(sysfs_root: Path, addresses: Sequence[str], allowlist: Allowlist) -> list[PciDevice]:
    """Check that a VM may be given `addresses` on this host: each exists, is admitted by the
    allowlist, is not a bridge, is in an IOMMU group, and every other non-bridge device of
    its group is given too. Returns the devices in the order asked. DriverError otherwise."""
    wanted = [check_address(a) for a in addresses]
    dupes = sorted({a for a in wanted if wanted.count(a) > 1})
    if dupes:
        raise DriverError(f"PCI device {', '.join(dupes)} is asked for more than once")
    out: list[PciDevice] = []
    for address in wanted:
        device = read_device(sysfs_root, address)
        if not allowlist.admits(device):
            raise DriverError(f"PCI device {address} ({device.model}) is not in this node's PCI allowlist")
        if never_offered(device):
            raise DriverError(f"PCI device {address} is a bridge (class {device.class_code}); bridges are not passed through")
        members = group_devices(sysfs_root, address)
        missing = [m.address for m in members if not is_bridge(m) and m.address not in wanted]
        if missing:
            together = ", ".join(sorted({address, *missing}))
            raise DriverError(
                f"PCI device {address} shares IOMMU group {device.iommu_group} with {', '.join(missing)}: "
                f"VFIO passes whole groups, so give the VM all of {together} or none"
            )
        out.append(device)
    return out


# -- binding -------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    """One write(2) of `text` to a sysfs attribute (never creates files). Tests replace this
    with a kernel emulation."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _sysfs_write(path: Path, text: str, what: str) -> None:
    try:
        _write(path, text)
    except OSError as exc:
        hint = " (binding devices needs root)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise DriverError(f"{what}: writing {text.strip()!r} to {path} failed: {exc.strerror}{hint}") from exc


def _override_of(device_path: Path) -> str | None:
    try:
        value = device_path.joinpath("driver_override").read_text().strip()
    except FileNotFoundError:
        raise DriverError(f"{device_path.name} has no driver_override (the kernel is older than 3.16)") from None
    return None if value in ("", "(null)") else value


def bind_vfio(sysfs_root: Path, address: str) -> bool:
    """Give `address` to vfio-pci: driver_override, unbind from its driver, drivers_probe.
    Returns False if it already was with vfio-pci (then nothing is written), True if it was
    moved. If vfio-pci does not take it, the device is given back to its driver and
    DriverError says so."""
    root = Path(sysfs_root)
    path = device_dir(root, address)
    address = path.name
    device = read_device(root, address)
    if device.driver == VFIO_DRIVER:
        return False
    if is_bridge(device):
        raise DriverError(f"PCI device {address} is a PCI bridge; vfio-pci does not take bridges")
    if not driver_dir(root, VFIO_DRIVER).is_dir():
        raise DriverError(f"the {VFIO_DRIVER} driver is not loaded on this host (modprobe {VFIO_DRIVER})")
    what = f"binding {address} to {VFIO_DRIVER}"
    _override_of(path)  # refuses kernels without driver_override before anything changes
    try:
        _sysfs_write(path / "driver_override", VFIO_DRIVER, what)
        if device.driver is not None:
            _sysfs_write(driver_dir(root, device.driver) / "unbind", address, what)
        _sysfs_write(root / "bus" / "pci" / "drivers_probe", address, what)
        now = _driver_of(path)
        if now != VFIO_DRIVER:
            raise DriverError(f"{VFIO_DRIVER} did not take PCI device {address} (it is with {now or 'no driver'}; dmesg says why)")
    except (DriverError, OSError, ValueError) as exc:
        try:  # leave the device as it was: no override, with its own driver
            unbind_vfio(root, address)
        except (DriverError, OSError, ValueError) as undo:
            log.error("giving %s back to its driver failed: %s", address, undo)
        if isinstance(exc, DriverError):
            raise
        raise DriverError(f"{what}: {exc}") from exc
    log.info("PCI device %s (%s) moved from %s to %s", address, device.model, device.driver or "no driver", VFIO_DRIVER)
    return True


def unbind_vfio(sysfs_root: Path, address: str) -> bool:
    """Give `address` back to the host: clear driver_override, unbind from vfio-pci,
    drivers_probe (its own driver takes it, if one is loaded). Returns False if there was
    nothing to undo (not with vfio-pci, no override, or no such device any more)."""
    root = Path(sysfs_root)
    path = device_dir(root, address)
    address = path.name
    if not path.is_dir():
        return False
    override = _override_of(path)
    driver = _driver_of(path)
    if override != VFIO_DRIVER and driver != VFIO_DRIVER:
        return False
    what = f"giving {address} back from {VFIO_DRIVER}"
    if override is not None:
        _sysfs_write(path / "driver_override", "\n", what)
    if driver == VFIO_DRIVER:
        _sysfs_write(driver_dir(root, VFIO_DRIVER) / "unbind", address, what)
    _sysfs_write(root / "bus" / "pci" / "drivers_probe", address, what)
    log.info("PCI device %s given back from %s to %s", address, VFIO_DRIVER, _driver_of(path) or "no driver")
    return True


# -- what QEMU needs besides the binding -------------------------------------------------


def check_vfio_group(group: int, dev_root: Path = Path("/dev")) -> Path:
    """The group's /dev/vfio node, which must exist and be openable read-write by us (QEMU
    runs as our user); DriverError naming the fix otherwise."""
    path = vfio_group_path(group, dev_root)
    if not path.exists():
        raise DriverError(
            f"{path} is missing although the group's devices are bound to {VFIO_DRIVER}: "
            "is the IOMMU on and the vfio module loaded?"
        )
    if not os.access(path, os.R_OK | os.W_OK):
        raise DriverError(f"{path} is not readable and writable by uid {os.geteuid()} (a udev rule or root fixes that)")
    return path


def check_memlock(ram_bytes: int) -> None:
    """VFIO pins all of the guest's RAM, counted against QEMU's RLIMIT_MEMLOCK (which it
    inherits from us) unless it has CAP_IPC_LOCK. DriverError if the limit is too low."""
    if _has_cap_ipc_lock():
        return
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    need = ram_bytes + MEMLOCK_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        raise DriverError(
            f"PCI passthrough pins all guest RAM: the locked-memory limit is {soft >> 20} MiB, the VM needs "
            f"{need >> 20} MiB (raise it: LimitMEMLOCK=infinity in the service unit, or ulimit -l)"
        )


def _has_cap_ipc_lock() -> bool:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False
