"""vm-import: bring a VM in from an OVA, a disk image, vSphere or another vmplane
(services/imports.py says what each source is).

Stages, each recorded on the import with the bytes it moved:
`connecting` (open the source, learn the VM's shape), `exporting` (fetch what is not local:
a download, vSphere's export lease or datastore files), `converting` (the boot disk through
`drivers.qemu.intake`: copied into the work folder first if it is not there yet, such as a
file of an import directory or an OVA's member, then checked and converted to a standalone
qcow2; an image that would make qemu-img read other files is refused with the reason),
`defining` (record the VM, place it on a local node, define it with that disk as its own),
`starting` (if asked). Every http(s) fetch (a disk or OVA URL, the other vmplane of a
`vmplane` source) goes through the outbound policy (outbound.py), each redirect checked again,
at most `VMPLANE_MAX_DOWNLOAD_BYTES` of a disk and `VMPLANE_MAX_DOCUMENT_BYTES` of an answer
read, and no answer quoted in an error; vSphere's own fetches are services/vsphere.py's.
The scratch files live in `<data>/imports/work/<import id>/`; a failed
or cancelled import removes them, and the VM (record, claim, definition) if it got that far.
A resumed attempt starts over unless the VM was already defined.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import shutil
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

import httpx
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from ... import clock, outbound
from ...auth import principal_of
from ...domain import ImportRequest, NewVm, Resources, Vm, VmStatus
from ...domain.login import LOGIN_USER_RE, ROOT
from ...domain.names import derive_name
from ...domain.network import DEFAULT_NETWORK
from ...domain.requests import STAGE_SPAN
from ...drivers.qemu import intake
from ...errors import Conflict, DriverError, InvalidRequest, VmplaneError
from ...ovf import OvfError, parse_ovf
from ...placement import Demand
from ...store import guest as guest_q
from ...store import imports as imp_q
from ...store import networks as net_q
from ...store import nodes as node_q
from ...store import vms as vm_q
from ..engine import TaskContext
from .base import BaseHandler, driver_of, vm_spec

log = logging.getLogger("vmplane.jobs")
CHUNK = 1 << 20
GIB = 1 << 30
BYTE_STAGES = ("exporting", "converting")


@dataclass
class SourceDisk:
    """One disk of the source as qemu-img reads it."""

    label: str
    filename: str
    """an absolute path (the OVA itself for an OVA's member)"""
    format: str | None
    size_hint: int = 0
    member: tuple[int, int] | None = None
    """an OVA's member: (offset, size) of its bytes inside the tar"""
    extents_dir: Path | None = None
    """a VMDK descriptor vmplane downloaded with its extents (vSphere's datastore export):
    the folder they are in"""


@dataclass
class Shape:
    """What the source says the VM is."""

    name: str
    cpu: int
    ram_mb: int
    disks: list[SourceDisk] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    """the source network of each NIC, in order"""
    cdroms: int = 0
    os: str = ""
    firmware: str = "bios"
    login_user: str | None = None
    """the user the source VM logs in as, when it says (another vmplane's `ssh.user`)"""

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name, "cpu": self.cpu, "ramMb": self.ram_mb, "disks": [d.label for d in self.disks],
            "networks": self.networks, "cdroms": self.cdroms, "os": self.os, "firmware": self.firmware,
        }  # fmt: skip


class _Tracker:
    """Stage and bytes of the import, written at most twice a second, and the task's progress."""

    def __init__(self, ctx: TaskContext, imp_id: str) -> None:
        self.ctx = ctx
        self.imp_id = imp_id
        self.stage_name = "connecting"
        self.done = 0
        self.total: int | None = None
        self._tenth = -1
        self._written = 0.0

    async def stage(self, name: str, total: int | None = None) -> None:
        """Enter a stage; those that move bytes (exporting, converting) start counting
        again, the others keep the last transfer's figures on show."""
        self.stage_name = name
        values: dict[str, Any] = {}
        if name in BYTE_STAGES:
            self.done, self.total, self._tenth = 0, total, -1
            values = {"bytes_done": 0, "bytes_total": total}
        async with self.ctx.deps.store.write() as conn:
            await imp_q.set_import(conn, self.imp_id, stage=name, updated_at=clock.now(), **values)
        self._written = time.monotonic()
        await self.ctx.progress(STAGE_SPAN[name][0], f"stage: {name}")

    async def bytes(self, done: int, total: int | None, force: bool = False) -> None:
        tenth = min(10, done * 10 // total) if total else -1
        if tenth > self._tenth:  # the task's log shows the bytes too, every tenth
            self._tenth = tenth
            self.ctx.log(f"{self.stage_name}: {done} of {total} bytes")
        self.done, self.total = done, total
        if not force and time.monotonic() - self._written < 0.5:
            return
        self._written = time.monotonic()
        async with self.ctx.deps.store.write() as conn:
            await imp_q.set_import(conn, self.imp_id, bytes_done=done, bytes_total=total, updated_at=clock.now())
        start, end = STAGE_SPAN[self.stage_name]
        pct = start + (end - start) * min(done, total) // total if total else start
        await self.ctx.progress(pct)


def _work_dir(data_dir: Path, imp_id: str) -> Path:
    return data_dir / "imports" / "work" / imp_id


async def _load(ctx: TaskContext) -> Row[Any]:
    async with ctx.deps.store.read() as conn:
        row = await imp_q.get_import(conn, ctx.resource_id)
    if row is None:
        raise VmplaneError(f"import {ctx.resource_id} no longer exists")
    return row


class VmImport(BaseHandler):
    async def run(self, ctx: TaskContext) -> None:
        deps = ctx.deps
        row = await _load(ctx)
        if row.state == "succeeded":
            return
        req = deps.imports.request_of(row)
        who = principal_of(ctx.payload)
        track = _Tracker(ctx, row.id)
        if row.vm_id is not None:  # an earlier attempt recorded the VM
            vm = await self._vm(ctx, row.vm_id)
            if vm is not None and vm.node_id and await deps.registry.driver(vm.node_id).get_vm(vm.id) is not None:
                await self._finish(ctx, track, row, vm, req)
                return
            await self._forget_vm(ctx, row.vm_id)
        work = _work_dir(deps.data_dir, row.id)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        async with deps.store.write() as conn:
            await imp_q.set_import(conn, row.id, state="running", error=None, updated_at=clock.now())
        ctx.log(f"Starting import from a {req.source.type} source")
        await track.stage("connecting")
        shape = await self._fetch(ctx, track, req, work)
        async with deps.store.write() as conn:
            await imp_q.set_import(conn, row.id, shape=shape.to_wire(), updated_at=clock.now())
        if not shape.disks:
            raise VmplaneError("the source VM has no disk")
        if len(shape.disks) > 1:
            ctx.log(f"Warning: a vmplane VM has one disk: {shape.disks[0].label} is imported; {', '.join(d.label for d in shape.disks[1:])} are not")
        if shape.cdroms:
            ctx.log(f"{shape.cdroms} CD-ROM drive(s) of the source are not part of the VM")
        if shape.firmware == "efi":
            ctx.log("Warning: the source boots with EFI firmware; vmplane VMs boot with BIOS, so the guest may not boot")
        disk = work / "disk.qcow2"
        size = await self._convert(ctx, track, shape.disks[0], disk, work)
        await track.stage("defining")
        vm = await self._define(ctx, row, req, who, shape, disk, size)
        await self._finish(ctx, track, row, vm, req)
        shutil.rmtree(work, ignore_errors=True)

    # -- sources --------------------------------------------------------------------------

    async def _fetch(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path) -> Shape:
        kind = req.source.type
        if kind == "ova":
            return await self._ova(ctx, track, req, work)
        if kind == "disk":
            return await self._disk(ctx, track, req, work)
        if kind == "vsphere":
            return await self._vsphere(ctx, track, req, work)
        if kind == "vmplane":
            return await self._vmplane(ctx, track, req, work)
        raise VmplaneError(f"unknown source type {kind}")

    async def _local_or_download(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path, name: str) -> Path:
        """The source file: a local one (checked against the allowed directories again: the
        file may have changed since the request) or an http(s) download into `work`."""
        src = req.source
        imports = ctx.deps.imports
        if src.path is not None:
            path = imports.local_file(src.path, "source.path")
        elif urlparse(src.url or "").scheme == "file":
            path = imports.local_file(unquote(urlparse(src.url or "").path), "source.url")
        else:
            path = work / name
            await track.stage("exporting")
            await _download(str(src.url), path, track)
            return path
        size = path.stat().st_size
        await track.stage("exporting", size)
        await track.bytes(size, size, force=True)  # read in place: nothing to copy
        return path

    async def _ova(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path) -> Shape:
        path = await self._local_or_download(ctx, track, req, work, "source.ova")
        if path.suffix.lower() == ".ovf":  # an OVF package: descriptor and files side by side
            data = path.read_bytes()
            ovf = _parse(data)
            disks = []
            for d in ovf.disks:
                if req.source.url is not None and urlparse(req.source.url).scheme != "file":
                    raise VmplaneError("an .ovf by URL needs its files too: import the OVA instead")
                target = ctx.deps.imports.local_file(str(path.parent / _member_name(d.href)), "source.path")
                disks.append(SourceDisk(d.disk_id, str(target), _disk_format(d.format, d.href), d.capacity_bytes))
        else:
            ovf, disks = await asyncio.to_thread(_read_ova, path)
        ctx.log(f"OVF: {ovf.name}, {ovf.cpu} CPU, {ovf.memory_mb} MiB, {len(ovf.disks)} disk(s), {len(ovf.nics)} NIC(s)")
        return Shape(ovf.name, ovf.cpu, ovf.memory_mb, disks, [n.network for n in ovf.nics], ovf.cdroms, ovf.os, ovf.firmware)

    async def _disk(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path) -> Shape:
        path = await self._local_or_download(ctx, track, req, work, "source.img")
        stem = PurePosixPath(req.source.path or urlparse(req.source.url or "").path).stem or "imported"
        return Shape(stem, 1, 1024, [SourceDisk(path.name, str(path), req.source.format)])

    async def _vsphere(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path) -> Shape:
        deps = ctx.deps
        src = req.source
        secrets = deps.imports.secrets_of(ctx.payload)
        if "vsphere" in secrets:
            conn = deps.vsphere.unseal(secrets["vsphere"])
        else:
            conn = await deps.vsphere.connection(principal_of(ctx.payload), profile=src.profile, insecure=src.insecure)
        assert src.vm_path is not None
        info = await deps.vsphere.vm_info(conn, src.vm_path)
        ctx.log(f"vSphere: {info.vm.path} is {info.vm.power_state}, {info.vm.num_cpu} CPU, {info.vm.memory_mb} MiB, {len(info.disks)} disk(s)")
        cdroms = len(info.cdroms)
        if req.remove_cdroms and cdroms:
            await ctx.fence()  # a change at the source vCenter, made by no driver: fenced by hand
            removed = await deps.vsphere.remove_cdroms(conn, src.vm_path)
            ctx.log(f"removed {removed} CD-ROM drive(s) from the source VM")
        await track.stage("exporting", sum(d.capacity_bytes for d in info.disks) or None)

        async def progress(done: int, total: int | None) -> None:
            await track.bytes(done, total)

        info, files = await deps.vsphere.export_disks(conn, src.vm_path, work / "export", progress, src.export_method)
        await track.bytes(track.done, track.total, force=True)
        via = "the NFC export lease" if files and files[0].via == "lease" else "datastore download"
        ctx.log(f"fetched {len(files)} disk(s) by {via} ({track.done} bytes)")
        disks = [SourceDisk(f.label, str(f.path), None, f.capacity_bytes, extents_dir=f.path.parent if f.via == "datastore" else None) for f in files]
        firmware = "efi" if info.firmware.lower() == "efi" else "bios"
        return Shape(info.vm.name, info.vm.num_cpu, info.vm.memory_mb, disks, [n.network for n in info.nics], cdroms, info.vm.guest_os, firmware)

    async def _vmplane(self, ctx: TaskContext, track: _Tracker, req: ImportRequest, work: Path) -> Shape:
        src = req.source
        key = ctx.deps.imports.secrets_of(ctx.payload).get("apiKey", "")
        base = str(src.url).rstrip("/")
        headers = {"Authorization": f"Bearer {key}"}
        deps = ctx.deps
        try:
            async with deps.outbound.client(timeout=30) as client:
                async with outbound.opened(client, "GET", f"{base}/api/v1/vms/{src.vm_id}", headers=headers) as r:
                    if r.status_code != 200:  # its answer is not repeated: it may be anything's
                        raise VmplaneError(f"{base} answered HTTP {r.status_code} for VM {src.vm_id}")
                    body = await outbound.read_limited(r, deps.outbound.max_document_bytes, f"the answer of {base}")
        except httpx.HTTPError as exc:
            raise VmplaneError(f"cannot reach {base}: {outbound.describe(exc)}") from None
        try:
            vm = json.loads(body)
        except ValueError:
            vm = None
        if not isinstance(vm, dict):
            raise VmplaneError(f"{base} did not answer with a vmplane VM (not a JSON object)")
        res = vm.get("resources") or {}
        path = work / "source.qcow2"
        await track.stage("exporting", int(res.get("diskGb") or 0) * GIB or None)
        await _download(f"{base}/api/v1/vms/{src.vm_id}/disk", path, track, headers)
        nets = [n.get("network") or n.get("networkId") or "" for n in (vm.get("nics") or [])]
        login = (vm.get("ssh") or {}).get("user") if isinstance(vm.get("ssh"), dict) else None
        return Shape(
            str(vm.get("name") or src.vm_id), int(res.get("cpu") or 1), int(res.get("ramMb") or 1024), [SourceDisk("disk", str(path), "qcow2")], nets,
            login_user=login if isinstance(login, str) and LOGIN_USER_RE.fullmatch(login) else None,
        )  # fmt: skip

    # -- conversion ---------------------------------------------------------------------------

    async def _convert(self, ctx: TaskContext, track: _Tracker, disk: SourceDisk, dest: Path, work: Path) -> int:
        """The boot disk through `intake` to a standalone qcow2; returns its virtual size.
        A source outside the work folder (an import directory's file, an OVA's member) is
        copied in first, so that what intake inspects is what it converts."""
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise VmplaneError("qemu-img is not installed on the control plane's host")
        await track.stage("converting", disk.size_hint or None)
        source = Path(disk.filename)
        if disk.member is not None or not source.is_relative_to(work):
            copy = work / "source.disk"
            await asyncio.to_thread(_copy_out, source, copy, disk.member)
            source = copy
        made = await intake.intake(
            qemu_img, source, dest, max_virtual_size=ctx.deps.settings.max_image_virtual_gb << 30,
            fmt=disk.format, extents_dir=disk.extents_dir, label=disk.label, progress=track.bytes,
        )  # fmt: skip
        await track.bytes(made.virtual_size, made.virtual_size, force=True)
        ctx.log(f"converted {disk.label} ({made.source_format}, {made.virtual_size} bytes) to qcow2")
        return made.virtual_size

    # -- the VM ------------------------------------------------------------------------------

    async def _define(self, ctx: TaskContext, row: Row[Any], req: ImportRequest, who: Any, shape: Shape, disk: Path, size: int) -> Vm:
        deps = ctx.deps
        name = req.name or derive_name(shape.name, "imported")
        resources = Resources(
            req.cpu or max(1, shape.cpu), req.ram_mb or max(64, shape.ram_mb), max(req.disk_gb or 0, max(1, math.ceil(size / GIB))),
        )  # fmt: skip
        nets: list[str] = []
        for source_net in shape.networks:  # mapped, or the default network
            target = req.network_mapping.get(source_net) or DEFAULT_NETWORK
            if target in nets:
                ctx.log(f"a second NIC on {target} (source network {source_net!r}) is left out: one NIC per network")
            else:
                nets.append(target)
        networks = tuple(nets)
        spec = NewVm(
            name=name, resources=resources, template_id=None, node_id=req.node_id, tags=req.tags, start=req.start,
            extra={"imported": {"importId": row.id, "source": req.source.type, "os": shape.os}, **seed_fields(req),
                   "loginUser": req.login_user or shape.login_user or ROOT},
            networks=networks,
        )  # fmt: skip
        async with deps.store.write() as conn:
            try:
                vm_row = await deps.vms.record(conn, spec, who)
            except InvalidRequest as exc:
                raise VmplaneError(f"the VM cannot be recorded: {exc.message}") from None
            except Conflict as exc:
                raise VmplaneError(exc.message) from None
            await imp_q.set_import(conn, row.id, vm_id=vm_row["id"], name=name, updated_at=clock.now())
        vm_id = vm_row["id"]
        ctx.log(f"recorded VM {vm_id} ({name}: {resources.cpu} CPU, {resources.ram_mb} MiB, {resources.disk_gb} GB)")
        vm = await self._vm(ctx, vm_id)
        assert vm is not None
        # a node of this host that this process serves: the image is a file here (agents'
        # nodes are other hosts; other replicas' nodes other processes, maybe other hosts)
        here = {n for n, d in deps.registry.items() if d.capabilities.local}
        async with deps.store.read() as conn:
            elsewhere = frozenset(n.id for n in await node_q.list_nodes(conn) if n.id not in here)
        if req.node_id is not None and req.node_id in elsewhere:
            raise VmplaneError(f"{req.node_id} is not a node of this host (imported disks are files here); leave nodeId out or name a local node")
        demand = Demand(
            cpu=vm.cpu, ram_mb=vm.ram_mb, disk_gb=vm.disk_gb, node_id=req.node_id, exclude=elsewhere,
            network_types=vm.spec.network_types,
        )  # fmt: skip
        async with deps.store.write() as conn:
            node_id = await deps.capacity.place_and_claim(conn, demand, vm.id)
            await vm_q.set_status(conn, vm.id, VmStatus.PROVISIONING.value, node_id=node_id, updated_at=clock.now())
        vm = await self._vm(ctx, vm_id)
        assert vm is not None
        driver = deps.registry.driver(node_id)
        if (line := await deps.guest.prepare_ssh(vm.id, driver)) is not None:  # as every VM made on a qemu node
            ctx.log(line)
            vm = await self._vm(ctx, vm_id)
            assert vm is not None
        await driver.create_vm(replace(await vm_spec(ctx, vm), disk_image=str(disk)))
        ctx.log(f"defined on {node_id} with the imported disk")
        return vm

    async def _finish(self, ctx: TaskContext, track: _Tracker, row: Row[Any], vm: Vm, req: ImportRequest) -> None:
        driver = driver_of(ctx, vm)
        status, started, running = VmStatus.STOPPED, None, None
        if req.start:
            await track.stage("starting")
            await driver.start_vm(vm.id)
            runtime = await driver.get_vm(vm.id)
            status, started = VmStatus.RUNNING, (runtime.started_at if runtime and runtime.started_at else clock.now())
            running = runtime.running_spec if runtime is not None else None
            ctx.log("started")

        async def done(conn: AsyncConnection) -> None:
            await vm_q.set_status(conn, vm.id, status.value, started_at=started, updated_at=clock.now(), running_spec=running)
            await imp_q.set_import(conn, row.id, state="succeeded", updated_at=clock.now(), finished_at=clock.now())

        ctx.defer(done)

    async def _vm(self, ctx: TaskContext, vm_id: str) -> Vm | None:
        async with ctx.deps.store.read() as conn:
            return await vm_q.get_vm(conn, vm_id)

    async def _forget_vm(self, ctx: TaskContext, vm_id: str) -> None:
        """Remove the import's VM entirely: definition, claim, addresses, ports, record."""
        deps = ctx.deps
        vm = await self._vm(ctx, vm_id)
        if vm is None:
            return
        if vm.node_id is not None:
            await deps.registry.driver(vm.node_id).delete_vm(vm.id)
        async with deps.store.write() as conn:
            if vm.node_id is not None:
                await deps.capacity.release(conn, vm.node_id, *vm.held)
                await net_q.release_devices(conn, vm.id)
            await deps.billing.released(conn, vm.id)
            await guest_q.release_ports(conn, vm.id)
            await net_q.release_vm(conn, vm.id)
            await vm_q.delete_vm(conn, vm.id)
            await imp_q.set_import(conn, ctx.resource_id, vm_id=None, updated_at=clock.now())

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        deps = ctx.deps
        async with deps.store.read() as conn:
            row = await imp_q.get_import(conn, ctx.resource_id)
        shutil.rmtree(_work_dir(deps.data_dir, ctx.resource_id), ignore_errors=True)
        if row is None:
            return
        if row.vm_id is not None:
            try:
                await self._forget_vm(ctx, row.vm_id)
            except DriverError as exc:
                ctx.log(f"could not remove the VM from its node: {exc.message}; delete VM {row.vm_id}")
        async with deps.store.write() as conn:
            await imp_q.set_import(
                conn, row.id, state="cancelled" if cancelled else "failed", error=error, updated_at=clock.now(), finished_at=clock.now()
            )
        ctx.log("cleaned up: no VM and no disk file of this import is left")

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        await imp_q.set_import(conn, task.resource_id, state="cancelled", error="cancelled before it started", updated_at=clock.now(), finished_at=clock.now())


def _parse(data: bytes) -> Any:
    try:
        return parse_ovf(data)
    except OvfError as exc:
        raise VmplaneError(f"bad OVF descriptor: {exc}") from None


def _member_name(href: str) -> str:
    name = PurePosixPath(unquote(href)).name
    if not name or name in (".", "..") or href.startswith(("/", "http:", "https:", "file:")):
        raise VmplaneError(f"the OVF names a file outside its package: {href!r}")
    return name


def _disk_format(ovf_format: str, href: str) -> str | None:
    if "vmdk" in ovf_format.lower() or href.lower().endswith(".vmdk"):
        return "vmdk"
    if href.lower().endswith(".qcow2"):
        return "qcow2"
    if href.lower().endswith((".img", ".raw")):
        return "raw"
    return None


def _read_ova(path: Path) -> tuple[Any, list[SourceDisk]]:
    """The OVF of an OVA (a tar) and its disks as byte ranges of the tar (read in place)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            ovf_member = next((m for m in members if m.isreg() and m.name.lower().endswith(".ovf")), None)
            if ovf_member is None:
                raise VmplaneError("the OVA has no .ovf descriptor")
            fh = tar.extractfile(ovf_member)
            assert fh is not None
            ovf = _parse(fh.read((4 << 20) + 1))
    except tarfile.TarError as exc:
        raise VmplaneError(f"the OVA is not a tar archive: {exc}") from None
    by_name = {PurePosixPath(m.name).name: m for m in members if m.isreg()}
    disks = []
    for d in ovf.disks:
        member = by_name.get(_member_name(d.href))
        if member is None:
            raise VmplaneError(f"the OVA has no file {d.href!r} (disk {d.disk_id})")
        fmt = _disk_format(d.format, d.href) or "vmdk"
        disks.append(SourceDisk(d.disk_id, str(path), fmt, d.capacity_bytes, member=(member.offset_data, member.size)))
    return ovf, disks


def _copy_out(source: Path, dest: Path, member: tuple[int, int] | None) -> None:
    """Copy `source` (or the byte range `member` of it) to `dest`, sparse where it is zero."""
    offset, size = member if member is not None else (0, source.stat().st_size)
    with source.open("rb") as src, dest.open("wb") as out:
        src.seek(offset)
        left = size
        while left > 0:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise VmplaneError(f"{source.name} ends before its disk does")
            left -= len(chunk)
            if chunk.count(0) == len(chunk):
                out.seek(len(chunk), 1)
            else:
                out.write(chunk)
        out.truncate()


async def _download(url: str, dest: Path, track: _Tracker, headers: dict[str, str] | None = None) -> None:
    """GET `url` into `dest` through the outbound policy (redirects followed, each checked),
    at most VMPLANE_MAX_DOWNLOAD_BYTES."""
    done = 0
    policy = track.ctx.deps.outbound
    try:
        async with policy.client(timeout=httpx.Timeout(60.0, connect=15.0)) as client:
            async with outbound.opened(client, "GET", url, headers=headers or {}) as resp:
                if resp.status_code != 200:
                    raise VmplaneError(f"download failed: {urlparse(url).netloc} answered HTTP {resp.status_code}")
                total = int(resp.headers.get("content-length") or 0) or track.total
                with dest.open("wb") as out:
                    # as they arrive: a slow source still shows progress
                    async for chunk in outbound.aiter_limited(resp, policy.max_download_bytes, "the download"):
                        await asyncio.to_thread(out.write, chunk)
                        done += len(chunk)
                        await track.bytes(done, total)
    except httpx.HTTPError as exc:
        raise VmplaneError(f"download failed: {outbound.describe(exc)}") from None
    if done == 0:
        raise VmplaneError("the source is empty")
    await track.bytes(done, done, force=True)


def seed_fields(req: ImportRequest) -> dict[str, Any]:
    """What the imported VM's cloud-init seed carries from the request: its SSH keys and
    cloud-init documents, under the keys a VM create stores them."""
    out: dict[str, Any] = {}
    if req.ssh_keys:
        out["sshKeys"] = list(req.ssh_keys)
    if req.cloud_init:
        out["cloudInit"] = dict(req.cloud_init)
    return out
