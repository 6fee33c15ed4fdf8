"""Volant's wire format: request bodies (openapi.json's schemas) and core rows rendered in its
response shapes. Translation only; the mapping decisions are in docs/volant.md."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .... import clock
from ....domain import Vm
from ....errors import Reason
from ...errors import NATIVE_STATUS
from ...volant_shapes import VM_STATUS  # shared with the MCP command set (api/mcp_commands.py)

STATUS: dict[Reason, int] = {
    **NATIVE_STATUS,
    Reason.NO_CAPACITY: 409,  # Volant's word for "no room" is a conflict
    Reason.BEYOND_ANY_NODE: 400,
    Reason.DRIVER_FAILED: 500,  # a node failed: the daemon's failures are 500s
    Reason.IMAGE_REFUSED: 500,
}
"""the face's status for each reason of the core"""


def detail_text(value: Any) -> str:
    """A core error's detail as the contract's `details` holds it, a plain string: a list is
    its items joined with ", " (`"names": "web-1"`), an enum its value, a mapping its JSON."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(detail_text(v) for v in value)
    if value is None or isinstance(value, bool | dict):
        return json.dumps(value, default=str, separators=(",", ":"))
    return str(value)


SSE_TYPES = {
    "vm.created": ("VM_CREATED", "starting", "vm record created"),
    "vm.running": ("VM_RUNNING", "running", "vm running"),
    "vm.stopped": ("VM_STOPPED", "stopped", "vm stopped"),
    "vm.error": ("VM_CRASHED", "crashed", None),
    "vm.deleted": ("VM_DELETED", "stopped", "vm deleted"),
}
"""vmplane event -> (Volant SSE type, its status, its message; None: the VM's error)"""

SORT_KEYS = ("id", "name", "status", "runtime", "cpu_cores", "memory_mb", "created_at", "updated_at")


class Body(BaseModel):
    """Unknown fields are ignored (Volant's daemon ignores them); no type coercion."""

    model_config = ConfigDict(extra="ignore", strict=True)


def Absent(**constraints: Any) -> Any:
    """An optional field the contract does not make nullable: None when left out, 400 when
    sent as null."""
    return Field(None, **constraints)


class CreateVmIn(Body):
    name: str = Field(..., max_length=63)
    runtime: str = Absent(max_length=128)
    plugin: str = Absent(max_length=128)
    cpu_cores: int = Absent(ge=1, le=1024)
    memory_mb: int = Absent(ge=64, le=16 * 1024 * 1024)
    kernel_cmdline: str = Absent(max_length=2048, pattern=r"^[\x20-\x7e]*$")
    api_host: str = Absent(max_length=255)
    api_port: str = Absent(max_length=8)
    config: dict[str, Any] | None = None
    """Config is nullable in the contract"""

    def full_config(self) -> dict[str, Any]:
        """The VM's config: `config` with the top-level fields laid over it."""
        config = dict(self.config or {})
        resources = dict(config.get("resources") or {})
        if self.cpu_cores is not None:
            resources["cpu_cores"] = self.cpu_cores
        if self.memory_mb is not None:
            resources["memory_mb"] = self.memory_mb
        if resources:
            config["resources"] = resources
        for key in ("kernel_cmdline", "runtime", "plugin"):
            if getattr(self, key) is not None:
                config[key] = getattr(self, key)
        return config


class CreateDeploymentIn(Body):
    name: str = Field(..., max_length=48)
    replicas: int = Field(1, ge=0, le=100)
    config: dict[str, Any] | None = None


class ScaleDeploymentIn(Body):
    replicas: int = Field(..., ge=0, le=100)


class PciAddressesIn(Body):
    pci_addresses: list[str] = Field(..., max_length=64)


class ValidateIn(Body):
    pci_addresses: list[str] = Field(..., max_length=64)
    allowlist: list[str] = Absent(max_length=64)


class PciAddressIn(Body):
    pci_address: str = Field(..., max_length=64)


def vm(row: Vm, *, cmdline: str = "", pid: int | None = None, serial: str | None = None) -> dict[str, Any]:
    nic = row.spec.nics[0] if row.spec.nics else None
    return {
        "id": row.vmid,
        "name": row.name,
        "status": VM_STATUS.get(row.status, "crashed"),
        "runtime": row.spec.runtime,
        "pid": pid,
        "ip_address": row.primary_ip or "",
        "mac_address": nic.mac if nic is not None else "",
        "cpu_cores": row.cpu,
        "memory_mb": row.ram_mb,
        "kernel_cmdline": " ".join(x for x in (cmdline, row.spec.kernel_cmdline) if x),  # as the guest boots with it
        "serial_socket": serial or "",
        "created_at": clock.rfc3339(row.created_at),
        "updated_at": clock.rfc3339(row.updated_at),
    }


def sort_value(item: dict[str, Any], key: str) -> Any:
    value = item.get(key)
    return (value is None, value if value is not None else 0)


def config_version(v: Any, **extra: Any) -> dict[str, Any]:
    return {"version": v.version, "updated_at": clock.rfc3339(v.updated_at), "config": v.config, **extra}


def history_item(v: Any) -> dict[str, Any]:
    return {"id": v.id, "version": v.version, "updated_at": clock.rfc3339(v.updated_at), "config": v.config}
