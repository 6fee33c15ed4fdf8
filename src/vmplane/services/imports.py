"""Imports: bring a VM into vmplane from elsewhere — an OVA (file or URL), a disk image
(qcow2, raw, vmdk or vhdx; file or URL), a vSphere VM (vCenter or ESXi, by stored profile
or ad-hoc credentials) or a VM of another vmplane. An import is a job (`vm-import`, one task
whose resource is the import `imp-…`) that goes through the stages `connecting`,
`exporting`, `converting`, `defining`, `starting`, with the bytes moved recorded on the
import as it goes. The VM record exists only from `defining` on; a cancelled or failed import
leaves no VM and no disk file behind.

Local files are read only under the allowed directories (`VMPLANE_IMPORT_DIRS`, default
`<data dir>/imports`), whether named by `path` or by a `file://` URL. An http(s) URL, a
vCenter's and another vmplane's included, must pass the outbound policy (outbound.py) when
the import is asked for, and again when the job fetches it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from sqlalchemy import Row

from .. import clock, ids
from ..auth import Principal
from ..domain.login import check_login_user
from ..domain.requests import STAGE_SPAN, ImportRequest, ImportSource
from ..drivers.qemu import images
from ..errors import InvalidRequest, InvalidState, NotFound, RateLimited, VmplaneError
from ..store import imports as imp_q
from ..store import nodes as node_q
from . import pages
from .vms import check_name, check_ssh_keys, check_tags, get_visible_vm

if TYPE_CHECKING:
    from ..config import Settings
    from ..drivers.registry import NodeRegistry
    from ..jobs.engine import JobEngine
    from ..outbound import Outbound
    from ..store import Store
    from .networks import NetworkService
    from .vsphere import VsphereService


SOURCE_TYPES = ("ova", "disk", "vsphere", "vmplane")
DISK_FORMATS = ("qcow2", "raw", "vmdk", "vhdx")
EXPORT_METHODS = ("auto", "lease", "datastore")
ORIGIN_MAX_BYTES = 16 << 10
"""the largest `origin` (as JSON) an import keeps"""
SECRET_KEYS = frozenset(("password", "api_key", "apiKey", "apikey", "secret", "token"))
"""keys an `origin` never keeps, at any depth: an import stores no credential in clear"""


@dataclass(frozen=True)
class ImportView:
    """An import as the API shows it."""

    id: str
    job_id: str
    vm_id: str | None
    name: str
    source: dict[str, Any]
    options: dict[str, Any]
    state: str
    """queued, running, succeeded, failed, cancelled"""
    stage: str | None
    bytes_done: int
    bytes_total: int | None
    shape: dict[str, Any] | None
    """what the source said the VM is: cpu, ramMb, diskBytes, nics, cdroms, os"""
    error: str | None
    created_by: str
    created_at: float
    updated_at: float
    finished_at: float | None
    origin: dict[str, Any] | None = None
    """what the caller sent, in its own words (ImportRequest.origin); None: nothing kept"""

    @property
    def percent(self) -> int:
        """Progress through the stages, with bytes inside exporting and converting."""
        if self.state == "succeeded":
            return 100
        if self.stage is None:
            return 0
        start, end = STAGE_SPAN[self.stage]
        if self.bytes_total and self.stage in ("exporting", "converting"):
            return start + (end - start) * min(self.bytes_done, self.bytes_total) // self.bytes_total
        return start

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "jobId": self.job_id, "vmId": self.vm_id, "name": self.name, "source": self.source,
            "options": self.options, "state": self.state, "stage": self.stage, "progress": self.percent,
            "bytesDone": self.bytes_done, "bytesTotal": self.bytes_total, "shape": self.shape, "error": self.error,
            "createdBy": self.created_by, "createdAt": clock.rfc3339(self.created_at), "updatedAt": clock.rfc3339(self.updated_at),
            "finishedAt": clock.rfc3339(self.finished_at), "origin": self.origin,
        }  # fmt: skip


def _visible(row: Row[Any], who: Principal) -> bool:
    """An import is its organization's, and within it its job's team's (store/imports.py)."""
    return row.org_id == who.org_id and (who.team_id is None or row.job_team == who.team_id)


def view(row: Row[Any]) -> ImportView:
    options = dict(row.options)
    origin = options.pop("origin", None)  # kept in the options column (JSON), shown on its own
    return ImportView(
        row.id, row.job_id, row.vm_id, row.name, dict(row.source), options, row.state, row.stage, int(row.bytes_done or 0),
        row.bytes_total, row.shape, row.error, row.created_by, row.created_at, row.updated_at, row.finished_at, origin,
    )  # fmt: skip


def _str(body: dict[str, Any], key: str, where: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{where} must be a non-empty string", field=where)
    if len(value) > 4096:
        raise InvalidRequest(f"{where} is too long", field=where)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidRequest(f"{where} is not valid text", field=where) from None
    return value


def _bool(body: dict[str, Any], key: str, where: str, default: bool | None) -> bool | None:
    value = body.get(key, default)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"{where} must be true or false", field=where)
    return value


def _int(body: dict[str, Any], key: str, where: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{where} must be a whole number from {low} to {high}", field=where)
    return value


SOURCE_KEYS = {"type", "path", "url", "format", "profile", "vcenterUrl", "username", "password", "insecure", "vmPath", "exportMethod", "apiKey", "vmId"}
REQUEST_KEYS = {"source", "name", "cpu", "ramMb", "diskGb", "networkMapping", "removeCdroms", "start", "nodeId", "tags", "origin"}
REQUEST_KEYS |= {"sshKeys", "cloudInit"}
REQUEST_KEYS |= {"loginUser"}


def without_secrets(value: Any, depth: int = 0) -> Any:
    """`value` with every key of SECRET_KEYS left out, at any depth (ValueError past 32 levels)."""
    if depth > 32:
        raise ValueError("nested more than 32 levels deep")
    if isinstance(value, dict):
        return {k: without_secrets(v, depth + 1) for k, v in value.items() if k not in SECRET_KEYS}
    if isinstance(value, list):
        return [without_secrets(v, depth + 1) for v in value]
    return value


def _origin(body: dict[str, Any]) -> dict[str, Any] | None:
    value = body.get("origin")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("origin must be a JSON object (what the caller sent, kept and shown back)", field="origin")
    try:
        out: dict[str, Any] = without_secrets(value)
        size = len(json.dumps(out, allow_nan=False))
    except (ValueError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"origin must be plain JSON at most 32 levels deep ({exc})", field="origin") from None
    if size > ORIGIN_MAX_BYTES:
        raise InvalidRequest(f"origin is larger than {ORIGIN_MAX_BYTES} bytes as JSON", field="origin")
    return out


CLOUD_INIT_KEYS = {"userData": str, "metaData": dict, "networkConfig": dict}
"""what `cloudInit` may hold, as a VM create takes it (api/schemas.CloudInitIn)"""
USER_DATA_MAX = 65536
MAX_SSH_KEYS = 32


def _cloud_init(value: Any) -> dict[str, Any] | None:
    """`cloudInit` as a VM create takes it: userData text (at most 64 KiB), metaData and
    networkConfig objects; None or {}: not given."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest("cloudInit must be an object with userData, metaData or networkConfig", field="cloudInit")
    for key, item in value.items():
        kind = CLOUD_INIT_KEYS.get(key)
        if kind is None:
            raise InvalidRequest(f"unknown field cloudInit.{key}", field=f"cloudInit.{key}")
        if item is not None and not isinstance(item, kind):
            raise InvalidRequest(f"cloudInit.{key} must be {'text' if kind is str else 'an object'}", field=f"cloudInit.{key}")
    if len(value.get("userData") or "") > USER_DATA_MAX:
        raise InvalidRequest(f"cloudInit.userData is longer than {USER_DATA_MAX} characters", field="cloudInit.userData")
    out = {k: v for k, v in value.items() if v is not None}
    return out or None


def parse_request(body: Any) -> ImportRequest:
    """The native wire form (camelCase; unknown fields refused) -> ImportRequest. Checks the
    syntax only; `ImportService.submit` checks the rest. Raises InvalidRequest naming the
    field."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    unknown = sorted(set(body) - REQUEST_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r}", field=unknown[0])
    src = body.get("source")
    if not isinstance(src, dict):
        raise InvalidRequest("source must be an object with a type", field="source")
    unknown = sorted(set(src) - SOURCE_KEYS)
    if unknown:
        raise InvalidRequest(f"unknown field source.{unknown[0]}", field=f"source.{unknown[0]}")
    kind = src.get("type")
    if kind not in SOURCE_TYPES:
        raise InvalidRequest(f"source.type must be one of {', '.join(SOURCE_TYPES)}", field="source.type")
    source = ImportSource(
        type=kind, path=_str(src, "path", "source.path"), url=_str(src, "url", "source.url"), format=_str(src, "format", "source.format"),
        profile=_str(src, "profile", "source.profile"), vcenter_url=_str(src, "vcenterUrl", "source.vcenterUrl"),
        username=_str(src, "username", "source.username"), password=src.get("password") if isinstance(src.get("password"), str) else None,
        insecure=_bool(src, "insecure", "source.insecure", None), vm_path=_str(src, "vmPath", "source.vmPath"),
        export_method=_str(src, "exportMethod", "source.exportMethod") or "auto", api_key=_str(src, "apiKey", "source.apiKey"),
        vm_id=_str(src, "vmId", "source.vmId"),
    )  # fmt: skip
    if "password" in src and src["password"] is not None and not isinstance(src["password"], str):
        raise InvalidRequest("source.password must be a string", field="source.password")
    mapping = body.get("networkMapping") or {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in mapping.items()):
        raise InvalidRequest("networkMapping must map source network names to vmplane network names", field="networkMapping")
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidRequest("tags must be a list of strings", field="tags")
    keys = body.get("sshKeys") or []
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise InvalidRequest("sshKeys must be a list of OpenSSH public keys", field="sshKeys")
    return ImportRequest(
        ssh_keys=tuple(keys), cloud_init=_cloud_init(body.get("cloudInit")),
        source=source, name=_str(body, "name", "name"), cpu=_int(body, "cpu", "cpu", 1, 256),
        ram_mb=_int(body, "ramMb", "ramMb", 64, 4 << 20), disk_gb=_int(body, "diskGb", "diskGb", 1, 65536),
        network_mapping=dict(mapping), remove_cdroms=bool(_bool(body, "removeCdroms", "removeCdroms", False)),
        start=bool(_bool(body, "start", "start", True)), node_id=_str(body, "nodeId", "nodeId"), tags=tuple(tags), origin=_origin(body),
        login_user=_str(body, "loginUser", "loginUser"),
    )  # fmt: skip


def check_url(url: str, where: str, schemes: Sequence[str] = ("http", "https", "file")) -> None:
    try:
        p = urlparse(url)
        host = p.hostname
        p.port
    except ValueError as exc:
        raise InvalidRequest(f"{where} cannot be parsed: {exc}", field=where) from None
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        raise InvalidRequest(f"{where} has spaces or control characters", field=where)
    if p.scheme not in schemes:
        raise InvalidRequest(f"{where} must be an {', '.join(s + '://' for s in schemes)} URL", field=where)
    if p.scheme == "file":
        if p.netloc not in ("", "localhost") or not p.path.startswith("/"):
            raise InvalidRequest(f"{where}: file:// URLs must name an absolute local path", field=where)
    elif not host:
        raise InvalidRequest(f"{where} has no host", field=where)


class ImportService:
    """rt.imports: submit imports, read their progress."""

    def __init__(self, *, store: Store, settings: Settings, data_dir: Path, engine: JobEngine, networks: NetworkService, outbound: Outbound, registry: NodeRegistry, vsphere: VsphereService) -> None:
        self.store = store
        self.settings = settings
        self.data_dir = data_dir
        self.engine = engine
        self.networks = networks
        self.outbound = outbound
        self.registry = registry
        self.vsphere = vsphere
        self._exports: dict[str, int] = {}
        """organization -> disk exports running (export_slot)"""

    def allowed_dirs(self) -> list[Path]:
        """Directories local import files may come from (resolved; the default is made)."""
        dirs = list(self.settings.import_dirs) or [Path(self.data_dir) / "imports"]
        out = []
        for d in dirs:
            if d == Path(self.data_dir) / "imports":
                d.mkdir(parents=True, exist_ok=True)
            out.append(Path(os.path.realpath(d)))
        return out

    def local_file(self, path: str, where: str) -> Path:
        """`path` (absolute) if it is a regular file inside an allowed directory once every
        symlink is resolved; InvalidRequest naming `where` otherwise."""
        if not path.startswith("/") or "\x00" in path:
            raise InvalidRequest(f"{where} must be an absolute path", field=where)
        real = Path(os.path.realpath(path))
        allowed = self.allowed_dirs()
        if not any(real == d or d in real.parents for d in allowed):
            raise InvalidRequest(f"{where} is outside the directories imports may read ({', '.join(map(str, allowed))}; VMPLANE_IMPORT_DIRS)", field=where)
        if not real.is_file():
            raise InvalidRequest(f"{where}: {path} is not a file", field=where)
        return real

    async def submit(self, req: ImportRequest, who: Principal) -> tuple[str, str]:
        """Check the request (files, URLs, profile, names, networks) and submit a vm-import
        job. Returns (job id, import id). Nothing is fetched yet: that is the job's work."""
        src = req.source
        secrets: dict[str, Any] = {}
        if src.type in ("ova", "disk"):
            if (src.path is None) == (src.url is None):
                raise InvalidRequest(f"a {src.type} source needs path or url (one of them)", field="source.path")
            if src.path is not None:
                self.local_file(src.path, "source.path")
            else:
                assert src.url is not None
                check_url(src.url, "source.url")
                if urlparse(src.url).scheme == "file":
                    self.local_file(unquote(urlparse(src.url).path), "source.url")
            if src.format is not None and (src.type != "disk" or src.format not in DISK_FORMATS):
                raise InvalidRequest(f"source.format must be one of {', '.join(DISK_FORMATS)} (disk sources only)", field="source.format")
            if src.url is not None:
                await self.outbound.check(src.url, "source.url")
        elif src.type == "vsphere":
            if not src.vm_path:
                raise InvalidRequest("a vsphere source needs vmPath (the VM's inventory path)", field="source.vmPath")
            if src.export_method not in EXPORT_METHODS:
                raise InvalidRequest(f"source.exportMethod must be one of {', '.join(EXPORT_METHODS)}", field="source.exportMethod")
            try:
                vc = await self.vsphere.connection(
                    who, profile=src.profile, url=src.vcenter_url, username=src.username, password=src.password, insecure=src.insecure
                )
            except InvalidRequest as exc:
                raise InvalidRequest(exc.message, field=f"source.{exc.field}" if exc.field else "source") from None
            if vc.profile is None:
                secrets["vsphere"] = self.vsphere.seal(vc)
        else:  # vmplane
            if not src.url:
                raise InvalidRequest("a vmplane source needs url (the other vmplane's base URL)", field="source.url")
            check_url(src.url, "source.url", ("http", "https"))
            if not src.vm_id:
                raise InvalidRequest("a vmplane source needs vmId", field="source.vmId")
            if not src.api_key:
                raise InvalidRequest("a vmplane source needs apiKey (a key of the other vmplane)", field="source.apiKey")
            await self.outbound.check(src.url, "source.url")
            secrets["apiKey"] = src.api_key
        if req.name is not None:
            check_name(req.name, "name")
        check_tags(req.tags, "tags")
        if len(req.ssh_keys) > MAX_SSH_KEYS:
            raise InvalidRequest(f"sshKeys: at most {MAX_SSH_KEYS} keys", field="sshKeys")
        check_ssh_keys(req.ssh_keys, "sshKeys")
        _cloud_init(req.cloud_init)
        if req.login_user is not None:
            check_login_user(req.login_user)
        for source_net, target in sorted(req.network_mapping.items()):
            try:
                await self.networks.get(target, who, field=f"networkMapping.{source_net}")
            except NotFound as exc:
                raise InvalidRequest(exc.message, field=f"networkMapping.{source_net}") from None
        now = clock.now()
        imp_id = ids.new_id("imp")
        options = {
            "cpu": req.cpu, "ramMb": req.ram_mb, "diskGb": req.disk_gb, "networkMapping": req.network_mapping,
            "removeCdroms": req.remove_cdroms, "start": req.start, "nodeId": req.node_id, "tags": list(req.tags),
        }  # fmt: skip
        if req.ssh_keys:
            options["sshKeys"] = list(req.ssh_keys)
        if req.cloud_init:
            options["cloudInit"] = dict(req.cloud_init)
        if req.login_user is not None:
            options["loginUser"] = req.login_user
        if req.origin is not None:
            options["origin"] = without_secrets(req.origin)  # a caller of submit may not have come through parse_request
        payload: dict[str, Any] = {
            "who": {"org_id": who.org_id, "user_id": who.user_id, "user_name": who.user_name, "role": str(who.role), "team_id": who.team_id},
        }
        if secrets:
            payload["sealed"] = self.vsphere.box.seal(secrets)
        async with self.store.write() as conn:
            if req.node_id is not None:
                if await node_q.get_node(conn, req.node_id) is None:
                    raise InvalidRequest(f"nodeId {req.node_id!r} does not exist", field="nodeId")
            job_id = await self.engine.submit(conn, "vm-import", who, [(imp_id, payload)])
            await imp_q.insert_import(
                conn,
                {
                    "id": imp_id, "org_id": who.org_id, "job_id": job_id, "vm_id": None, "name": req.name or "",
                    "source_type": src.type, "source": src.public(), "options": options, "state": "queued", "stage": None,
                    "bytes_done": 0, "bytes_total": None, "shape": None, "error": None, "created_by": who.user_name,
                    "created_at": now, "updated_at": now, "finished_at": None,
                },
            )  # fmt: skip
        self.engine.wakeup()
        return job_id, imp_id

    async def get(self, import_id: str, who: Principal) -> ImportView:
        async with self.store.read() as conn:
            row = await imp_q.get_import(conn, import_id)
        if row is None or not _visible(row, who):
            raise NotFound(f"import {import_id} does not exist")
        return view(row)

    async def for_job(self, job_id: str, who: Principal) -> ImportView | None:
        """The import a job does (None: the job is not an import)."""
        async with self.store.read() as conn:
            row = await imp_q.import_of_job(conn, job_id)
        return view(row) if row is not None and _visible(row, who) else None

    async def list(self, who: Principal, *, limit: int = 50, page_token: str | None = None) -> tuple[list[ImportView], str | None]:
        after = pages.decode("imports", page_token)
        async with self.store.read() as conn:
            rows = await imp_q.list_imports(conn, who.org_id, after_seq=after, limit=limit + 1, team_id=who.team_id)
        token = pages.encode("imports", rows[limit - 1].seq) if len(rows) > limit else None
        return [view(r) for r in rows[:limit]], token

    def take_export_slot(self, who: Principal) -> Callable[[], None]:
        """One of the organization's `export_concurrency` disk exports, held until the returned
        function is called (once the export's file has been sent or the export failed);
        RateLimited (429) when all are taken. Per process, as the other rate limits."""
        limit = self.settings.export_concurrency
        if self._exports.get(who.org_id, 0) >= limit:
            raise RateLimited(f"at most {limit} disk exports run at once per organization; retry when one has finished", limit=limit)
        self._exports[who.org_id] = self._exports.get(who.org_id, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._exports[who.org_id] -= 1
                if not self._exports[who.org_id]:
                    del self._exports[who.org_id]

        return release

    async def export_disk(self, vm_ref: str, who: Principal) -> Path:
        """The VM's disk as it is now (point in time; live if it runs) flattened into a
        standalone qcow2 file the caller streams and then deletes: what another vmplane's
        import of source type `vmplane` downloads. InvalidState on a node that keeps no disk
        content (sim). Hold a `take_export_slot` while it runs and its file is sent."""
        vm = await get_visible_vm(self.store, vm_ref, who)
        if vm.node_id is None or vm.status in ("provisioning", "error"):
            raise InvalidState(f"VM {vm.id} has no disk to export ({vm.status})", current=vm.status)
        driver = self.registry.driver(vm.node_id)
        if not driver.capabilities.disk_export:
            raise InvalidState(f"{vm.node_id} runs the {driver.capabilities.kind} driver, which keeps no disk content")
        qemu_img = shutil.which("qemu-img")
        if qemu_img is None:
            raise InvalidState("qemu-img is not installed on the control plane's host")
        work = Path(self.data_dir) / "imports" / "exports"
        work.mkdir(parents=True, exist_ok=True)
        tag = f"{vm.id}-{uuid.uuid4().hex[:8]}"
        raw, out = work / f"{tag}.raw", work / f"{tag}.qcow2"
        try:
            await driver.export_disk(vm.id, raw)
            status, _out, err = await images.run_tool(
                [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], "qemu-img convert", timeout=3600, reads=[raw], writes=[out],
            )  # fmt: skip
            if status != 0:
                raise VmplaneError(f"converting the disk of {vm.id} failed: {images.last_line(err)}")
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        finally:
            raw.unlink(missing_ok=True)
        return out

    def request_of(self, row: Row[Any]) -> ImportRequest:
        """The request an import was made from (secrets not included: see `secrets_of`)."""
        s, o = dict(row.source), dict(row.options)
        source = ImportSource(
            type=row.source_type, path=s.get("path"), url=s.get("url"), format=s.get("format"), profile=s.get("profile"),
            vcenter_url=s.get("vcenterUrl"), username=s.get("username"), insecure=s.get("insecure"), vm_path=s.get("vmPath"),
            export_method=s.get("exportMethod", "auto"), vm_id=s.get("vmId"),
        )  # fmt: skip
        return ImportRequest(
            source=source, name=row.name or None, cpu=o.get("cpu"), ram_mb=o.get("ramMb"), disk_gb=o.get("diskGb"),
            network_mapping=dict(o.get("networkMapping") or {}), remove_cdroms=bool(o.get("removeCdroms")), start=bool(o.get("start", True)),
            node_id=o.get("nodeId"), tags=tuple(o.get("tags") or ()), origin=o.get("origin"),
            ssh_keys=tuple(o.get("sshKeys") or ()), cloud_init=o.get("cloudInit"), login_user=o.get("loginUser"),
        )  # fmt: skip

    def secrets_of(self, payload: dict[str, Any]) -> dict[str, Any]:
        token = payload.get("sealed")
        return self.vsphere.box.open(token) if token else {}


__all__ = ["ImportService", "ImportView", "parse_request", "SOURCE_TYPES"]
