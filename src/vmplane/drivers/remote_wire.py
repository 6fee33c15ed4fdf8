"""What the control plane and a node agent say to each other, spoken by the remote driver
and by `vmplane.agent`: the driver contract's values in JSON (camelCase, like the native
API), errors that keep their type, a sparse-disk stream and NDJSON progress streams for long
calls.

Parsers here take what came over the network: every value is type-checked, and every id that
becomes a path is checked with `ids.looks_like_id`. A bad value raises `InvalidRequest`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from .. import errors, ids
from ..domain import Resources, VmSpec
from ..domain.network import Firewall, Nic
from ..errors import InvalidRequest, Reason, VmplaneError
from ..pci import PciDevice
from .base import CallOrder, Capabilities, ExecResult, GuestState, ImageInfo, MigrationTarget, NodeInfo, PowerState, VmRuntime, VmStats

AGENT_PREFIX = "/agent/v1"
"""Where a node agent serves its driver."""
CONTROL_PREFIX = "/api/v1/agent"
"""Where the control plane serves its agents (they authenticate with their node credential)."""
CREDENTIAL_PREFIX = "vmn_"
JOIN_TOKEN_PREFIX = "vmj_"
CONTROL_KEY_PREFIX = "vmk_"


ORDER_HEADER = "x-vmplane-call-order"
"""The order of a changing call made by a run of a task: `<resource> <seq> <attempt> <call>`
(`base.CallOrder`); the agent refuses a call older than one it already took on that resource."""


def order_to_wire(order: CallOrder) -> str:
    return f"{order.resource} {order.seq} {order.attempt} {order.call}"


def order_from_wire(value: str) -> CallOrder:
    parts = value.split(" ")
    if len(parts) != 4 or not ids.looks_like_id(parts[0]) or not all(p.isdigit() and len(p) <= 18 for p in parts[1:]):
        raise InvalidRequest(f"{ORDER_HEADER} must be '<resource id> <seq> <attempt> <call>'", field=ORDER_HEADER)
    return CallOrder(int(parts[1]), int(parts[2]), int(parts[3]), parts[0])


def digest(secret: str) -> str:
    """What is stored of a secret: its SHA-256 (hex)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def bearer(headers: Any) -> str | None:
    """The token of an `Authorization: Bearer …` header, if any."""
    auth = headers.get("authorization") or ""
    return auth[7:].strip() if auth[:7].lower() == "bearer " else None


# -- checking what came over the wire ----------------------------------------------------------


def _get(d: Any, key: str, kind: type | tuple[type, ...], where: str, *, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise InvalidRequest(f"{where} must be an object", field=where)
    value = d.get(key)
    if value is None and optional:
        return None
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidRequest(f"{where}.{key} is missing or of the wrong type", field=f"{where}.{key}")
    return value


def check_id(value: Any, what: str) -> str:
    if not isinstance(value, str) or not ids.looks_like_id(value):
        raise InvalidRequest(f"{what} {value!r} is not a vmplane id", field=what)
    return value


# -- values ----------------------------------------------------------------------------------


def resources_from_wire(d: Any, where: str = "resources") -> Resources:
    return Resources(_get(d, "cpu", int, where), _get(d, "ramMb", int, where), _get(d, "diskGb", int, where))


def spec_to_wire(spec: VmSpec) -> dict[str, Any]:
    return {
        "id": spec.id,
        "uuid": spec.uuid,
        "name": spec.name,
        "resources": spec.resources.to_wire(),
        "templateId": spec.template_id,
        "templateImage": spec.template_image,
        "templateBoot": spec.template_boot,
        "extra": spec.extra,
        "nics": [n.to_wire() for n in spec.nics],
        "firewall": spec.firewall.to_wire(),
        "pciDevices": list(spec.pci_devices),
    }


def spec_from_wire(d: Any) -> VmSpec:
    boot = _get(d, "templateBoot", dict, "spec", optional=True)
    if boot is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in boot.items()):
        raise InvalidRequest("spec.templateBoot must map names to strings", field="spec.templateBoot")
    try:
        nics = tuple(Nic.from_wire(n) for n in _get(d, "nics", list, "spec"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"spec.nics: {exc}", field="spec.nics") from None
    template_id = _get(d, "templateId", str, "spec", optional=True)
    return VmSpec(
        id=check_id(_get(d, "id", str, "spec"), "spec.id"),
        uuid=_get(d, "uuid", str, "spec"),
        name=_get(d, "name", str, "spec"),
        resources=resources_from_wire(_get(d, "resources", dict, "spec"), "spec.resources"),
        template_id=None if template_id is None else check_id(template_id, "spec.templateId"),
        template_image=_get(d, "templateImage", str, "spec", optional=True),
        template_boot=boot,
        extra=_get(d, "extra", dict, "spec"),
        nics=nics,
        firewall=Firewall.from_wire(_get(d, "firewall", dict, "spec", optional=True)),
        pci_devices=tuple(str(a) for a in _get(d, "pciDevices", list, "spec")),
    )


def runtime_to_wire(r: VmRuntime) -> dict[str, Any]:
    running = r.running.to_wire() if r.running is not None else None
    return {"vmId": r.vm_id, "state": str(r.state), "startedAt": r.started_at, "error": r.error, "running": running}


def runtime_from_wire(d: Any) -> VmRuntime:
    try:
        state = PowerState(_get(d, "state", str, "runtime"))
    except ValueError:
        raise InvalidRequest(f"runtime.state {d.get('state')!r} is not a power state", field="runtime.state") from None
    started = _get(d, "startedAt", (int, float), "runtime", optional=True)
    running = _get(d, "running", dict, "runtime", optional=True)  # (an agent from before issue 22 omits it)
    return VmRuntime(
        vm_id=_get(d, "vmId", str, "runtime"), state=state, started_at=started, error=_get(d, "error", str, "runtime", optional=True),
        running=resources_from_wire(running, "runtime.running") if running is not None else None,
    )


GUEST_WAIT_MAX = 300.0
"""the longest `guest_state` wait one request to an agent may ask for"""


def guest_to_wire(g: GuestState) -> dict[str, Any]:
    return {"ready": g.ready, "boot": g.boot, "hostKeys": list(g.host_keys), "detail": g.detail}


def guest_from_wire(d: Any) -> GuestState:
    keys = _get(d, "hostKeys", list, "guest")
    if not all(isinstance(k, str) for k in keys):
        raise InvalidRequest("guest.hostKeys must be strings", field="guest.hostKeys")
    return GuestState(
        ready=_get(d, "ready", bool, "guest"), boot=_get(d, "boot", str, "guest"), host_keys=tuple(keys),
        detail=_get(d, "detail", str, "guest"),
    )  # fmt: skip


def exec_to_wire(r: ExecResult) -> dict[str, Any]:
    return {
        "exitCode": r.exit_code, "stdout": base64.b64encode(r.stdout).decode(), "stderr": base64.b64encode(r.stderr).decode(),
        "timedOut": r.timed_out, "stdoutTruncated": r.stdout_truncated, "stderrTruncated": r.stderr_truncated,
        "durationMs": r.duration_ms,
    }  # fmt: skip


def exec_from_wire(d: Any) -> ExecResult:
    return ExecResult(
        exit_code=_get(d, "exitCode", int, "exec", optional=True),
        stdout=base64.b64decode(_get(d, "stdout", str, "exec")),
        stderr=base64.b64decode(_get(d, "stderr", str, "exec")),
        timed_out=_get(d, "timedOut", bool, "exec"),
        stdout_truncated=_get(d, "stdoutTruncated", bool, "exec"),
        stderr_truncated=_get(d, "stderrTruncated", bool, "exec"),
        duration_ms=_get(d, "durationMs", int, "exec"),
    )


_STATS = {f.name: "".join(p.capitalize() if i else p for i, p in enumerate(f.name.split("_"))) for f in fields(VmStats) if f.name != "memory_source"}
MEMORY_SOURCES = ("guest", "host-rss")


def stats_to_wire(s: VmStats) -> dict[str, Any]:
    return {**{wire: getattr(s, name) for name, wire in _STATS.items()}, "memorySource": s.memory_source}


def stats_from_wire(d: Any) -> VmStats:
    source = _get(d, "memorySource", str, "stats", optional=True) or "host-rss"  # an agent from before it said
    if source not in MEMORY_SOURCES:
        raise InvalidRequest(f"stats.memorySource must be one of {', '.join(MEMORY_SOURCES)}", field="stats.memorySource")
    return VmStats(**{name: _get(d, wire, (int, float), "stats") for name, wire in _STATS.items()}, memory_source=source)


def image_to_wire(i: ImageInfo) -> dict[str, Any]:
    return {"path": str(i.path), "format": i.format, "virtualSize": i.virtual_size, "actualSize": i.actual_size}


def image_from_wire(d: Any) -> ImageInfo:
    return ImageInfo(
        path=Path(_get(d, "path", str, "image")), format=_get(d, "format", str, "image"),
        virtual_size=_get(d, "virtualSize", int, "image"), actual_size=_get(d, "actualSize", int, "image"),
    )  # fmt: skip


def node_info_to_wire(n: NodeInfo) -> dict[str, Any]:
    return {
        "hostname": n.hostname, "cpu": n.cpu, "ramMb": n.ram_mb, "diskGb": n.disk_gb, "labels": dict(n.labels),
        "pciDevices": [d.to_wire() for d in n.pci_devices],
    }  # fmt: skip


def node_info_from_wire(d: Any) -> NodeInfo:
    labels = _get(d, "labels", dict, "node")
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256 for k, v in labels.items()):
        raise InvalidRequest("node.labels must map short names to short strings", field="node.labels")
    try:
        devices = tuple(PciDevice.from_wire(x) for x in _get(d, "pciDevices", list, "node"))
    except (KeyError, TypeError, AttributeError) as exc:
        raise InvalidRequest(f"node.pciDevices: {exc}", field="node.pciDevices") from None
    hostname = _get(d, "hostname", str, "node")
    if not 0 < len(hostname) <= 255:
        raise InvalidRequest("node.hostname must have 1 to 255 characters", field="node.hostname")
    cpu, ram, disk = _get(d, "cpu", int, "node"), _get(d, "ramMb", int, "node"), _get(d, "diskGb", int, "node")
    if min(cpu, ram, disk) < 1:
        raise InvalidRequest("node capacity must be positive", field="node")
    return NodeInfo(hostname=hostname, cpu=cpu, ram_mb=ram, disk_gb=disk, labels=labels, pci_devices=devices)


def capabilities_to_wire(c: Capabilities) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(Capabilities):
        value = getattr(c, f.name)
        out[f.name] = sorted(value) if isinstance(value, frozenset) else value
    return out


def capabilities_from_wire(d: Any) -> Capabilities:
    if not isinstance(d, dict):
        raise InvalidRequest("capabilities must be an object", field="capabilities")
    values: dict[str, Any] = {}
    for f in fields(Capabilities):
        if f.name not in d:
            continue
        v = d[f.name]
        if isinstance(f.default, frozenset):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise InvalidRequest(f"capabilities.{f.name} must be a list of strings", field=f"capabilities.{f.name}")
            v = frozenset(v)
        elif f.name in ("kind", "hypervisor"):
            if not isinstance(v, str):
                raise InvalidRequest(f"capabilities.{f.name} must be a string", field=f"capabilities.{f.name}")
        elif not isinstance(v, bool):
            raise InvalidRequest(f"capabilities.{f.name} must be true or false", field=f"capabilities.{f.name}")
        values[f.name] = v
    if "kind" not in values or "real_vms" not in values:
        raise InvalidRequest("capabilities need kind and real_vms", field="capabilities")
    return Capabilities(**values)


def remote_capabilities(agent: Capabilities) -> Capabilities:
    """What the control plane's `remote` driver of a node declares: the agent's driver's, on
    another host (its `hypervisor` stays the agent's qemu or sim)."""
    # no CD-ROM: ISO files are the control plane's, and nothing copies them to an agent's host yet
    return replace(agent, kind="remote", local=False, cdrom=False)


def target_to_wire(t: MigrationTarget) -> dict[str, Any]:
    return {"host": t.host, "migratePort": t.migrate_port, "nbdPort": t.nbd_port, "export": t.export}


def target_from_wire(d: Any) -> MigrationTarget:
    t = MigrationTarget(
        host=_get(d, "host", str, "target"), migrate_port=_get(d, "migratePort", int, "target"),
        nbd_port=_get(d, "nbdPort", int, "target"), export=_get(d, "export", str, "target"),
    )  # fmt: skip
    if not (0 < t.migrate_port < 65536 and 0 < t.nbd_port < 65536) or not t.export.replace("-", "").isalnum():
        raise InvalidRequest("target ports or export name are not valid", field="target")
    return t


# -- errors ----------------------------------------------------------------------------------

_ERROR_TYPES: dict[str, type[VmplaneError]] = {
    cls.__name__: cls
    for cls in (
        errors.VmplaneError, errors.InvalidRequest, errors.Unauthorized, errors.Forbidden, errors.NotFound,
        errors.Conflict, errors.InvalidState, errors.NoCapacity, errors.NotReady, errors.DriverError,
        errors.PayloadTooLarge, errors.TaskCancelled, errors.ImageRefused, errors.Superseded,
    )
}  # fmt: skip


R = Reason
STATUS: dict[Reason, int] = {
    R.INTERNAL: 500, R.INVALID: 400, R.BEYOND_ANY_NODE: 400, R.CANNOT_SHRINK: 400, R.OVER_LIMIT: 400,
    R.UNAUTHORIZED: 401, R.FORBIDDEN: 403, R.RATE_LIMITED: 429, R.NOT_FOUND: 404,
    R.CONFLICT: 409, R.NAME_TAKEN: 409, R.IN_PROGRESS: 409, R.UNSUPPORTED: 409, R.WRONG_STATE: 409, R.QUOTA_EXCEEDED: 409,
    R.PAYLOAD_TOO_LARGE: 413, R.BODY_TOO_LARGE: 400, R.OUTBOUND_REFUSED: 400, R.NO_CAPACITY: 503, R.NOT_READY: 503,
    R.DRIVER_FAILED: 502, R.IMAGE_REFUSED: 400, R.VCENTER_FAILED: 502, R.BACKUP_STORE_FAILED: 500, R.CANCELLED: 500,
}  # fmt: skip
"""the agent's HTTP status for each reason (a WebSocket closes with 4000 + it); the control
plane reads the error's `type` and `code` (its reason), the status only when the body is not ours"""
REASONS = frozenset(r.value for r in Reason)


def error_to_wire(exc: VmplaneError) -> dict[str, Any]:
    name = type(exc).__name__ if type(exc).__name__ in _ERROR_TYPES else "VmplaneError"
    return {"error": exc.message, "code": exc.reason.value, "type": name, "details": _jsonable(exc.details)}


def error_from_wire(status: int, body: Any, node_id: str) -> VmplaneError:
    """The error an agent answered, as the exception type it raised (DriverError when the
    answer is not one of ours: a proxy's error page, say)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _ERROR_TYPES.get(str(body.get("type")), errors.DriverError)
        raw = body.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        exc = cls.__new__(cls)
        VmplaneError.__init__(exc, body["error"], **details)
        if body.get("code") in REASONS:
            exc.reason = Reason(body["code"])
        if isinstance(exc, errors.InvalidRequest):
            exc.field = details.get("field")
        return exc
    return errors.DriverError(f"node {node_id}: the agent answered HTTP {status}", node_id=node_id)


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {k: str(v) for k, v in value.items()} if isinstance(value, dict) else str(value)


# -- NDJSON streams of long calls ------------------------------------------------------------
# A long call (an image fetch, a migration) answers 200 at once and then one JSON object per
# line: {"progress": pct, "message": ...}, {"keepalive": true} every few seconds, and last
# {"result": ...} or {"error": ..., "type": ...} (the error shape above).


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# -- sparse disk images on the wire ----------------------------------------------------------
# A raw disk image is mostly holes; it travels as its data extents only:
#   MAGIC, size (u64), then records (offset u64, length u32, bytes), then the end record
#   (offset = END, length = 32) and the SHA-256 of everything before it.

SPARSE_MAGIC = b"VMPLANE-SPARSE-1\n"
_RECORD = struct.Struct(">QI")
_END = 2**64 - 1
CHUNK = 4 << 20


def data_extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the parts of a file that hold data (SEEK_DATA/SEEK_HOLE), in chunks
    of at most CHUNK bytes."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole remains
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        for off in range(start, end, CHUNK):
            yield off, min(CHUNK, end - off)
        pos = end


def sparse_chunks(path: Path) -> Iterator[bytes]:
    """The sparse stream of the file at `path` (blocking reads: iterate in a thread)."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = SPARSE_MAGIC + struct.pack(">Q", size)
        sha.update(head)
        yield head
        zero = bytes(CHUNK)
        for off, length in data_extents(f.fileno(), size):
            data = os.pread(f.fileno(), length, off)
            if data == zero[: len(data)]:
                continue  # allocated but zero: a hole on the other side too
            rec = _RECORD.pack(off, len(data))
            sha.update(rec)
            sha.update(data)
            yield rec + data
    yield _RECORD.pack(_END, 32) + sha.digest()


async def async_sparse_chunks(path: Path) -> AsyncIterator[bytes]:
    """`sparse_chunks`, reading in a worker thread, for a streamed HTTP body."""
    it = sparse_chunks(path)
    sentinel = object()
    while True:
        chunk = await asyncio.to_thread(next, it, sentinel)
        if chunk is sentinel:
            return
        yield chunk  # type: ignore[misc]


class SparseWriter:
    """Writes a sparse stream, fed in arbitrary pieces, into a file. `feed` raises
    InvalidRequest on anything malformed; `close` checks the stream ended, checksum included."""

    def __init__(self, path: Path, max_size: int | None = None) -> None:
        self.path = path
        self.max_size = max_size
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._buf = bytearray()
        self._sha = hashlib.sha256()
        self._size: int | None = None
        self._done = False
        self.size = 0

    def feed(self, data: bytes) -> None:
        if self._done and data:
            raise InvalidRequest("data after the end of the disk stream")
        self._buf += data
        while not self._done:
            if self._size is None:
                need = len(SPARSE_MAGIC) + 8
                if len(self._buf) < need:
                    return
                if bytes(self._buf[: len(SPARSE_MAGIC)]) != SPARSE_MAGIC:
                    raise InvalidRequest("not a vmplane disk stream")
                (self._size,) = struct.unpack(">Q", self._buf[len(SPARSE_MAGIC) : need])
                if self.max_size is not None and self._size > self.max_size:
                    raise InvalidRequest(f"the image ({self._size} bytes) is larger than the disk ({self.max_size} bytes)")
                os.ftruncate(self._fd, self._size)
                self.size = self._size
                self._sha.update(self._buf[:need])
                del self._buf[:need]
                continue
            if len(self._buf) < _RECORD.size:
                return
            off, length = _RECORD.unpack(self._buf[: _RECORD.size])
            if len(self._buf) < _RECORD.size + length:
                if length > CHUNK:
                    raise InvalidRequest("disk stream record too long")
                return
            body = bytes(self._buf[_RECORD.size : _RECORD.size + length])
            if off == _END:
                if length != 32 or body != self._sha.digest():
                    raise InvalidRequest("disk stream checksum mismatch: the transfer was damaged")
                self._done = True
            else:
                if length > CHUNK or off + length > self._size:
                    raise InvalidRequest("disk stream record outside the image")
                self._sha.update(self._buf[: _RECORD.size + length])
                os.pwrite(self._fd, body, off)
            del self._buf[: _RECORD.size + length]

    def close(self) -> None:
        os.close(self._fd)
        if not self._done:
            raise InvalidRequest("the disk stream ended early")

    def abort(self) -> None:
        try:
            os.close(self._fd)
        except OSError:
            pass
        self.path.unlink(missing_ok=True)
