"""OVF descriptors (DMTF DSP0243, 1.x and 2.x): the shape of the VM an OVA or OVF package
describes (name, CPUs, memory, disks and the files behind them, NICs and their networks,
CD-ROM drives). Pure parsing; no I/O. Namespaces are matched by local name, as producers
(VMware, VirtualBox, ovftool, HyperSDK) disagree on prefixes and versions."""

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

MAX_DESCRIPTOR = 4 << 20
RES_CPU, RES_MEMORY, RES_ETHERNET, RES_CD, RES_DVD, RES_DISK = 3, 4, 10, 15, 16, 17


class OvfError(ValueError):
    """The descriptor is not a usable OVF (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class OvfDisk:
    disk_id: str
    href: str
    """the file in the package (a VMDK, usually stream-optimized)"""
    capacity_bytes: int
    file_size: int | None
    format: str


@dataclass(frozen=True, slots=True)
class OvfNic:
    network: str
    model: str


@dataclass(frozen=True, slots=True)
class OvfDescriptor:
    name: str
    cpu: int
    memory_mb: int
    disks: tuple[OvfDisk, ...]
    nics: tuple[OvfNic, ...]
    cdroms: int
    os: str
    firmware: str = "bios"
    """`efi` when the descriptor says so (VMware's `vmw:Config firmware`)"""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    for key, value in el.attrib.items():
        if _local(key) == name:
            return value
    return None


def _child(el: ET.Element, name: str) -> ET.Element | None:
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element, name: str) -> str | None:
    c = _child(el, name)
    return c.text.strip() if c is not None and c.text else None


UNIT_RE = re.compile(r"^\s*byte\s*(?:\*\s*(\d+)\s*(?:\^\s*(\d+))?)?\s*$", re.I)
NAMED_UNITS = {"bytes": 1, "byte": 1, "kilobytes": 1 << 10, "megabytes": 1 << 20, "gigabytes": 1 << 30, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30}


def units(text: str | None, default: int = 1) -> int:
    """The multiplier of a programmatic unit: `byte * 2^20` -> 1048576, `MegaBytes` too."""
    if not text:
        return default
    m = UNIT_RE.match(text)
    if m:
        base, exp = m.group(1), m.group(2)
        if base is None:
            return 1
        return int(base) ** int(exp) if exp else int(base)
    named = NAMED_UNITS.get(text.strip().lower())
    if named is None:
        raise OvfError(f"unknown allocation unit {text!r}")
    return named


def _int(text: str | None, what: str) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        raise OvfError(f"{what} is not a whole number: {text!r}") from None


def parse_ovf(data: bytes) -> OvfDescriptor:
    """The VM an OVF descriptor describes (its first VirtualSystem). Raises OvfError."""
    if len(data) > MAX_DESCRIPTOR:
        raise OvfError(f"the descriptor is larger than {MAX_DESCRIPTOR} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise OvfError("the descriptor declares a DOCTYPE or entities, which OVF never needs")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise OvfError(f"the descriptor is not well-formed XML: {exc}") from None
    if _local(root.tag) != "Envelope":
        raise OvfError(f"the root element is {_local(root.tag)}, not an OVF Envelope")
    files: dict[str, tuple[str, int | None]] = {}
    refs = _child(root, "References")
    for f in _children(refs, "File") if refs is not None else []:
        fid, href = _attr(f, "id"), _attr(f, "href")
        if fid and href:
            size_text = _attr(f, "size")
            files[fid] = (href, _int(size_text, "File size") if size_text else None)
    disks: dict[str, OvfDisk] = {}
    section = _child(root, "DiskSection")
    for d in _children(section, "Disk") if section is not None else []:
        disk_id, file_ref = _attr(d, "diskId"), _attr(d, "fileRef")
        if not disk_id:
            raise OvfError("a Disk has no diskId")
        if not file_ref or file_ref not in files:
            raise OvfError(f"disk {disk_id} names no file of the package (fileRef {file_ref!r})")
        capacity = _int(_attr(d, "capacity"), f"disk {disk_id} capacity") * units(_attr(d, "capacityAllocationUnits"))
        href, size = files[file_ref]
        disks[disk_id] = OvfDisk(disk_id, href, capacity, size, _attr(d, "format") or "")
    system = next((el for el in root.iter() if _local(el.tag) == "VirtualSystem"), None)
    if system is None:
        raise OvfError("the descriptor has no VirtualSystem (a VirtualSystemCollection is not supported)")
    name = _text(system, "Name") or _attr(system, "id") or "imported"
    hardware = _child(system, "VirtualHardwareSection")
    if hardware is None:
        raise OvfError("the VirtualSystem has no VirtualHardwareSection")
    cpu, memory_mb, cdroms = 0, 0, 0
    used_disks: list[OvfDisk] = []
    nics: list[OvfNic] = []
    for item in [c for c in hardware if _local(c.tag) in ("Item", "StorageItem", "EthernetPortItem")]:
        kind = _text(item, "ResourceType")
        if kind is None:
            continue
        rtype = _int(kind, "ResourceType")
        if rtype == RES_CPU:
            cpu = _int(_text(item, "VirtualQuantity"), "CPU VirtualQuantity")
        elif rtype == RES_MEMORY:
            quantity = _int(_text(item, "VirtualQuantity"), "memory VirtualQuantity")
            memory_mb = quantity * units(_text(item, "AllocationUnits"), 1 << 20) // (1 << 20)
        elif rtype == RES_ETHERNET:
            nics.append(OvfNic(_text(item, "Connection") or "", _text(item, "ResourceSubType") or ""))
        elif rtype in (RES_CD, RES_DVD):
            cdroms += 1
        elif rtype == RES_DISK:
            host = _text(item, "HostResource") or ""
            disk_id = host.rsplit("/", 1)[-1]
            if disk_id not in disks:
                raise OvfError(f"a disk drive points at {host!r}, which the DiskSection does not have")
            used_disks.append(disks[disk_id])
    if cpu < 1:
        raise OvfError("the descriptor gives no CPU count (ResourceType 3)")
    if memory_mb < 1:
        raise OvfError("the descriptor gives no memory size (ResourceType 4)")
    if not used_disks:
        used_disks = list(disks.values())
    if not used_disks:
        raise OvfError("the descriptor has no disk")
    os_section = _child(system, "OperatingSystemSection")
    os_name = ""
    if os_section is not None:
        os_name = _text(os_section, "Description") or _attr(os_section, "osType") or _attr(os_section, "id") or ""
    firmware = "bios"
    for el in hardware.iter():
        if _local(el.tag) == "Config" and _attr(el, "key") == "firmware" and (_attr(el, "value") or "").lower() == "efi":
            firmware = "efi"
    return OvfDescriptor(name, cpu, memory_mb, tuple(used_disks), tuple(nics), cdroms, os_name, firmware)
