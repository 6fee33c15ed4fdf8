"""FastVM's wire format: request bodies (openapi.yaml's schemas) and core rows rendered in
its response shapes. Translation only; the mapping decisions are in docs/fastvm.md."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row

from .... import clock
from ....domain import Resources, Vm
from ....domain.ingress import Allow, Ipv6Ingress, parse_allow_rules, parse_ingress
from ....domain.names import DISPLAY_NAME_RULE
from ....errors import InvalidRequest, Reason
from ...errors import NATIVE_STATUS

STATUS: dict[Reason, int] = {**NATIVE_STATUS, Reason.NO_CAPACITY: 503, Reason.BEYOND_ANY_NODE: 400}
"""the face's status for each reason of the core: the native face's"""

BASE_DISK_GIB = 10
MACHINE_TYPES: dict[str, Resources] = {
    "c1m2": Resources(cpu=1, ram_mb=2048, disk_gb=BASE_DISK_GIB),
    "c2m4": Resources(cpu=2, ram_mb=4096, disk_gb=BASE_DISK_GIB),
    "c4m8": Resources(cpu=4, ram_mb=8192, disk_gb=BASE_DISK_GIB),
    "c8m16": Resources(cpu=8, ram_mb=16384, disk_gb=BASE_DISK_GIB),
}

VM_STATUS = {
    "provisioning": "provisioning",
    "starting": "provisioning",
    "running": "running",
    "rebooting": "running",
    "updating": "running",
    "stopping": "stopped",
    "stopped": "stopped",
    "deleting": "deleting",
    "error": "error",
    "unknown": "error",
}
"""vmplane VM status -> FastVM VMStatus (provisioning, running, stopped, deleting, error)"""

SNAPSHOT_STATUS = {"creating": "creating", "ready": "ready", "error": "error"}
"""vmplane snapshot status -> FastVM SnapshotStatus; `deleting` snapshots are gone for FastVM"""

NIL_UUID = "00000000-0000-0000-0000-000000000000"
UNLIMITED = 2**31 - 1
"""how a quota without any bound is shown (OrgQuotaValues has no way to say 'none')"""


class Body(BaseModel):
    """Unknown fields are ignored (the contract's schemas allow them); no type coercion. The
    contract's optional fields are not nullable: left out they read as None here, an explicit
    null is refused (hence `Absent`)."""

    model_config = ConfigDict(extra="ignore", strict=True)


def Absent(**constraints: Any) -> Any:
    """An optional field without null: None when left out, 400 when sent as null."""
    return Field(None, **constraints)


class FirewallRuleIn(Body):
    protocol: Literal["tcp", "udp"]
    portStart: int = Field(..., ge=1, le=65535)
    portEnd: int = Absent(ge=1, le=65535)
    sourceCidrs: list[str] = Absent()
    description: str = Absent(max_length=256)


class FirewallPolicyIn(Body):
    mode: Literal["open", "restricted"]
    ingress: list[FirewallRuleIn] = Absent()

    def policy(self, where: str) -> Ipv6Ingress:
        return parse_ingress(self.model_dump(exclude_none=True), where)


class PatchFirewallIn(Body):
    mode: Literal["open", "restricted"] = Absent()
    ingress: list[FirewallRuleIn] = Absent()

    def rules(self) -> tuple[Allow, ...] | None:
        return None if self.ingress is None else parse_allow_rules([r.model_dump(exclude_none=True) for r in self.ingress], "ingress")


class CreateVmIn(Body):
    name: str = Absent(max_length=64)
    machineType: Literal["c1m2", "c2m4", "c4m8", "c8m16"] = Absent()
    snapshotId: str = Absent()
    diskGiB: int = Absent(ge=BASE_DISK_GIB)
    firewall: FirewallPolicyIn = Absent()


class UpdateVmIn(Body):
    name: str = Field(..., max_length=64)


class ExecIn(Body):
    command: list[str] = Field(..., min_length=1)
    timeoutSec: int = Field(30, ge=1)


class CreateSnapshotIn(Body):
    vmId: str
    name: str = Absent(max_length=64)


class UpdateSnapshotIn(Body):
    name: str = Field(..., max_length=64)


def parse_uuid(value: str, field: str) -> str:
    """A uuid in its canonical form (ids on this face are uuids: 400 for anything else)."""
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidRequest(f"{field} {value!r} is not a UUID", field=field) from None


def name_error() -> InvalidRequest:
    """A VM's name the core refuses as a display name, said as FastVM names the field."""
    return InvalidRequest(f"name must be {DISPLAY_NAME_RULE}", field="name")


def machine_name(cpu: int, ram_mb: int) -> str:
    for name, r in MACHINE_TYPES.items():
        if (r.cpu, r.ram_mb) == (cpu, ram_mb):
            return name
    return f"c{cpu}m{ram_mb / 1024:g}"


def vm(row: Vm, firewall: Ipv6Ingress, source_name: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.uuid,
        "name": row.display_name,
        "orgId": row.org_id,
        "machineName": machine_name(row.cpu, row.ram_mb),
        "firewall": firewall.to_wire(),
        "cpu": row.cpu,
        "memoryMiB": row.ram_mb,
        "diskGiB": row.disk_gb,
        "status": VM_STATUS.get(row.status, "error"),
        "createdAt": clock.rfc3339(row.created_at),
        "deletedAt": None,
    }
    if source_name is not None:
        out["sourceName"] = source_name
    ipv6 = row.first_ipv6
    if ipv6 is not None:
        out["publicIpv6"] = ipv6
    return out


def snapshot(row: Row[Any], firewall: Ipv6Ingress) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.uuid,
        "name": row.name,
        "orgId": row.org_id,
        "vmId": None,
        "firewall": firewall.to_wire(),
        "status": SNAPSHOT_STATUS.get(row.status, "error"),
        "createdAt": clock.rfc3339(row.created_at),
    }
    # snapshots whose VM was deleted before vmplane kept VM uuids with them: the nil uuid
    out["vmId"] = row.vm_uuid or NIL_UUID
    return out


def quota_values(values: dict[str, int | None]) -> dict[str, int]:
    def n(v: int | None) -> int:
        return UNLIMITED if v is None else max(0, int(v))

    return {"vcpu": n(values["vcpu"]), "memoryMiB": n(values["ramMb"]), "diskGiB": n(values["diskGb"]), "snapshotCount": n(values["snapshots"])}
