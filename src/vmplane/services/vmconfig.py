"""A VM's full config (Volant's `Config` shape: resources, cloud_init, kernel_cmdline, expose,
network, rootfs/initramfs, metadata, ...), versioned: every change is a JSON merge patch
(RFC 7396) that makes a new version; older versions stay readable as history.

What a change does to the VM itself:
- `resources` (cpu_cores, memory_mb) go through the core's resize (a vm-update job); on a VM
  that runs, the new shape takes effect when it next starts, so the answer says
  `restart_required`.
- `cloud_init`, `kernel_cmdline`, `expose` are read when a VM is created from the config
  (deployment replicas, the Volant face's create); changing them on an existing VM is recorded
  and reported as `not_applied` (vmplane has no way yet to rebuild a VM's seed or boot line).
- Everything else (metadata, network, rootfs, initramfs, runtime, plugin, manifest, api) is
  recorded as given.
VMs created without a config (native API, other faces) have one derived from their record;
it becomes version 1 when first changed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.exc import IntegrityError

from .. import clock
from ..auth import Principal
from ..domain import DEFAULT_RESOURCES, NewVm, Resources, Vm
from ..errors import Conflict, InvalidRequest
from ..store import deployments as dep_q
from ..store import templates as tpl_q
from .vms import VmChange

if TYPE_CHECKING:
    from ..store import Store
    from .templates import TemplateService
    from .vms import VmService


MAX_CONFIG_BYTES = 256 * 1024


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class CloudInitDoc(_Doc):
    content: str | None = Field(None, max_length=65536)
    inline: bool | None = None
    path: str | None = Field(None, max_length=4096)


class CloudInit(_Doc):
    datasource: str | None = None
    seed_mode: str | None = None
    user_data: CloudInitDoc | None = None
    meta_data: CloudInitDoc | None = None
    network_config: CloudInitDoc | None = None


class ResourcesDoc(_Doc):
    cpu_cores: int | None = Field(None, ge=1, le=1024)
    memory_mb: int | None = Field(None, ge=64, le=16 * 1024 * 1024)


class ExposeDoc(_Doc):
    name: str | None = Field(None, max_length=64)
    port: int = Field(..., ge=1, le=65535)
    host_port: int | None = Field(None, ge=0, le=65535)
    protocol: str | None = Field(None, pattern="^(tcp|udp)$")


class NetworkDoc(_Doc):
    mode: str | None = None
    subnet: str | None = None
    gateway: str | None = None
    auto_assign: bool | None = None


class ImageDoc(_Doc):
    url: str | None = None
    checksum: str | None = None
    format: str | None = None


class ConfigDoc(_Doc):
    """Volant's Config: the fields vmplane reads are typed; others are kept as sent."""

    runtime: str | None = Field(None, max_length=128)
    plugin: str | None = Field(None, max_length=128)
    resources: ResourcesDoc | None = None
    kernel_cmdline: str | None = Field(None, max_length=2048, pattern=r"^[\x20-\x7e]*$")
    """extra kernel arguments: appended to the template's command line when a VM is created"""
    kernel_override: str | None = None
    cloud_init: CloudInit | None = None
    expose: list[ExposeDoc] | None = Field(None, max_length=64)
    network: NetworkDoc | None = None
    rootfs: ImageDoc | None = None
    initramfs: ImageDoc | None = None
    metadata: dict[str, Any] | None = None
    manifest: dict[str, Any] | None = None
    api: dict[str, Any] | None = None


def check(config: Any, where: str = "config") -> dict[str, Any]:
    """The config if it is a valid Config object (nulls dropped); InvalidRequest naming the field."""
    if not isinstance(config, dict):
        raise InvalidRequest(f"{where} must be an object", field=where)
    if len(json.dumps(config)) > MAX_CONFIG_BYTES:
        raise InvalidRequest(f"{where} is larger than {MAX_CONFIG_BYTES // 1024} KiB", field=where)
    try:
        ConfigDoc.model_validate(config)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first.get("loc", ()))
        name = f"{where}.{path}" if path else where
        raise InvalidRequest(f"{name}: {first.get('msg', 'invalid value')}", field=name) from None
    return drop_null_members(config)


def drop_nulls(value: Any) -> Any:
    """A JSON value without the null members of its objects, at any depth."""
    if isinstance(value, dict):
        return drop_null_members(value)
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def drop_null_members(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON object without its null members, at any depth."""
    return {k: drop_nulls(v) for k, v in obj.items() if v is not None}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def resources_of(config: dict[str, Any]) -> Resources:
    r = config.get("resources") or {}
    return Resources(int(r.get("cpu_cores") or DEFAULT_RESOURCES.cpu), int(r.get("memory_mb") or DEFAULT_RESOURCES.ram_mb), DEFAULT_RESOURCES.disk_gb)


def _doc_text(doc: Any) -> str | None:
    return doc.get("content") if isinstance(doc, dict) and isinstance(doc.get("content"), str) else None


def new_vm(name: str, config: dict[str, Any], template_id: str | None, *, start: bool = True) -> NewVm:
    """What the core creates for a VM made from `config` (a checked config). With `plugin`
    (or `runtime`, Volant's name for it) the VM is made from that plugin: its image, and its
    resources unless the config gives some (services.vms)."""
    extra: dict[str, Any] = {}
    cloud = config.get("cloud_init") or {}
    cloud_init: dict[str, Any] = {}
    if (user := _doc_text(cloud.get("user_data"))) is not None:
        cloud_init["userData"] = user
    if (meta := _doc_text(cloud.get("meta_data"))) is not None:
        try:
            parsed = json.loads(meta)
        except ValueError:
            parsed = None
        cloud_init["metaData"] = parsed if isinstance(parsed, dict) else meta
    if (net := _doc_text(cloud.get("network_config"))) is not None:
        cloud_init["networkConfig"] = net
    if cloud_init:
        extra["cloudInit"] = cloud_init
    expose = [
        {"port": e["port"], "protocol": e.get("protocol") or "tcp", "hostPort": e.get("host_port") or None}
        for e in config.get("expose") or []
    ]
    if expose:
        extra["expose"] = expose
    if config.get("kernel_cmdline"):
        extra["kernelCmdline"] = config["kernel_cmdline"]
    plugin = config.get("plugin") or config.get("runtime") or None
    return NewVm(
        name=name, resources=resources_of(config) if config.get("resources") else None, template_id=None if plugin else template_id,
        start=start, extra=extra, plugin=plugin,
    )  # fmt: skip


@dataclass(frozen=True)
class ConfigVersion:
    id: int
    """the history row's number (0: derived, not stored yet)"""
    version: int
    updated_at: float
    config: dict[str, Any]


@dataclass(frozen=True)
class ConfigChange:
    current: ConfigVersion
    applied: list[str] = field(default_factory=list)
    """top-level fields the VM took (or takes at its next start)"""
    not_applied: list[str] = field(default_factory=list)
    """fields recorded only: they apply to VMs created from this config"""
    restart_required: bool = False
    job_id: str | None = None


APPLIED_AT_CREATE = ("cloud_init", "kernel_cmdline", "expose")


class VmConfigService:
    def __init__(self, *, store: Store, vms: VmService, templates: TemplateService) -> None:
        self.store = store
        self.vms = vms
        self.templates = templates

    async def create(self, name: str, config: Any, who: Principal, timeout: float, where: str = "config") -> Vm:
        """A VM made from a config (the Volant face's create, the MCP command set's): the config
        checked (InvalidRequest naming `where`), the VM created on the default template and
        waited for up to `timeout` seconds, then the config recorded as its version 1. The VM
        as it is when the wait ends."""
        config = check(config, where)
        spec = new_vm(name, config, await self.templates.default_id(who))  # with its plugin, if named
        vm = await self.vms.create_and_wait(spec, who, timeout)
        await self.record([vm.id], config)
        return vm

    async def derive(self, vm: Vm) -> dict[str, Any]:
        """The config of a VM that has no stored version: from its record."""
        spec = vm.spec
        config: dict[str, Any] = {"resources": {"cpu_cores": vm.cpu, "memory_mb": vm.ram_mb}}
        if vm.template_id:
            async with self.store.read() as conn:
                tpl = await tpl_q.get_template(conn, vm.template_id)
            if tpl is not None and tpl.boot and tpl.boot.get("cmdline"):
                config["kernel_cmdline"] = tpl.boot["cmdline"]
        cloud = spec.cloud_init
        ci: dict[str, Any] = {}
        if cloud is not None and isinstance(cloud.user_data, str):
            ci["user_data"] = {"content": cloud.user_data, "inline": True}
        if cloud is not None and cloud.meta_data is not None:
            meta = cloud.meta_data
            ci["meta_data"] = {"content": meta if isinstance(meta, str) else json.dumps(meta), "inline": True}
        if ci:
            config["cloud_init"] = {"datasource": "NoCloud", **ci}
        if spec.expose:
            config["expose"] = [{"port": e.port, "host_port": e.host_port, "protocol": e.protocol} for e in spec.expose]
        return drop_null_members(config)

    async def current(self, vm: Vm) -> ConfigVersion:
        async with self.store.read() as conn:
            row = await dep_q.latest_config(conn, vm.id)
        if row is not None:
            return ConfigVersion(row.seq, row.version, row.created_at, row.config)
        return ConfigVersion(0, 1, vm.created_at, await self.derive(vm))

    async def history(self, vm: Vm, limit: int) -> list[ConfigVersion]:
        if not 1 <= limit <= 500:
            raise InvalidRequest("limit must be between 1 and 500", field="limit")
        async with self.store.read() as conn:
            rows = await dep_q.config_history(conn, vm.id, limit)
        if not rows:
            return [await self.current(vm)]
        return [ConfigVersion(r.seq, r.version, r.created_at, r.config) for r in rows]

    async def record(self, vm_ids: Sequence[str], config: dict[str, Any]) -> None:
        """Version 1 of VMs just created from `config`."""
        now = clock.now()
        async with self.store.write() as conn:
            for vm_id in vm_ids:
                await dep_q.add_config(conn, vm_id, 1, config, now)

    async def patch(self, vm: Vm, patch: Any, who: Principal) -> ConfigChange:
        """Merge `patch` into the VM's config as a new version and apply what can be applied."""
        if not isinstance(patch, dict):
            raise InvalidRequest("the body must be a JSON object (a merge patch of the config)", field="body")
        base = await self.current(vm)
        merged = check(merge_patch(base.config, patch), "config")
        if merged == base.config:
            return ConfigChange(base)
        changed = sorted(k for k in set(merged) | set(base.config) if merged.get(k) != base.config.get(k))
        job_id = None
        restart = False
        applied: list[str] = []
        if "resources" in changed:
            want = resources_of(merged)
            if (want.cpu, want.ram_mb) != (vm.cpu, vm.ram_mb):
                job_id = await self.vms.update(vm.id, VmChange(cpu=want.cpu, ram_mb=want.ram_mb), who)
                restart = vm.status in ("running", "starting", "rebooting")
            applied.append("resources")
        not_applied = [k for k in changed if k in APPLIED_AT_CREATE]
        now = clock.now()
        try:
            async with self.store.write() as conn:
                if base.id == 0:  # the derived config becomes version 1 of the history
                    await dep_q.add_config(conn, vm.id, 1, base.config, base.updated_at)
                seq = await dep_q.add_config(conn, vm.id, base.version + 1, merged, now)
        except IntegrityError:
            raise Conflict(f"the config of {vm.name} was changed at the same time; read it again") from None
        version = ConfigVersion(seq, base.version + 1, now, merged)
        return ConfigChange(version, applied, not_applied, restart, job_id)

    async def forget_deleted(self) -> None:
        """Drop the history of VMs that no longer exist."""
        async with self.store.write() as conn:
            await dep_q.forget_configs(conn, await dep_q.orphan_config_vms(conn))
