"""The one way a disk image from outside becomes an image vmplane uses: `intake`.

Templates of any source, plugins' root file systems, images pushed to or fetched by a node
agent, and every VM import (disk, OVA member, vSphere, another vmplane) go through it. A
disk image is a program for qemu-img: its header can name other files (a backing file, a
qcow2 external data file, VMDK extents, `json:` block graphs, `nbd:`-style protocols) that
qemu-img would open and read as the image's content, which is how a tenant's "image" becomes
the host's secret file. So intake

1. decides the input format itself (the caller's, or from the file's magic bytes; never
   qemu-img's probing) and reads the header in Python first: a qcow2 naming a backing or
   data file, or a VMDK descriptor naming extent files, is refused before qemu-img opens
   it (`qemu-img info` opens VMDK extents to read their headers);
2. inspects it with `qemu-img info -f FORMAT` and refuses backing files, data files, extents
   other than allowed ones, `json:` or protocol filenames anywhere, and a virtual size over
   the limit (`VMPLANE_MAX_IMAGE_VIRTUAL_GB`);
3. converts it with `qemu-img convert -f FORMAT -O qcow2` into a fresh standalone file;
4. checks that result again (`check_standalone`) before giving it its final name.

A refusal raises `ImageRefused` naming the reason; nothing of the output is left behind.
The source must be a file vmplane owns and nobody else writes while intake runs (callers
copy a tenant's file first): what was inspected is then what gets converted.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DriverError, ImageRefused
from . import images

GIB = 1 << 30
FORMATS = ("qcow2", "raw", "vmdk", "vhdx", "vpc")
"""input formats intake converts from (vpc: VHD)"""
CONVERT_TIMEOUT = 24 * 3600.0
"""a conversion ends when its job is cancelled, not after a fixed time; this only bounds a
stuck qemu-img"""

QCOW2_MAGIC = b"QFI\xfb"
QCOW2_DATA_FILE_EXT = 0x44415441  # header extension "external data file name"
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_HEADER_MAX = 2 << 20  # the largest cluster size
VMDK4_MAGIC = b"KDMV"
VMDK_DESCRIPTOR_MAX = 64 << 10
VMDK_EXTENT_ACCESS = ("RW", "RDONLY", "NOACCESS")
VMDK_EXTENT_NAME_RE = re.compile(r'"([^"\r\n]*)"')
PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
UNSUPPORTED_MAGIC = {  # formats qemu-img reads but vmplane does not take
    b"QED\x00": "QED",
    b"LUKS\xba\xbe": "LUKS",
    b"COWD": "VMDK version 3",
}


@dataclass(frozen=True, slots=True)
class Intaken:
    """What `intake` made: a standalone qcow2 at `path`, converted from `source_format`."""

    path: Path
    source_format: str
    virtual_size: int
    actual_size: int


async def intake(
    qemu_img: str,
    source: Path,
    dest: Path,
    *,
    max_virtual_size: int,
    fmt: str | None = None,
    extents_dir: Path | None = None,
    label: str | None = None,
    progress: Callable[[int, int], Awaitable[None]] | None = None,
    **details: Any,
) -> Intaken:
    """Convert the image `source` into a fresh standalone qcow2 at `dest` (replaced if there),
    after refusing anything that would make qemu-img read another file.

    `fmt`: the format the caller states (one of FORMATS); None: from the magic bytes.
    `extents_dir`: only for a VMDK descriptor vmplane itself downloaded with its extents (a
    vSphere datastore export): extents may be plain file names in that folder. Otherwise a
    VMDK must be one self-contained file.
    `label`: how errors name the image (default: the file's name).
    `progress(done, total)`: the conversion's progress in bytes of the virtual size.
    Raises ImageRefused (the image is not acceptable) or DriverError (qemu-img failed);
    on any failure `dest` and its temporary file do not exist."""
    source = Path(os.path.abspath(source))  # absolute: qemu-img reads "proto:..." as a protocol
    dest = Path(os.path.abspath(dest))
    name = label or source.name
    await asyncio.to_thread(_check_regular, source, name)
    if fmt is None:
        fmt = await asyncio.to_thread(detect_format, source, name)
    elif fmt not in FORMATS:
        raise ImageRefused(f"{name}: format {fmt!r} is not one of {', '.join(FORMATS)}", **details)
    allowed = await asyncio.to_thread(_precheck, source, fmt, name, extents_dir)
    # The files qemu-img is handed (see images.run_tool): the image, or a VMDK descriptor named
    # relative to its folder, where it reaches its extents and nothing else.
    if extents_dir is not None:
        arg, cwd = source.name, Path(os.path.abspath(extents_dir))
        reads = [source, *(Path(a) for a in allowed if Path(a) != source)]
        allowed = allowed | {Path(a).name for a in allowed if Path(a).parent == cwd}
    else:
        arg, cwd, reads = str(source), None, [source]
    info = await _info(qemu_img, arg, fmt, name, reads=reads, cwd=cwd, **details)
    _check_info(info, name, fmt, max_virtual_size, allowed)
    part = dest.with_name(dest.name + ".intake")
    part.unlink(missing_ok=True)
    dest.unlink(missing_ok=True)
    size = int(info["virtual-size"])
    tail = b""

    async def meter(chunk: bytes) -> None:  # qemu-img -p writes "    (12.34/100%)\r"
        nonlocal tail
        tail = (tail + chunk)[-256:]
        found = PROGRESS_RE.findall(tail)
        if found and progress is not None:
            await progress(int(float(found[-1]) * size / 100), size)

    try:
        argv = [qemu_img, "convert", "-p" if progress else "-q", "-f", fmt, "-O", "qcow2", arg, str(part)]
        status, _out, err = await images.run_tool(
            argv, "qemu-img convert", timeout=CONVERT_TIMEOUT, on_stdout=meter if progress else None,
            reads=reads, writes=[part], cwd=cwd, **details,
        )  # fmt: skip
        if status != 0:
            raise DriverError(f"{name}: qemu-img convert failed: {images.last_line(err) or status}", **details)
        result = await check_standalone(qemu_img, part, max_virtual_size=max_virtual_size, label=name, **details)
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return Intaken(dest, fmt, result.virtual_size, result.actual_size)


async def check_standalone(
    qemu_img: str, path: Path, *, max_virtual_size: int, label: str | None = None, **details: Any
) -> images.DiskInfo:
    """Check that `path` is a standalone qcow2 (vmplane's own output, or a disk a VM is to
    adopt): qcow2 read as qcow2, no backing file, no data file, size within the limit,
    consistent metadata. Raises ImageRefused otherwise."""
    path = Path(os.path.abspath(path))
    name = label or path.name
    await asyncio.to_thread(_check_regular, path, name)
    await asyncio.to_thread(_precheck, path, "qcow2", name, None)
    info = await _info(qemu_img, path, "qcow2", name, reads=[path], **details)
    _check_info(info, name, "qcow2", max_virtual_size, {str(path)})
    await images.check_qcow2(qemu_img, path, **details)
    return images.DiskInfo(
        format="qcow2", virtual_size=int(info["virtual-size"]), actual_size=int(info.get("actual-size", 0)),
        backing_file=None, raw=info,
    )  # fmt: skip


def detect_format(path: Path, label: str | None = None) -> str:
    """The format of an image from its first bytes (vmplane's decision, not qemu-img's
    probe): qcow2, vmdk (sparse extent or text descriptor), vhdx, vpc, else raw. Formats
    qemu-img knows but vmplane does not take are refused."""
    with open(path, "rb") as f:
        head = f.read(1024)
    name = label or path.name
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    if head.startswith(VMDK4_MAGIC) or _looks_like_descriptor(head):
        return "vmdk"
    if head.startswith(b"vhdxfile"):
        return "vhdx"
    if head.startswith(b"conectix"):
        return "vpc"
    if head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        raise ImageRefused(f"{name} is a VDI image, which vmplane does not take: convert it to qcow2 or raw")
    for magic, what in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise ImageRefused(f"{name} is a {what} image, which vmplane does not take: convert it to qcow2 or raw")
    return "raw"


def _looks_like_descriptor(head: bytes) -> bool:
    text = head.lstrip()
    return text.startswith(b"# Disk DescriptorFile") or bool(re.match(rb"(#[^\n]*\n|\s)*version=[123]\s", text))


def _check_regular(path: Path, name: str) -> None:
    """A regular file with content (not a FIFO qemu-img would block on, nor a device)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageRefused(f"{name}: cannot read it: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageRefused(f"{name} is not a regular file")
    if st.st_size == 0:
        raise ImageRefused(f"{name} is empty")


def _precheck(path: Path, fmt: str, name: str, extents_dir: Path | None) -> set[str]:
    """What the header says, read before qemu-img opens the file; returns the file names
    the image may name (itself, and allowed VMDK extents)."""
    allowed = {str(path)}
    if fmt == "qcow2":
        _precheck_qcow2(path, name)
    elif fmt == "vmdk":
        allowed |= _precheck_vmdk(path, name, extents_dir)
    return allowed


def _precheck_qcow2(path: Path, name: str) -> None:
    with open(path, "rb") as f:
        head = f.read(QCOW2_HEADER_MAX)  # header and extensions live in the first cluster
    if len(head) < 72 or not head.startswith(QCOW2_MAGIC):
        raise ImageRefused(f"{name} is not a qcow2 image")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    if backing_offset or backing_size:
        raise ImageRefused(f"{name} has a backing file; give a standalone image (qemu-img convert -O qcow2)")
    if version < 3:
        return  # version 2 has neither feature bits nor a data file
    if len(head) < 104:
        raise ImageRefused(f"{name} has a truncated qcow2 header")
    (incompatible,) = struct.unpack_from(">Q", head, 72)
    (header_length,) = struct.unpack_from(">I", head, 100)
    if incompatible & QCOW2_INCOMPAT_DATA_FILE:
        raise ImageRefused(f"{name} keeps its data in an external data file; give a standalone image")
    offset = header_length
    while offset + 8 <= len(head):  # header extensions: (type, length, data padded to 8)
        ext_type, ext_len = struct.unpack_from(">II", head, offset)
        if ext_type == 0:
            break
        if ext_type == QCOW2_DATA_FILE_EXT:
            raise ImageRefused(f"{name} names an external data file; give a standalone image")
        offset += 8 + (ext_len + 7) // 8 * 8


def _precheck_vmdk(path: Path, name: str, extents_dir: Path | None) -> set[str]:
    with open(path, "rb") as f:
        head = f.read(VMDK_DESCRIPTOR_MAX + 1)
    if head.startswith(VMDK4_MAGIC):
        if len(head) < 20 or struct.unpack_from("<Q", head, 12)[0] == 0:
            # capacity 0: qemu reads the embedded descriptor as a descriptor file (extents)
            raise ImageRefused(f"{name} is a VMDK whose embedded descriptor names its extents; give a single-file VMDK")
        return set()  # a sparse extent: self-contained (a parent, if named, is refused after `info`)
    if len(head) > VMDK_DESCRIPTOR_MAX or not _looks_like_descriptor(head[:1024]):
        raise ImageRefused(f"{name} is not a VMDK image")
    if extents_dir is None:
        raise ImageRefused(
            f"{name} is a VMDK descriptor that names extent files; give a single-file VMDK "
            "(monolithicSparse or streamOptimized) or a qcow2/raw image"
        )
    folder = Path(os.path.abspath(extents_dir))
    if path.parent != folder:
        raise ImageRefused(f"{name}: the descriptor is not in its extents' folder")
    allowed = set()
    for line in head.decode("utf-8", "replace").splitlines():
        words = line.split()
        if words and words[0].lower().startswith("parentfilenamehint"):
            raise ImageRefused(f"{name} names a parent (backing) disk; give a standalone image")
        if not words or words[0] not in VMDK_EXTENT_ACCESS:
            continue
        m = VMDK_EXTENT_NAME_RE.search(line)
        if m is None:
            if len(words) >= 3 and words[2].upper() == "ZERO":
                continue
            raise ImageRefused(f"{name}: an extent line of its descriptor names no file: {line.strip()[:80]!r}")
        extent = m.group(1)
        if not extent or "/" in extent or ":" in extent or extent in (".", ".."):
            raise ImageRefused(f"{name} names an extent outside its folder: {extent[:80]!r}")
        target = folder / extent
        try:
            st = os.lstat(target)
        except OSError:
            raise ImageRefused(f"{name} names an extent that is not there: {extent!r}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ImageRefused(f"{name}: its extent {extent!r} is not a regular file")
        allowed.add(str(target))
    return allowed


async def _info(
    qemu_img: str, path: str | Path, fmt: str, name: str, *, reads: list[Path], cwd: Path | None = None, **details: Any
) -> dict[str, Any]:
    argv = [qemu_img, "info", "-U", "-f", fmt, "--output=json", str(path)]
    status, out, err = await images.run_tool(argv, "qemu-img info", reads=reads, cwd=cwd, **details)
    if status != 0:
        raise ImageRefused(f"{name} is not a {fmt} image qemu-img can read: {images.last_line(err) or status}", **details)
    try:
        info = json.loads(out)
        if not isinstance(info, dict) or not isinstance(info.get("virtual-size"), int):
            raise ValueError(out[:80])
    except ValueError:
        raise DriverError(f"qemu-img info of {name} gave unexpected output", **details) from None
    return info


def _check_info(info: dict[str, Any], name: str, fmt: str, max_virtual_size: int, allowed: set[str]) -> None:
    """Refuse what `qemu-img info -f fmt` shows that would make the image read other files."""
    if info.get("format") != fmt:
        raise ImageRefused(f"{name} is not a {fmt} image")
    backing = info.get("backing-filename") or info.get("full-backing-filename")
    if backing:
        raise ImageRefused(f"{name} has a backing file ({_shown(backing)}); give a standalone image (qemu-img convert -O qcow2)")
    data = (info.get("format-specific") or {}).get("data") or {}
    if data.get("data-file"):
        raise ImageRefused(f"{name} keeps its data in an external data file ({_shown(data['data-file'])}); give a standalone image")
    for extent in data.get("extents") or []:
        filename = str((extent or {}).get("filename", ""))
        if filename not in allowed:
            raise ImageRefused(f"{name} names an extent other than its own file ({_shown(filename)}); give a single-file image")
    for key, value in _strings(info):  # anything else naming a file: json: or a protocol
        if key in ("filename", "backing-filename", "full-backing-filename", "data-file") and value not in allowed:
            raise ImageRefused(f"{name} names another file ({_shown(value)})")
    size = int(info["virtual-size"])
    if size <= 0:
        raise ImageRefused(f"{name} has a virtual size of 0")
    if size > max_virtual_size:
        raise ImageRefused(
            f"{name} has a virtual size of {size / GIB:.1f} GiB, over the limit of {max_virtual_size / GIB:.0f} GiB "
            "(VMPLANE_MAX_IMAGE_VIRTUAL_GB)"
        )


def _strings(value: Any, key: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _strings(v, str(k))]
    if isinstance(value, list):
        return [kv for v in value for kv in _strings(v, key)]
    return [(key, value)] if isinstance(value, str) else []


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 120 else text[:117] + "..."


__all__ = ["FORMATS", "ImageRefused", "Intaken", "check_standalone", "detect_format", "intake"]
