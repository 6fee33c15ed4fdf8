"""Where a QEMU VM keeps its files, and the configuration stored in its `vm.json`.

Every VM lives in `state_dir/vms/<vm_id>/`; nothing of a VM exists outside that directory,
so deleting it removes the VM completely.
"""

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...domain import BootSetup, Resources, VmSpec
from ...domain.network import Firewall, Nic
from ...errors import DriverError, InvalidRequest
from ...ids import looks_like_id
from ...pci import check_address

CONFIG_VERSION = 1
GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class VmPaths:
    """The files of one VM. Socket and log names are relative to `dir` on QEMU's command line
    (QEMU runs with `dir` as its working directory; unix socket paths are limited to 107 bytes)."""

    dir: Path

    @property
    def config(self) -> Path:
        return self.dir / "vm.json"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.iso"

    @property
    def qmp(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def qga(self) -> Path:
        return self.dir / "qga.sock"

    @property
    def serial(self) -> Path:
        return self.dir / "serial.sock"

    @property
    def vnc(self) -> Path:
        """QEMU's VNC server (the graphical console): a unix socket only vmplane reaches (the
        directory is 0700 and the socket is made under vmplane's umask 0o077); no TCP port."""
        return self.dir / "vnc.sock"

    @property
    def screendump(self) -> Path:
        """Where a screenshot is written (through a descriptor handed to QEMU), read and deleted."""
        return self.dir / "screen.png"

    @property
    def serial_log(self) -> Path:
        return self.dir / "serial.log"

    @property
    def nvram(self) -> Path:
        """a UEFI VM's variable store (a copy of OVMF's template, the VM's own)"""
        return self.dir / "nvram.fd"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def stderr_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def run(self) -> Path:
        """Written by the driver once QEMU is started; removed when it is stopped on purpose.
        A VM with this file but no live process has crashed."""
        return self.dir / "run.json"

    @property
    def stop_marker(self) -> Path:
        """Written before the driver stops QEMU (quit, powerdown, kill): an exit is expected."""
        return self.dir / "stopping"

    @property
    def pci_bound(self) -> Path:
        """The host PCI devices the driver moved to vfio-pci for this VM (given back at delete)."""
        return self.dir / "pci.json"

    @property
    def sockets(self) -> tuple[Path, ...]:
        return (self.qmp, self.qga, self.serial, self.vnc)

    @property
    def runtime_files(self) -> tuple[Path, ...]:
        """What a stopped VM must not have."""
        return (*self.sockets, self.pidfile, self.run, self.stop_marker, self.screendump)


def vm_paths(state_dir: Path, vm_id: str) -> VmPaths:
    """The paths of `vm_id`; refuses ids that are not vmplane ids (they become paths)."""
    if not looks_like_id(vm_id):
        raise DriverError(f"{vm_id!r} is not a VM id", vm_id=vm_id)
    return VmPaths(state_dir / "vms" / vm_id)


@dataclass(frozen=True, slots=True)
class KernelBoot:
    kernel: str
    initrd: str | None
    cmdline: str


@dataclass(frozen=True, slots=True)
class Forward:
    """A host port forwarded to a guest port through user-mode networking."""

    protocol: str
    host_port: int
    guest_port: int


@dataclass(frozen=True, slots=True)
class VmConfig:
    """What QEMU needs to run the VM: everything `cmdline.build_argv` reads."""

    id: str
    uuid: str
    name: str
    resources: Resources
    mac: str
    template_id: str | None = None
    template_image: str | None = None
    boot: KernelBoot | None = None
    forwards: tuple[Forward, ...] = ()
    created_at: float = 0.0
    pci_devices: tuple[str, ...] = ()
    """host PCI addresses passed through with VFIO"""
    nics: tuple[Nic, ...] = ()
    """NICs in order (netdev n0, n1, ...); empty: one user-mode NIC with `mac` (VMs defined
    before networks existed)"""
    firewall: Firewall = Firewall()
    boot_setup: BootSetup = BootSetup()
    """the ISO in its CD-ROM, its boot order and firmware"""
    cdrom_drive: bool = False
    """it has a CD-ROM drive (every VM defined since issue 24; older ones keep the hardware
    they were made with, so their PCI and IDE layout never changes under a guest)"""

    @classmethod
    def from_spec(cls, spec: VmSpec, created_at: float) -> "VmConfig":
        return cls(
            id=spec.id,
            uuid=spec.uuid,
            name=spec.name,
            resources=spec.resources,
            mac=mac_for(spec.id),
            template_id=spec.template_id,
            template_image=spec.template_image,
            boot=_kernel_boot(spec),
            forwards=_forwards(spec),
            created_at=created_at,
            pci_devices=tuple(check_address(a) for a in spec.pci_devices),
            nics=spec.nics,
            firewall=spec.firewall,
            boot_setup=spec.boot,
            cdrom_drive=True,
        )

    def with_resources(self, resources: Resources) -> "VmConfig":
        return dataclasses.replace(self, resources=resources)

    def with_network(self, nics: tuple[Nic, ...], firewall: Firewall) -> "VmConfig":
        return dataclasses.replace(self, nics=tuple(nics), firewall=firewall)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "id": self.id,
            "uuid": self.uuid,
            "name": self.name,
            "resources": self.resources.to_wire(),
            "mac": self.mac,
            "templateId": self.template_id,
            "templateImage": self.template_image,
            "boot": None
            if self.boot is None
            else {"kernel": self.boot.kernel, "initrd": self.boot.initrd, "cmdline": self.boot.cmdline},
            "forwards": [
                {"protocol": f.protocol, "hostPort": f.host_port, "guestPort": f.guest_port} for f in self.forwards
            ],
            "createdAt": self.created_at,
            "pciDevices": list(self.pci_devices),
            "nics": [n.to_wire() for n in self.nics],
            "firewall": self.firewall.to_wire(),
            "bootSetup": self.boot_setup.to_wire(),
            "cdromDrive": self.cdrom_drive,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "VmConfig":
        r = data["resources"]
        boot = data.get("boot")
        return cls(
            id=data["id"],
            uuid=data["uuid"],
            name=data["name"],
            resources=Resources(int(r["cpu"]), int(r["ramMb"]), int(r["diskGb"])),
            mac=data["mac"],
            template_id=data.get("templateId"),
            template_image=data.get("templateImage"),
            boot=None if boot is None else KernelBoot(boot["kernel"], boot.get("initrd"), boot.get("cmdline") or ""),
            forwards=tuple(Forward(f["protocol"], int(f["hostPort"]), int(f["guestPort"])) for f in data.get("forwards", [])),
            created_at=float(data.get("createdAt", 0.0)),
            pci_devices=tuple(check_address(a) for a in data.get("pciDevices", ())),
            nics=tuple(Nic.from_wire(n) for n in data.get("nics") or ()),
            firewall=Firewall.from_wire(data.get("firewall")),
            boot_setup=BootSetup.from_wire(data.get("bootSetup")),
            cdrom_drive=bool(data.get("cdromDrive", False)),
        )


def load_config(paths: VmPaths) -> VmConfig:
    try:
        return VmConfig.from_json(json.loads(paths.config.read_text()))
    except (OSError, ValueError, KeyError, TypeError, InvalidRequest) as exc:
        raise DriverError(f"configuration of {paths.dir.name} is unreadable: {exc}", vm_id=paths.dir.name) from exc


def save_config(paths: VmPaths, config: VmConfig) -> None:
    """Write vm.json atomically (a reader sees the old or the new file, never half of one)."""
    write_json_atomic(paths.config, config.to_json())


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mac_for(vm_id: str) -> str:
    """A stable, locally administered MAC in QEMU's 52:54:00 range, derived from the VM id."""
    b = hashlib.sha256(vm_id.encode()).digest()[:3]
    return "52:54:00:" + ":".join(f"{x:02x}" for x in b)


def _kernel_boot(spec: VmSpec) -> KernelBoot | None:
    boot = spec.template_boot
    if not boot:
        return None
    kernel = boot.get("kernel")
    if not kernel:
        raise DriverError("template boot has no kernel", vm_id=spec.id)
    return KernelBoot(kernel=str(kernel), initrd=str(boot["initrd"]) if boot.get("initrd") else None, cmdline=str(boot.get("cmdline") or ""))


def _forwards(spec: VmSpec) -> tuple[Forward, ...]:
    out: list[Forward] = []
    for item in spec.extra.get("expose") or []:
        try:
            protocol = str(item.get("protocol") or "tcp").lower()
            guest = int(item["port"])
            host = int(item["hostPort"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise DriverError(f"expose entry {item!r} needs integer port and hostPort", vm_id=spec.id) from exc
        if protocol not in ("tcp", "udp"):
            raise DriverError(f"expose protocol {protocol!r} is not tcp or udp", vm_id=spec.id)
        if not (1 <= guest <= 65535 and 1 <= host <= 65535):
            raise DriverError(f"expose ports {host}->{guest} are out of range", vm_id=spec.id)
        out.append(Forward(protocol, host, guest))
    ssh = spec.extra.get("ssh") or {}
    if ssh.get("reserved"):  # the SSH forward vmplane reserved (GuestService.prepare_ssh)
        out.append(Forward("tcp", int(ssh["hostPort"]), 22))
    return tuple(out)
