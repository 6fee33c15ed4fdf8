"""Plugins: installable VM blueprints (Volant's plugin-manifest-v1), the VMs made from them,
their workloads' health checks, action calls and OpenAPI documents.

A plugin names its image by URL (`rootfs` or `initramfs`, with a sha256 checksum): it is
fetched once into a template of the plugin's owner (the template-create job verifies the
checksum), which the plugin refers to by id; a template is reused only when it belongs to the
plugin's owner and its checksum is the manifest's, so no name anyone else chose decides what a
plugin's VMs boot. An initramfs boots with the default template's kernel, command line and
disk. Plugin names and runtimes are unique within an organization, or among the operators'
shared plugins; a name is looked up in the caller's organization first, then the shared ones. A VM created with
`plugin`/`runtime` takes the manifest's resources, image and cloud-init, and its workload's
port is forwarded to the node's forward address, through which actions, health checks and
the guest's OpenAPI document are reached over HTTP (vmplane's own plumbing to the VM). The
image URL and an OpenAPI URL outside the guest are the user's: they must pass the outbound
policy (outbound.py) at install and again when fetched; a fetched document is read up to
`VMPLANE_MAX_DOCUMENT_BYTES`, and never quoted in an error.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import hashlib
import json
import logging
import shlex
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jsonschema
from sqlalchemy import Row, select
from sqlalchemy.exc import IntegrityError

from .. import clock, ids, outbound
from ..auth import Principal
from ..domain import StoredSpec, Vm, VmStatus
from ..errors import Conflict, DriverError, Forbidden, InvalidRequest, InvalidState, NotFound
from ..http_clients import link_client
from ..store import events as ev_q
from ..store import plugins as plugin_q
from ..store import templates as tpl_q
from ..store.tables import plugin_health
from ..store.tables import vms as vms_t
from ..vmstates import VmOp, require_state
from .process import Leadership
from .vms import get_visible_vm

if TYPE_CHECKING:
    from ..config import Settings
    from ..drivers.registry import NodeRegistry
    from ..outbound import Outbound
    from ..store import Store
    from .templates import TemplateService
    from .tenancy import TenancyService


log = logging.getLogger("vmplane.plugins")

SCHEMA = json.loads(resources.files(__package__).joinpath("plugin-manifest-v1.schema.json").read_text())
_validator = jsonschema.Draft7Validator(SCHEMA)
DEFAULT_ACTION_TIMEOUT_MS = 30_000
DEFAULT_HEALTH_TIMEOUT_MS = 2_000
MAX_PROXIED_BYTES = 8 * 1024 * 1024
HEALTHY, UNHEALTHY, UNKNOWN = "healthy", "unhealthy", "unknown"


def _field(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_manifest(manifest: Any) -> dict[str, Any]:
    """The manifest with its defaults filled in (`runtime` = `name`, cloud-init datasource
    NoCloud), or InvalidRequest naming the first bad field."""
    if not isinstance(manifest, dict):
        raise InvalidRequest("the plugin manifest must be a JSON object", field="body")
    m = copy.deepcopy(manifest)
    if "runtime" not in m and isinstance(m.get("name"), str):
        m["runtime"] = m["name"]
    if isinstance(m.get("cloud_init"), dict):
        m["cloud_init"].setdefault("datasource", "NoCloud")
    errors = sorted(_validator.iter_errors(m), key=lambda e: (len(e.path), list(map(str, e.path)), e.validator != "required"))
    if not errors:
        return m
    e = errors[0]
    where = _field(e.absolute_path)
    if e.validator == "required":
        missing = e.message.split("'")[1] if "'" in e.message else "?"
        if not e.absolute_path and e.schema_path and list(e.schema_path)[0] == "oneOf":
            raise InvalidRequest("give one of rootfs or initramfs (the image the plugin's VMs boot)", field="rootfs")
        name = f"{where}.{missing}" if where else missing
        raise InvalidRequest(f"{name} is required", field=name)
    if e.validator == "oneOf" and not e.absolute_path:
        both = "rootfs" in m and "initramfs" in m
        raise InvalidRequest(
            "give exactly one of rootfs or initramfs" + (", not both" if both else ""), field="initramfs" if both else "rootfs"
        )
    if e.validator == "additionalProperties":
        extra = sorted(set(e.instance) - set(e.schema.get("properties", {}))) if isinstance(e.instance, dict) else []
        name = f"{where}.{extra[0]}" if where and extra else (extra[0] if extra else where)
        raise InvalidRequest(f"{name} is not a field of a plugin manifest (plugin-manifest-v1)", field=name)
    if e.validator == "propertyNames":
        raise InvalidRequest(f"{where} has a key that is not a valid name: {e.message}", field=where)
    raise InvalidRequest(f"{where or 'manifest'}: {e.message}", field=where or "body")


def checksum_hex(checksum: str) -> str:
    """`sha256:<hex>` or bare hex → lower-case hex."""
    return checksum.split(":", 1)[-1].lower()


def workload_port(manifest: dict[str, Any]) -> int:
    u = urlsplit(manifest["workload"]["base_url"])
    return u.port or (443 if u.scheme == "https" else 80)


def entrypoint_script(manifest: dict[str, Any]) -> str | None:
    """A user-data script starting the workload's entrypoint in the background (for plugins
    whose cloud-init gives no user-data of its own)."""
    w = manifest["workload"]
    if not w.get("entrypoint"):
        return None
    lines = ["#!/bin/sh", "# written by vmplane from the plugin's workload"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted((w.get("env") or {}).items()) if k.isidentifier()]
    if w.get("workdir"):
        lines.append(f"cd {shlex.quote(w['workdir'])} || exit 1")
    lines.append(" ".join(shlex.quote(a) for a in w["entrypoint"]) + " </dev/null >/var/log/workload.log 2>&1 &")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ForVm:
    """What a new VM takes from its plugin."""

    name: str
    runtime: str
    version: str
    template_id: str | None
    shared: bool
    """the operators' plugin, not one of the organization's own"""
    cpu: int
    ram_mb: int
    cloud_init: dict[str, Any]
    port: int


@dataclass(frozen=True)
class Proxied:
    status: int
    content_type: str
    body: bytes


class PluginService:
    def __init__(self, *, store: Store, settings: Settings, outbound: Outbound, registry: NodeRegistry, leadership: Leadership, templates: TemplateService, tenancy: TenancyService) -> None:
        self.store = store
        self.settings = settings
        self.outbound = outbound
        self.registry = registry
        self.leadership = leadership
        self.templates = templates
        self.tenancy = tenancy
        self._health_task: asyncio.Task[None] | None = None

    # -- the plugins themselves -----------------------------------------------------------

    @staticmethod
    def _visible(row: Row[*tuple[Any, ...]] | None, who: Principal) -> bool:
        return row is not None and row.org_id in (None, who.org_id)

    async def get(self, ref: str, who: Principal) -> Row[*tuple[Any, ...]]:
        """The plugin named `ref` (or with runtime `ref`): the caller's organization's own
        first, then a shared one; another organization's is not installed for it."""
        async with self.store.read() as conn:
            row = await plugin_q.find_plugin(conn, ref, who.org_id)
        if row is None or not self._visible(row, who):
            raise NotFound(f"plugin {ref} is not installed")
        return row

    async def list(self, who: Principal) -> list[Row[*tuple[Any, ...]]]:
        async with self.store.read() as conn:
            return list(await plugin_q.list_plugins(conn, who.org_id))

    def _check_owner(self, row: Row[*tuple[Any, ...]], who: Principal) -> None:
        if row.org_id is None and not who.operator:
            raise Forbidden(f"plugin {row.name} is shared by the operators; only they change it")

    async def install(self, manifest: Any, who: Principal) -> Row[*tuple[Any, ...]]:
        """Validate and record a manifest; its image is fetched by a template-create job
        (the plugin's VMs can be created once that template is ready)."""
        m = validate_manifest(manifest)
        enabled = m.pop("enabled", True)
        if m.get("openapi") and not self._in_guest(m, m["openapi"]):
            await self.outbound.check(m["openapi"], "openapi")
        owner = None if who.operator else who.org_id  # the operators' plugins are shared
        refs = sorted({m["name"], m["runtime"]})
        async with self.store.read() as conn:
            if (ref := await plugin_q.taken(conn, refs, owner)) is not None:
                raise Conflict(f"a plugin named or with runtime {ref!r} is already installed", field="name")
        if not who.operator:  # before its template is made; and again as it is recorded
            async with self.store.write() as conn:
                await self.tenancy.reserve(conn, who.org_id, plugins=1)
        template_id = await self._template_for(m, who)
        now = clock.now()
        try:
            async with self.store.write() as conn:
                if (ref := await plugin_q.taken(conn, refs, owner)) is not None:
                    raise Conflict(f"a plugin named or with runtime {ref!r} is already installed", field="name")
                if not who.operator:
                    await self.tenancy.reserve(conn, who.org_id, plugins=1)
                await plugin_q.insert_plugin(
                    conn,
                    {
                        "name": m["name"], "runtime": m["runtime"], "version": m["version"],
                        "org_id": owner, "enabled": bool(enabled), "manifest": m,
                        "template_id": template_id, "created_at": now, "updated_at": now,
                    },
                )  # fmt: skip
                await ev_q.emit(conn, "plugin.installed", m["name"], {"name": m["name"], "version": m["version"], "runtime": m["runtime"]}, None if who.operator else who.org_id)
        except IntegrityError:  # the (namespace, name|runtime) keys: the same plugin installed at the same time
            raise Conflict(f"a plugin named or with runtime {m['name']!r} was installed at the same time", field="name") from None
        async with self.store.read() as conn:
            row = await plugin_q.plugin_in(conn, m["name"], owner)  # the one just installed, even where a name is shadowed
        assert row is not None
        return row

    @staticmethod
    def image_checksum(manifest: dict[str, Any]) -> str:
        """`sha256:<hex>` of the plugin's image, as its manifest gives it."""
        image = manifest.get("rootfs") or manifest.get("initramfs") or {}
        return f"sha256:{checksum_hex(str(image.get('checksum', '')))}"

    async def _template_for(self, m: dict[str, Any], who: Principal) -> str | None:
        """The id of the template holding the plugin's image: one of the plugin's owner made
        from the same URL whose checksum is the manifest's (ready, or being imported, whose
        job checks it), fetched once; else a new one being imported. Never a template of
        someone else, whatever its name: another organization's names are not even seen."""
        kind = "rootfs" if "rootfs" in m else "initramfs"
        image = m[kind]
        digest = checksum_hex(image["checksum"])
        owner = None if who.operator else who.org_id  # the operators' are shared, an organization's its own
        async with self.store.read() as conn:
            tpl = await tpl_q.find_image(conn, owner, image["url"], f"sha256:{digest}")
            if tpl is not None:
                return str(tpl.id)
            key = hashlib.sha256(f"{kind}\n{image['url']}\n{digest}".encode()).hexdigest()[:16]
            name = f"plugin-{kind}-{key}"
            if await tpl_q.name_taken(conn, name, owner):  # the owner's own (a failed import, a rename): not ours to take
                name = f"{name}-{ids.new_id('x')[-6:].lower()}"
        base = None
        if kind == "initramfs":
            base_ref = self.settings.default_template
            try:
                base_tpl = await self.templates.get(base_ref, who)
            except NotFound:
                base_tpl = None
            if base_tpl is None or not base_tpl.boot or base_tpl.status != "ready":
                raise InvalidRequest(
                    f"an initramfs boots with the kernel of the default template {base_ref!r}, which is not ready here "
                    "(it needs the qemu driver); give a rootfs instead",
                    field="initramfs",
                )  # fmt: skip
            base = base_tpl.id
        _job, tpl_id = await self.templates.create(
            name=name, os_="linux", node_id=None, source_url=image["url"], who=who, checksum=digest, initramfs_of=base,
            field=f"{kind}.url",
        )
        return tpl_id

    async def set_enabled(self, ref: str, enabled: bool, who: Principal) -> Row[*tuple[Any, ...]]:
        row = await self.get(ref, who)
        self._check_owner(row, who)
        if row.enabled != enabled:
            async with self.store.write() as conn:
                await plugin_q.set_plugin(conn, row.seq, enabled=enabled, updated_at=clock.now())
                await ev_q.emit(conn, "plugin.enabled" if enabled else "plugin.disabled", row.name, {"name": row.name, "enabled": enabled}, row.org_id)
        return await self.get(row.name, who)

    async def vms_using(self, row: Row[*tuple[Any, ...]]) -> builtins.list[Row[*tuple[Any, ...]]]:
        """The VMs made from this plugin (its organization's, or any organization's for a
        shared one): their name, org_id and spec."""
        async with self.store.read() as conn:
            q = select(vms_t.c.name, vms_t.c.org_id, vms_t.c.spec)
            if row.org_id is not None:
                q = q.where(vms_t.c.org_id == row.org_id)
            vms = [(v, spec) for v in (await conn.execute(q)).all() if (spec := StoredSpec.from_json(v.spec)).plugin_name == row.name]
            owners = {}
            for v, _ in vms:
                if v.org_id not in owners:
                    owners[v.org_id] = v.org_id if await plugin_q.plugin_in(conn, row.name, v.org_id) is not None else None
        return [v for v, spec in vms if _plugin_owner(spec, v.org_id, owners[v.org_id]) == row.org_id]

    async def delete(self, ref: str, who: Principal) -> None:
        """Remove a plugin no VM uses (409 otherwise, naming the caller's organization's VMs
        and counting others); its image template stays (other plugins may share it; delete
        it as any template)."""
        row = await self.get(ref, who)
        self._check_owner(row, who)
        users = await self.vms_using(row)
        if users:
            mine = sorted(v.name for v in users if v.org_id == who.org_id)
            others = len(users) - len(mine)
            shown = ", ".join(mine[:5]) + (f"{', ' if mine else ''}{others} of other organizations" if others else "")
            raise Conflict(f"plugin {row.name} is used by {len(users)} VM(s) ({shown}); delete them first", vms=mine)
        async with self.store.write() as conn:
            await plugin_q.delete_plugin(conn, row.seq)
            await ev_q.emit(conn, "plugin.deleted", row.name, {"name": row.name}, row.org_id)

    # -- VMs made from plugins ------------------------------------------------------------

    async def for_new_vm(self, ref: str, who: Principal, field: str = "plugin") -> ForVm:
        """What a VM created with plugin/runtime `ref` takes from it; the plugin must be
        installed, enabled and its image fetched."""
        try:
            row = await self.get(ref, who)
        except NotFound:
            raise InvalidRequest(f"{field} {ref!r} is not an installed plugin", field=field) from None
        if not row.enabled:
            raise InvalidRequest(f"plugin {row.name} is disabled; enable it first", field=field)
        if row.template_id is not None:
            async with self.store.read() as conn:
                tpl = await tpl_q.get_template(conn, row.template_id)
            if tpl is None:
                raise InvalidState(f"the image template of plugin {row.name} was deleted; reinstall the plugin", current="missing")
            if tpl.org_id != row.org_id or tpl.checksum not in (None, self.image_checksum(row.manifest)):
                # not the owner's, or not the manifest's image (data from before issue 19): never booted
                raise InvalidState(
                    f"the image template of plugin {row.name} is not the plugin's own image; reinstall the plugin", current="foreign"
                )
            if tpl.status != "ready":
                raise InvalidState(
                    f"the image of plugin {row.name} is {tpl.status}" + (f": {tpl.error}" if tpl.error else ""),
                    current=tpl.status, required="ready",
                )  # fmt: skip
        m = row.manifest
        ci = m.get("cloud_init") or {}
        cloud: dict[str, Any] = {}
        for src, dst in (("user_data", "userData"), ("meta_data", "metaData"), ("network_config", "networkConfig")):
            content = (ci.get(src) or {}).get("content")
            if content:
                cloud[dst] = content
        if "userData" not in cloud and (script := entrypoint_script(m)):
            cloud["userData"] = script
        return ForVm(
            name=row.name, runtime=row.runtime, version=row.version, template_id=row.template_id, shared=row.org_id is None,
            cpu=m["resources"]["cpu_cores"], ram_mb=m["resources"]["memory_mb"], cloud_init=cloud, port=workload_port(m),
        )  # fmt: skip

    async def of_vm(self, vm: Vm) -> Row[*tuple[Any, ...]]:
        """The plugin the VM was made from: its organization's own or the shared one, as the
        VM recorded (VMs from before that record: its organization's first)."""
        ref = vm.spec.plugin_name
        if ref is None:
            raise NotFound(f"VM {vm.name} was not made from a plugin")
        async with self.store.read() as conn:
            own = await plugin_q.plugin_in(conn, ref, vm.org_id)
            owner = _plugin_owner(vm.spec, vm.org_id, vm.org_id if own is not None else None)
            row = own if owner is not None else await plugin_q.plugin_in(conn, ref, None)
        if row is None:
            raise NotFound(f"plugin {ref} of VM {vm.name} is no longer installed")
        return row

    def workload_root(self, vm: Vm, manifest: dict[str, Any]) -> str:
        """`http://host:port` of the node's forwarded port to the VM's workload port."""
        require_state(VmOp.GUEST, vm.status, vm.name)
        if vm.node_id is None:  # a running VM has a node: the store is being changed under us
            raise InvalidState(f"VM {vm.name} is {vm.status}, not running", current=vm.status, required="running")
        driver = self.registry.driver(vm.node_id)
        if not driver.capabilities.real_vms:
            raise Conflict(f"{vm.node_id} runs the {driver.capabilities.kind} driver: its VMs run no workload to reach", capability="real_vms")
        if not vm.spec.has_user_nic:
            raise Conflict(f"VM {vm.name} has no user-mode NIC: vmplane reaches plugin workloads through a port forwarded on one")
        port = workload_port(manifest)
        forward = vm.spec.forward(port)
        if forward is None or not forward.host_port:
            raise Conflict(f"VM {vm.name} has no forwarded port to its workload (guest port {port})")
        host = driver.forward_host()
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return f"http://{f'[{host}]' if ':' in host else host}:{forward.host_port}"

    def workload_url(self, vm: Vm, manifest: dict[str, Any], path: str = "") -> str:
        """The URL reaching `path` (under the workload's base URL) of the VM's workload."""
        base_url: str = manifest["workload"]["base_url"]  # a string: the manifest was validated
        base_path = urlsplit(base_url).path.rstrip("/")
        return self.workload_root(vm, manifest) + base_path + path

    async def call_action(
        self, vm_ref: str, action: str, who: Principal, *, body: bytes = b"", content_type: str | None = None, query: str = ""
    ) -> Proxied:
        """Send the request of the plugin's action `action` to the VM's workload and answer
        what it answered (502 when it cannot be reached, or does not answer in the action's
        timeout)."""
        vm = await get_visible_vm(self.store, vm_ref, who)
        plugin = await self.of_vm(vm)
        spec = (plugin.manifest.get("actions") or {}).get(action)
        if spec is None:
            raise NotFound(f"plugin {plugin.name} has no action {action!r}", actions=sorted(plugin.manifest.get("actions") or {}))
        url = self.workload_url(vm, plugin.manifest, spec["path"]) + (f"?{query}" if query else "")
        timeout = spec.get("timeout_ms", DEFAULT_ACTION_TIMEOUT_MS) / 1000
        headers = {"Content-Type": content_type} if content_type and body else {}
        try:
            async with link_client(timeout=timeout) as client:
                resp = await asyncio.wait_for(client.request(spec["method"], url, content=body or None, headers=headers), timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise DriverError(f"action {action} of VM {vm.name} did not answer within {int(timeout * 1000)} ms", vm=vm.name) from None
        except httpx.HTTPError as exc:
            raise DriverError(f"action {action} of VM {vm.name}: the workload cannot be reached: {exc}", vm=vm.name) from None
        if len(resp.content) > MAX_PROXIED_BYTES:
            raise DriverError(f"action {action} of VM {vm.name} answered more than {MAX_PROXIED_BYTES} bytes", vm=vm.name)
        return Proxied(resp.status_code, resp.headers.get("content-type", "application/octet-stream"), resp.content)

    async def openapi(self, vm_ref: str, who: Principal) -> dict[str, Any]:
        """The VM's OpenAPI document as Volant's daemon finds it: first from the guest (its
        workload's `/openapi`), then from the manifest's `openapi` URL (a path, or a URL on
        the workload's base URL, is asked of the guest; 502 when that fetch fails); else
        NotFound("openapi spec unavailable")."""
        vm = await get_visible_vm(self.store, vm_ref, who)
        try:
            plugin = await self.of_vm(vm)
        except NotFound:
            raise NotFound("openapi spec unavailable") from None
        m = plugin.manifest
        reachable = True
        try:
            guest_doc = await self._fetch_json(self.workload_url(vm, m, "/openapi"), 5)
            if guest_doc is not None:
                return guest_doc
        except (InvalidState, Conflict):
            reachable = False
        except DriverError:
            pass
        ref = m.get("openapi")
        if not ref:
            raise NotFound("openapi spec unavailable")
        if self._in_guest(m, ref):
            if not reachable:
                raise DriverError(f"the OpenAPI document of VM {vm.name} is in its guest, which cannot be reached now", vm=vm.name)
            b = urlsplit(m["workload"]["base_url"])
            doc = await self._fetch_json(self.workload_root(vm, m) + (ref if ref.startswith("/") else ref[len(f"{b.scheme}://{b.netloc}"):]), 10)
        else:  # the user's URL: through the outbound policy
            doc = await self._fetch_json(ref, 10, user_url=True)
        if doc is None:
            raise DriverError(f"the plugin's OpenAPI document at {ref} is not a JSON object", vm=vm.name)
        return doc

    @staticmethod
    def _in_guest(m: dict[str, Any], ref: str) -> bool:
        """Whether the manifest's `openapi` names a document in the guest (a path, or a URL on
        the workload's base URL), reached through the VM's forwarded port."""
        b = urlsplit(m["workload"]["base_url"])
        return ref.startswith("/") or ref.startswith(f"{b.scheme}://{b.netloc}/")

    async def _fetch_json(self, url: str, timeout: float, user_url: bool = False) -> dict[str, Any] | None:
        """GET a JSON object, at most `VMPLANE_MAX_DOCUMENT_BYTES` of it: None if the server
        answered but not with one; DriverError if it could not be reached or answered an
        error. `user_url`: a URL the user gave (checked by the outbound policy, redirects
        followed and checked), else the VM's forwarded port."""
        limit = self.outbound.max_document_bytes
        client = self.outbound.client(timeout=timeout) if user_url else link_client(timeout=timeout)
        try:
            async with client:
                async with asyncio.timeout(timeout):
                    async with outbound.opened(client, "GET", url, redirects=outbound.MAX_REDIRECTS if user_url else 0) as resp:
                        if resp.status_code != 200:
                            raise DriverError(f"{url} answered HTTP {resp.status_code}")
                        body = await outbound.read_limited(resp, limit, f"the document at {url}")
        except TimeoutError:
            raise DriverError(f"cannot fetch {url}: no answer within {timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise DriverError(f"cannot fetch {url}: {outbound.describe(exc)}") from None
        except outbound.TooLarge as exc:
            raise DriverError(exc.message) from None
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    # -- health checks --------------------------------------------------------------------

    async def health_of(self, vm: Vm) -> dict[str, Any] | None:
        async with self.store.read() as conn:
            row = await plugin_q.get_health(conn, vm.id)
        if row is None:
            return None
        return {"status": row.status, "detail": row.detail, "checkedAt": clock.rfc3339(row.checked_at), "changedAt": clock.rfc3339(row.changed_at)}

    def start(self) -> None:
        if self.settings.plugin_health_seconds > 0:
            self._health_task = asyncio.create_task(self._health_loop(), name="plugin-health")

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.plugin_health_seconds)
            if not self.leadership.leader:
                continue
            try:
                await self.check_health()
            except Exception:
                log.exception("plugin health checks failed")

    async def check_health(self) -> None:
        """Poll the health check of every running plugin VM's workload once; record the
        answer and publish `vm.health` when it changes."""
        async with self.store.read() as conn:
            installed = await plugin_q.list_plugins(conn, None)
            owners = {(p.org_id, p.name) for p in installed}  # names are per organization (org_id None: shared)
            plugins = {(p.org_id, p.name): p for p in installed if p.manifest.get("health_check")}
            if not plugins and (await conn.execute(select(plugin_health.c.vm_id).limit(1))).first() is None:
                return  # nothing to check, nothing recorded: no scan of the VMs
            q = select(vms_t).where(vms_t.c.status == VmStatus.RUNNING.value)
            rows = [Vm.from_row(r) for r in (await conn.execute(q)).all()] if plugins else []
        checks = []
        for vm in rows:
            name = vm.spec.plugin_name
            owner = _plugin_owner(vm.spec, vm.org_id, vm.org_id if (vm.org_id, name) in owners else None)
            plugin = plugins.get((owner, name)) if name else None
            if plugin is not None:
                checks.append((vm, plugin))
        results = await asyncio.gather(*(self._probe(vm, p) for vm, p in checks))
        now = clock.now()
        checked = {vm.id for vm, _ in checks}
        async with self.store.read() as conn:
            recorded = (await conn.execute(select(plugin_health.c.vm_id, plugin_health.c.status))).all()
            stale = [r.vm_id for r in recorded if r.vm_id not in checked]
            q = select(vms_t.c.id, vms_t.c.name, vms_t.c.status, vms_t.c.org_id, vms_t.c.team_id).where(vms_t.c.id.in_(stale))
            states = {r.id: r for r in (await conn.execute(q)).all()} if stale else {}
        async with self.store.write() as conn:  # deleted VMs forgotten; stopped ones no longer checked
            await plugin_q.forget_health(conn, [v for v in stale if v not in states])
            for r in recorded:
                gone = states.get(r.vm_id)
                if gone is not None and r.status != UNKNOWN:
                    why = f"the VM is {gone.status}"
                    await plugin_q.set_health(conn, gone.id, UNKNOWN, why, now, True)
                    await ev_q.emit(conn, "vm.health", gone.id, {"id": gone.id, "name": gone.name, "health": UNKNOWN, "detail": why}, gone.org_id, gone.team_id)
        for (vm, plugin), (status, detail) in zip(checks, results):
            async with self.store.write() as conn:
                before = await plugin_q.get_health(conn, vm.id)
                changed = before is None or before.status != status
                await plugin_q.set_health(conn, vm.id, status, detail, now, changed)
                if changed:
                    await ev_q.emit(
                        conn, "vm.health", vm.id,
                        {"id": vm.id, "name": vm.name, "plugin": plugin.name, "health": status, "detail": detail}, vm.org_id, vm.team_id,
                    )  # fmt: skip

    async def _probe(self, vm: Vm, plugin: Row[*tuple[Any, ...]]) -> tuple[str, str | None]:
        hc = plugin.manifest["health_check"]
        timeout = hc.get("timeout_ms", DEFAULT_HEALTH_TIMEOUT_MS) / 1000
        try:
            url = self.workload_url(vm, plugin.manifest, hc["endpoint"])
            async with link_client(timeout=timeout) as client:
                resp = await asyncio.wait_for(client.get(url), timeout)
        except (Conflict, InvalidState) as exc:
            return UNHEALTHY, exc.message
        except (TimeoutError, httpx.HTTPError) as exc:
            return UNHEALTHY, f"no answer within {int(timeout * 1000)} ms" if isinstance(exc, (asyncio.TimeoutError, httpx.TimeoutException)) else str(exc)
        if 200 <= resp.status_code < 400:
            return HEALTHY, None
        return UNHEALTHY, f"HTTP {resp.status_code}"


def _plugin_owner(spec: StoredSpec, org_id: str, resolved: str | None) -> str | None:
    """Whose plugin a VM of organization `org_id` with `spec` was made from: None (the shared
    one) or its organization, as its spec records (`shared`); a VM from before that record
    takes `resolved` (its organization's own plugin of that name when there is one, else the
    shared one)."""
    shared = spec.plugin.shared if spec.plugin is not None else None
    if shared is None:
        return resolved
    return None if shared else org_id
