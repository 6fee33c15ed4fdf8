"""Domain vocabulary: states and value objects shared by every layer. No I/O here."""

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .network import Firewall, Nic


class VmStatus(StrEnum):
    PROVISIONING = "provisioning"
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    REBOOTING = "rebooting"
    UPDATING = "updating"
    DELETING = "deleting"
    ERROR = "error"
    UNKNOWN = "unknown"


QUOTA_FIELDS = ("vcpu", "ramMb", "diskGb", "vms", "snapshots", "networks", "templates", "webhooks", "schedules", "plugins")
"""What an organization's quota may bound: resources of its VMs, and how many it holds of each kind."""


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"


JOB_FINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.PARTIAL, JobState.CANCELLED})


class TaskState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TASK_FINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Resources:
    cpu: int
    ram_mb: int
    disk_gb: int

    def to_wire(self) -> dict[str, int]:
        return {"cpu": self.cpu, "ramMb": self.ram_mb, "diskGb": self.disk_gb}


DEFAULT_RESOURCES = Resources(cpu=1, ram_mb=512, disk_gb=10)

BOOT_DEVICES = ("cdrom", "disk")
"""what a VM's `bootOrder` may name"""
DEFAULT_BOOT_ORDER = ("disk", "cdrom")
"""a blank disk boots nothing, so the firmware goes on to the CD-ROM: an installer ISO boots
once and the installed system after it"""
FIRMWARES = ("bios", "uefi")


@dataclass(frozen=True, slots=True)
class BootSetup:
    """What a VM boots: the ISO in its CD-ROM, the order of its boot devices and its firmware.
    A template's direct kernel boot (`VmSpec.template_boot`) comes before all of these."""

    cdrom: str | None = None
    """path on the node of the ISO in the CD-ROM (None: an empty drive)"""
    order: tuple[str, ...] = DEFAULT_BOOT_ORDER
    firmware: str = "bios"
    """bios (SeaBIOS) or uefi (OVMF, with an NVRAM file of the VM's own)"""

    def to_wire(self) -> dict[str, Any]:
        return {"cdrom": self.cdrom, "order": list(self.order), "firmware": self.firmware}

    @classmethod
    def from_wire(cls, d: Any) -> "BootSetup":
        if not isinstance(d, dict):
            return cls()
        order = tuple(str(x) for x in d.get("order") or DEFAULT_BOOT_ORDER)
        if any(x not in BOOT_DEVICES for x in order) or d.get("firmware", "bios") not in FIRMWARES:
            raise ValueError(f"boot setup {d!r} names an unknown device or firmware")
        cdrom = d.get("cdrom")
        return cls(str(cdrom) if cdrom else None, order, str(d.get("firmware", "bios")))


@dataclass(frozen=True, slots=True)
class VmSpec:
    """What a driver needs to define a VM on its node."""

    id: str
    uuid: str
    name: str
    resources: Resources
    template_id: str | None = None
    template_image: str | None = None
    """path of the template's base disk image (the VM's disk is an overlay on it)."""
    template_boot: dict[str, str] | None = None
    """direct kernel boot: {"kernel": path, "initrd": path, "cmdline": str}; None boots the disk."""
    disk_image: str | None = None
    """a qcow2 image on the node the VM takes as its own disk (moved into place, not an
    overlay): how an imported VM gets its disk. Only without `template_image`."""
    extra: dict[str, Any] = field(default_factory=dict)
    """what else the user asked for: cloudInit {userData, metaData, networkConfig},
    sshKeys [..], expose [{port, hostPort, protocol}]."""
    nics: tuple[Nic, ...] = ()
    """the VM's network interfaces in order (NIC 0 first); empty: one user-mode NIC as
    before networks existed"""
    firewall: Firewall = Firewall()
    pci_devices: tuple[str, ...] = ()
    """host PCI addresses passed through to the VM with VFIO"""
    boot: BootSetup = BootSetup()
    """its CD-ROM, boot order and firmware"""


def job_progress(total: int, progress_sum: int) -> int:
    """A job's progress: the mean of its tasks' (0-100)."""
    return 100 if total == 0 else min(100, progress_sum // total)


def job_final_state(total: int, succeeded: int, failed: int, cancelled: int) -> JobState | None:
    """The state a job ends in once every task is final, or None while tasks remain."""
    if succeeded + failed + cancelled < total:
        return None
    if cancelled:
        return JobState.CANCELLED
    if failed == 0:
        return JobState.SUCCEEDED
    if succeeded == 0:
        return JobState.FAILED
    return JobState.PARTIAL
