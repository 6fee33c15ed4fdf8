"""What vSphere is to vmplane: where and as whom a vCenter is reached (`Connection`), and the
facts read from it about a VM (its summary, hardware, disks and NICs) and its disks once
fetched. services/vsphere.py reads and fetches them (pyvmomi); the import handler takes them.

`Connection` never shows its password in a repr or a log.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import InvalidRequest

BytesProgress = Callable[[int, int | None], Coroutine[Any, Any, None]]
"""`progress(bytes_done, bytes_total)` while disks are fetched (a coroutine function: the
worker thread hands its coroutines to the event loop)."""


@dataclass(frozen=True)
class Connection:
    """Where and as whom to reach a vCenter (or an ESXi host). Its repr hides the password."""

    url: str
    """`https://host[:port][/sdk]` (a bare host name means https and /sdk)"""
    username: str
    password: str = field(repr=False)
    insecure: bool = False
    """skip TLS certificate verification (self-signed vCenters, the simulator)"""
    profile: str | None = None
    """the stored profile this came from, if any"""

    @property
    def endpoint(self) -> tuple[str, str, int, str]:
        """(scheme, host, port, path) of the SDK endpoint."""
        return split_url(self.url)


def split_url(url: str, field_name: str = "vcenterUrl") -> tuple[str, str, int, str]:
    """(scheme, host, port, path) of a vCenter's URL; InvalidRequest on `field_name` when it is
    not a host name or an http(s) URL."""
    raw = url.strip()
    if "://" not in raw:
        raw = "https://" + raw
    try:
        p = urlparse(raw)
        hostname = p.hostname
    except ValueError as exc:
        raise InvalidRequest(f"the vCenter URL cannot be parsed: {exc}", field=field_name) from exc
    if p.scheme not in ("http", "https") or not hostname or any(ch.isspace() or ord(ch) < 32 for ch in raw):
        raise InvalidRequest("the vCenter URL must be a host name or an http(s):// URL", field=field_name)
    try:
        port = p.port or (443 if p.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidRequest(f"the vCenter URL has a bad port: {exc}", field=field_name) from exc
    path = p.path if p.path not in ("", "/") else "/sdk"
    return p.scheme, hostname, port, path


@dataclass(frozen=True)
class VsphereVm:
    """One VM as a listing shows it."""

    name: str
    path: str
    """inventory path: `Datacenter/vm/folder/name`"""
    power_state: str
    """vSphere's: poweredOn, poweredOff, suspended"""
    num_cpu: int
    memory_mb: int
    storage_bytes: int
    """committed storage"""
    guest_os: str
    ip_address: str | None
    uuid: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name, "path": self.path, "powerState": self.power_state, "numCpu": self.num_cpu,
            "memoryMb": self.memory_mb, "storageBytes": self.storage_bytes, "guestOs": self.guest_os,
            "ipAddress": self.ip_address, "uuid": self.uuid,
        }  # fmt: skip


@dataclass(frozen=True)
class VsphereDisk:
    key: int
    label: str
    capacity_bytes: int
    file_path: str
    """datastore path: `[datastore1] vm/vm.vmdk`"""

    def to_wire(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "capacityBytes": self.capacity_bytes, "filePath": self.file_path}


@dataclass(frozen=True)
class VsphereNic:
    label: str
    network: str
    mac: str | None

    def to_wire(self) -> dict[str, Any]:
        return {"label": self.label, "network": self.network, "mac": self.mac}


@dataclass(frozen=True)
class VsphereVmInfo:
    """A VM's hardware, disks, NICs and CD-ROMs (what an import takes its shape from)."""

    vm: VsphereVm
    datacenter: str
    firmware: str
    guest_id: str
    disks: tuple[VsphereDisk, ...]
    nics: tuple[VsphereNic, ...]
    cdroms: tuple[str, ...]
    """labels of the CD-ROM drives"""

    def to_wire(self) -> dict[str, Any]:
        return {
            **self.vm.to_wire(), "datacenter": self.datacenter, "firmware": self.firmware, "guestId": self.guest_id,
            "hardware": {"numCpu": self.vm.num_cpu, "memoryMb": self.vm.memory_mb, "numVirtualDisks": len(self.disks)},
            "disks": [d.to_wire() for d in self.disks], "nics": [n.to_wire() for n in self.nics], "cdroms": list(self.cdroms),
        }  # fmt: skip


@dataclass(frozen=True)
class ExportedDisk:
    """A disk of a vSphere VM fetched to a local file (VMDK: monolithic, stream-optimized or a
    descriptor with its extents beside it)."""

    label: str
    path: Path
    capacity_bytes: int
    via: str = "datastore"
    """how it was fetched: `lease` (NFC export lease) or `datastore` (datastore download)"""
