"""What a caller asks the core to make: a new VM (`NewVm`) and an import (`ImportRequest` from
an `ImportSource`, with the stages an import goes through).

Services check and carry out these requests; job handlers that make VMs themselves (an
import defines its VM) take the same records, so they live here, on the floor both stand on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .core import Resources
from .ingress import Ipv6Ingress
from .network import Firewall


@dataclass(frozen=True)
class NewVm:
    name: str | None = None
    """None: the VM is named after its display name (domain.names.derive_name, made unique
    with a numeric suffix), or after its id when it has none"""
    display_name: str | None = None
    """free text shown by faces whose names allow more than VM names (domain.names)"""
    resources: Resources | None = None
    """None: the snapshot's, or DEFAULT_RESOURCES"""
    template_id: str | None = None
    node_id: str | None = None
    tags: tuple[str, ...] = ()
    start: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    team: str | None = None
    """team id or name (default: the credential's team)"""
    snapshot: str | None = None
    """create the VM's disk as a copy-on-write clone of this snapshot"""
    networks: tuple[str, ...] = ()
    """networks (id or name) to join, one NIC each in this order; empty: the user network"""
    pci: tuple[str, ...] = ()
    """host PCI devices to pass through: addresses (0000:01:00.0) or models (10de:2204)"""
    firewall: Firewall | None = None
    """None: the snapshot's firewall for a clone, else the default (disabled)"""
    ipv6_ingress: Ipv6Ingress | None = None
    """an IPv6 ingress policy applied on top of the firewall (see domain.ingress)"""
    disk_gb: int | None = None
    """the disk's size when it differs from `resources` (a clone keeps its snapshot's shape
    and may grow its disk)"""
    plugin: str | None = None
    """an installed, enabled plugin (name or runtime): the VM takes its resources, image and
    cloud-init unless given, and its workload's port is forwarded (services.plugins)"""
    cdrom: str | None = None
    """an ISO (id or name) of the library in its CD-ROM (None: an empty drive)"""
    boot_order: tuple[str, ...] | None = None
    """devices to boot from, in order (core.BOOT_DEVICES; None: core.DEFAULT_BOOT_ORDER)"""
    firmware: str | None = None
    """bios or uefi (None: bios)"""


STAGES = ("connecting", "exporting", "converting", "defining", "starting")
"""an import's stages, in order"""
STAGE_SPAN = {"connecting": (0, 5), "exporting": (5, 50), "converting": (50, 85), "defining": (85, 92), "starting": (92, 99)}
"""the span of an import's progress (percent) each stage covers"""


@dataclass(frozen=True)
class ImportSource:
    """Where the VM comes from. Which fields apply depends on `type`:

    - `ova`: `path` (a local file under an allowed directory) or `url` (http, https, file);
    - `disk`: the same, plus `format` (qcow2, raw, vmdk, vhdx; None: detected);
    - `vsphere`: `vm_path` (inventory path) and either `profile` (a stored connection) or
      `vcenter_url` + `username` + `password` (+ `insecure`); `export_method` auto, lease
      (NFC export lease) or datastore (datastore file download);
    - `vmplane`: `url` (the other vmplane's base URL), `api_key`, `vm_id`.
    """

    type: str
    path: str | None = None
    url: str | None = None
    format: str | None = None
    profile: str | None = None
    vcenter_url: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    insecure: bool | None = None
    vm_path: str | None = None
    export_method: str = "auto"
    api_key: str | None = field(default=None, repr=False)
    vm_id: str | None = None

    def public(self) -> dict[str, Any]:
        """The source as it may be stored and shown: never a password or an API key."""
        out: dict[str, Any] = {"type": self.type}
        for key, value in (
            ("path", self.path), ("url", self.url), ("format", self.format), ("profile", self.profile),
            ("vcenterUrl", self.vcenter_url), ("username", self.username if not self.profile else None),
            ("insecure", self.insecure), ("vmPath", self.vm_path), ("vmId", self.vm_id),
        ):  # fmt: skip
            if value is not None:
                out[key] = value
        if self.type == "vsphere":
            out["exportMethod"] = self.export_method
        return out


@dataclass(frozen=True)
class ImportRequest:
    """What to import and how the VM is to be made."""

    source: ImportSource
    name: str | None = None
    """the VM's name (default: the source VM's, made valid)"""
    cpu: int | None = None
    ram_mb: int | None = None
    disk_gb: int | None = None
    """override the source's shape (the disk only grows)"""
    network_mapping: dict[str, str] = field(default_factory=dict)
    """source network name -> vmplane network (id or name); unmapped networks go to the
    default network"""
    remove_cdroms: bool = False
    """vSphere: remove the source VM's CD-ROM drives before the export (as HyperSDK does);
    every source: the VM is made without them (vmplane VMs have no CD-ROM drive but the
    cloud-init seed)"""
    start: bool = True
    node_id: str | None = None
    tags: tuple[str, ...] = ()
    ssh_keys: tuple[str, ...] = ()
    """OpenSSH public keys for the VM's cloud-init seed, as a VM create takes them"""
    cloud_init: dict[str, Any] | None = None
    """the VM's cloud-init documents, as a VM create takes them: {userData, metaData,
    networkConfig}"""
    login_user: str | None = None
    """the user the VM logs in as over SSH (None: the source's, for another vmplane's VM;
    else root)"""
    origin: dict[str, Any] | None = None
    """what the caller sent, in its own words (a face's job definition), kept beside the
    request and shown back as it was sent; never interpreted, never a credential
    (ImportService drops `password` and API keys at any depth)"""
