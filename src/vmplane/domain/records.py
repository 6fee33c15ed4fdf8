"""Typed records of what the store keeps: a VM and a template, as services and faces read them.

The store builds them from its rows (`from_row`); their attribute names are the columns', and
a VM's `spec` column is a declared `StoredSpec`. Facts derived from a record (its addresses,
its SSH endpoint) are properties of the record, computed here once for every face.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .spec import StoredSpec, from_fields

PENDING_STATUSES = frozenset({"running", "rebooting"})
"""statuses in which a VM has a running process whose shape may lag behind its record"""


def held(cpu: int, ram_mb: int, disk_gb: int, running_spec: Any) -> tuple[int, int, int]:
    """What a VM holds on its node, and what its node's claims count for it: its size, or, where
    larger, what its running process was started with (`running_spec`). A running VM shrunk
    keeps its old CPU and RAM until it is restarted, so its claim shrinks then, not at the
    resize: released at once, the room went to other VMs while this one still used it (the
    chaos soak found a node 1.5 GB over its RAM). The disk is never smaller than it runs with."""
    if not isinstance(running_spec, dict):
        return cpu, ram_mb, disk_gb
    return max(cpu, int(running_spec.get("cpu") or 0)), max(ram_mb, int(running_spec.get("ramMb") or 0)), disk_gb


@dataclass(frozen=True)
class Vm:
    """A VM as the store keeps it (the `vms` table)."""

    seq: int
    id: str
    uuid: str
    name: str
    org_id: str
    team_id: str | None
    node_id: str | None
    template_id: str | None
    snapshot_id: str | None
    status: str
    cpu: int
    ram_mb: int
    disk_gb: int
    tags: list[str]
    spec: StoredSpec
    error: str | None
    started_at: float | None
    created_at: float
    updated_at: float
    guest_ready: bool
    """the guest said it is ready in its current boot (false again at every stop, start, reboot)"""
    running_spec: dict[str, Any] | None = None
    """`{cpu, ramMb, diskGb}` the VM's running process was started with, as its hypervisor
    said when its status was last recorded (None: not known; migration 0029)"""
    cdrom_iso_id: str | None = None
    """the ISO in its CD-ROM (None: empty; migration 0032)"""

    @classmethod
    def from_row(cls, row: Any, keys: Sequence[str] | None = None) -> Vm:
        """From a row of the whole `vms` table (its columns are this record's fields).
        `keys`: the result's column names (`result.keys()`), when reading many rows of one
        result: naming a row's values through them costs 1 µs, through `row._asdict()` 8."""
        values = dict(zip(keys, row)) if keys is not None else row._asdict()
        values["spec"] = StoredSpec.from_json(values["spec"])
        return from_fields(cls, values)

    def to_row(self) -> dict[str, Any]:
        """The columns, as the store writes them (`spec` as its JSON)."""
        return {
            "seq": self.seq, "id": self.id, "uuid": self.uuid, "name": self.name, "org_id": self.org_id, "team_id": self.team_id,
            "node_id": self.node_id, "template_id": self.template_id, "snapshot_id": self.snapshot_id, "status": self.status,
            "cpu": self.cpu, "ram_mb": self.ram_mb, "disk_gb": self.disk_gb, "tags": self.tags, "spec": self.spec.to_json(),
            "error": self.error, "started_at": self.started_at, "created_at": self.created_at, "updated_at": self.updated_at,
            "guest_ready": self.guest_ready,
            "running_spec": self.running_spec, "cdrom_iso_id": self.cdrom_iso_id,
        }  # fmt: skip

    @property
    def vmid(self) -> int:
        """The VM's stable integer id (Proxmox-style VMID): its row's key, never given to
        another VM, even after this one is deleted (AUTOINCREMENT on SQLite, a sequence on
        PostgreSQL; migration 0023)."""
        return self.seq

    @property
    def blank(self) -> bool:
        """The VM's disk was made empty: no template, snapshot, import or plugin gave it anything
        to boot, so no guest will come up (or say it is ready) until an OS is installed on it."""
        return self.template_id is None and self.snapshot_id is None and self.spec.imported is None and self.spec.plugin is None

    @property
    def wants_boot_setup(self) -> bool:
        """It has an ISO in its CD-ROM, a boot order or a firmware choice: its node must give
        VMs these (`Capabilities.cdrom`, placement's `Demand.cdrom`)."""
        return self.cdrom_iso_id is not None or bool(self.spec.boot_order) or self.spec.firmware not in (None, "bios")

    @property
    def display_name(self) -> str:
        """The name faces show: the display name a client gave (`my web`), else the name."""
        return self.spec.display_name or self.name

    @property
    def primary_ip(self) -> str | None:
        """The first address of NIC 0."""
        return self.spec.primary_ip

    @property
    def first_ipv4(self) -> str | None:
        """The first IPv4 address over the VM's NICs."""
        return self.spec.first_ipv4

    @property
    def first_ipv6(self) -> str | None:
        return self.spec.first_ipv6

    @property
    def ssh_endpoint(self) -> dict[str, Any] | None:
        """`{host, port, user, hostKey}` of the VM's SSH forward, or None."""
        return self.spec.ssh_endpoint

    @property
    def held(self) -> tuple[int, int, int]:
        """(cpu, ram_mb, disk_gb) the VM holds on its node: `held(...)` of its record."""
        return held(self.cpu, self.ram_mb, self.disk_gb, self.running_spec)

    @property
    def pending(self) -> list[str]:
        """What of the VM's record its running process does not have yet (`cpu`, `ramMb`,
        `diskGb`: a resize waiting for a power-cycle or a stop and start). Empty for a VM that
        does not run, and for one whose running shape is not known."""
        running = self.running_spec
        if self.status not in PENDING_STATUSES or not isinstance(running, dict):
            return []
        return [k for k, v in (("cpu", self.cpu), ("ramMb", self.ram_mb), ("diskGb", self.disk_gb)) if running.get(k) not in (None, v)]


@dataclass(frozen=True)
class Iso:
    """An ISO image of the library as the store keeps it (the `isos` table). org_id None:
    an operator's, shared with every organization."""

    seq: int
    id: str
    name: str
    org_id: str | None
    status: str
    """importing, ready or error"""
    source_url: str | None
    size_bytes: int
    sha256: str | None
    error: str | None
    created_at: float
    updated_at: float

    @classmethod
    def from_row(cls, row: Any) -> Iso:
        return from_fields(cls, row._asdict())

    @property
    def shared(self) -> bool:
        return self.org_id is None


@dataclass(frozen=True)
class Template:
    """A template as the store keeps it (the `templates` table). org_id None: shared."""

    seq: int
    id: str
    name: str
    org_id: str | None
    os: str
    node_id: str | None
    source_url: str | None
    status: str
    format: str | None
    size_mb: int
    image_path: str | None
    checksum: str | None
    boot: dict[str, Any] | None
    """direct kernel boot {kernel, initrd, cmdline} and the image's `sshHostKey`"""
    error: str | None
    created_at: float
    updated_at: float
    login_user: str
    """the user VMs made from it log in as over SSH (domain/login.py)"""

    @classmethod
    def from_row(cls, row: Any) -> Template:
        """From a row of the whole `templates` table (its columns are this record's fields)."""
        return from_fields(cls, row._asdict())

    @property
    def shared(self) -> bool:
        return self.org_id is None

    @property
    def ssh_host_key(self) -> str | None:
        """The public host key baked into the image, when its import recorded one."""
        key = (self.boot or {}).get("sshHostKey")
        return str(key) if key is not None else None
