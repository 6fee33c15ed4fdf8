"""Blue Lobster's wire format: request bodies (openapi.json's schemas, with its constraints)
and core rows rendered in its response shapes. Translation only; the mapping decisions are in
docs/bluelobster.md."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt
from sqlalchemy import Row

from .... import clock
from ....domain import Template, Vm
from ....errors import Reason, VmplaneError
from ...errors import NATIVE

STATUS: dict[Reason, tuple[int, str]] = {
    **NATIVE,
    Reason.NO_CAPACITY: (409, "resource_conflict"),  # the contract's word for "no room" is 409
    Reason.BEYOND_ANY_NODE: (400, "invalid_request"),
    Reason.DRIVER_FAILED: (500, "operation_failed"),  # a node failed: the contract's failures are 500s
    Reason.IMAGE_REFUSED: (500, "operation_failed"),
}
"""the face's (status, `error` code) for each reason of the core"""

SSH_KEY = r"^(ssh-rsa|ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521) [A-Za-z0-9+/]+[=]{0,3}( .+)?$"
SSH_KEY_RE = re.compile(SSH_KEY)
PASSWORD = r"^[^ \"'`;|<>{}\\]*$"
USERNAME = r"^[a-zA-Z][a-zA-Z0-9-]*$"
INSTANCE_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]$"
TEMPLATE_NAME = r"^[A-Z0-9-]+$"
TEMPLATE_RE = re.compile(TEMPLATE_NAME)
RENAME_RE = re.compile(r"^[A-Za-z0-9_-]{3,64}$")

POWER_STATUS = {
    "running": "running",
    "rebooting": "running",
    "updating": "running",
    "stopping": "stopped",
    "stopped": "stopped",
}
"""vmplane VM status -> power_status (running, stopped, paused, unknown); others: unknown"""

TASK_STATUS = {
    "queued": "PENDING",
    "running": "PROCESSING",
    "succeeded": "COMPLETED",
    "failed": "FAILED",
    "partial": "FAILED",
    "cancelled": "FAILED",
}
"""vmplane job state -> task status"""

OPERATIONS = {
    "vm-create": "create_instance",
    "vm-delete": "delete_instance",
    "vm-reboot": "reboot_instance",
    "vm-shutdown": "shutdown_instance",
    "vm-stop": "force_shutdown_instance",
    "vm-start": "power_on_instance",
    "vm-power-cycle": "power_cycle_instance",
}
"""vmplane job type -> task operation (other job types: their type with '_' for '-')"""


class BlError(VmplaneError):
    """An error in the contract's shape, `{"error": code, "message": sentence}`."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.status = status
        self.code = code


def answer(exc: VmplaneError) -> tuple[int, str]:
    """(status, `error` code) of an error: a route's own, else the core's reason's."""
    if isinstance(exc, BlError):
        return exc.status, exc.code
    return STATUS[exc.reason]


class Body(BaseModel):
    """Unknown fields are ignored (the contract's schemas allow them)."""

    model_config = ConfigDict(extra="ignore")


class LaunchInstanceIn(Body):
    """The schema's fields, and the names its description uses for two of them
    (`instance_type_name`, `ssh_key_names`): `launch_reading` takes either."""

    region: str
    instance_type: str | None = None
    instance_type_name: str | None = None
    ssh_key_names: list[str] | None = None
    username: str = Field(min_length=1, max_length=32, pattern=USERNAME)
    ssh_key: str | None = Field(None, pattern=SSH_KEY)
    password: str | None = Field(None, min_length=8, max_length=64, pattern=PASSWORD)
    name: str | None = Field(None, max_length=64, pattern=INSTANCE_NAME)
    metadata: dict[str, str] | None = None
    template_name: str | None = Field(None, pattern=TEMPLATE_NAME)
    iso_url: str | None = None


class LaunchCustomIn(Body):
    name: str = Field(min_length=1, max_length=64, pattern=INSTANCE_NAME)
    instance_type: str
    price_cents_per_hour: StrictInt | None = None
    host: str = Field(min_length=1, max_length=100)
    metadata: dict[str, str] | None = None
    cores: StrictInt = Field(ge=1, le=64)
    memory: StrictInt = Field(ge=8, le=512)
    disk_size: StrictInt = Field(ge=30, le=4096)
    template_name: str | None = Field(None, pattern=TEMPLATE_NAME)
    iso_url: str | None = None
    gpu_count: StrictInt = Field(ge=0, le=8)
    username: str = Field(min_length=1, max_length=32, pattern=USERNAME)
    password: str | None = Field(None, min_length=8, max_length=64, pattern=PASSWORD)
    ssh_key: str | None = Field(None, pattern=SSH_KEY)


class RenameIn(Body):
    name: str


def _invalid(field: str, message: str, value: Any, kind: str = "value_error") -> RequestValidationError:
    """A 422 in FastAPI's shape naming `field` of the body."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": value}])


def launch_reading(body: LaunchInstanceIn) -> tuple[str, list[str]]:
    """The instance type and the SSH keys of a launch, read from the schema's fields
    (`instance_type`, `ssh_key`) or from those the description names (`instance_type_name`,
    `ssh_key_names`: public keys, the first the primary; vmplane keeps no registered keys).
    Both given must agree (the key: `ssh_key` is the first of `ssh_key_names`), else 422."""
    type_name = body.instance_type if body.instance_type is not None else body.instance_type_name
    if type_name is None:
        raise _invalid("instance_type", "Field required: give instance_type (or instance_type_name)", None, "missing")
    if body.instance_type is not None and body.instance_type_name is not None and body.instance_type != body.instance_type_name:
        raise _invalid(
            "instance_type_name", f"instance_type {body.instance_type!r} and instance_type_name {body.instance_type_name!r} disagree: give one",
            body.instance_type_name,
        )  # fmt: skip
    names = body.ssh_key_names
    if names is None:
        return type_name, [body.ssh_key] if body.ssh_key else []
    for i, key in enumerate(names):
        if not SSH_KEY_RE.match(key):
            message = "must be an SSH public key (e.g. 'ssh-ed25519 AAAA… me'): vmplane keeps no registered SSH keys to look a name up in"
            raise RequestValidationError([{"type": "value_error", "loc": ("body", "ssh_key_names", i), "msg": message, "input": key}])
    if body.ssh_key is not None and (not names or names[0] != body.ssh_key):
        raise _invalid("ssh_key_names", "ssh_key and ssh_key_names disagree: ssh_key must be the first of ssh_key_names, or give one", names)
    return type_name, list(names)


def cloud_init(username: str, ssh_keys: list[str], password: str | None) -> dict[str, Any]:
    """The cloud-config that makes the account a launch asks for (the keys also go to the
    image's default user through the core's sshKeys)."""
    user: dict[str, Any] = {"name": username, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL", "lock_passwd": password is None}
    if ssh_keys:
        user["ssh_authorized_keys"] = list(ssh_keys)
    if password:
        user["plain_text_passwd"] = password
    config: dict[str, Any] = {"users": ["default", user]}
    if password:
        config["ssh_pwauth"] = True
    return config


def template_name(row: Template) -> str | None:
    """A template's name as this face shows it (`tiny-linux` -> `TINY-LINUX`), or None when
    its name has characters the contract's names cannot carry."""
    name = row.name.upper()
    return name if TEMPLATE_RE.match(name) else None


def instance(row: Vm, node: Row[Any] | None, region: str | None, host: str | None, price: int | None) -> dict[str, Any]:
    spec = row.spec
    source = spec.source_name
    ip = row.first_ipv4
    gpus = spec.pci_passthrough
    return {
        "uuid": row.uuid,
        "name": row.display_name,
        "host_id": host or "",
        "region": region,
        "ip_address": ip,
        "internal_ip": ip,
        "cpu_cores": row.cpu,
        "memory": row.ram_mb // 1024,
        "storage": row.disk_gb,
        "gpu_count": len(gpus),
        "gpu_model": spec.gpu_model,
        "power_status": POWER_STATUS.get(row.status, "unknown"),
        "created_at": clock.rfc3339(row.created_at),
        "metadata": spec.metadata,
        "instance_type": spec.instance_type,
        "price_cents_per_hour": price,
        "team_id": row.team_id,
        "team_name": None,
        "access_type": None,
        "template_name": source.upper() if isinstance(source, str) and TEMPLATE_RE.match(source.upper()) else None,
        "template_display_name": source,
        "os_type": spec.os_type,
        "vm_username": spec.username or spec.login_user,  # the account its launch made, else its template's login user
    }


def task(job: Row[Any], tasks: list[Row[Any]]) -> dict[str, Any]:
    first = tasks[0] if tasks else None
    error = next((t.error for t in tasks if t.error), None)
    state = job.state
    message = error or {
        "queued": "queued",
        "running": "in progress",
        "succeeded": "completed successfully",
        "cancelled": "cancelled",
    }.get(state, "failed")
    params: dict[str, Any] = {"account_id": job.org_id}
    if first is not None and len(tasks) == 1:
        params["resource_id"] = first.resource_id
    came_from = job.origin or {}
    return {
        "task_id": job.id,
        "status": TASK_STATUS.get(state, "PROCESSING"),
        "operation": OPERATIONS.get(job.type, job.type.replace("-", "_")),
        "params": params,
        "created_at": clock.rfc3339(job.created_at),
        "updated_at": clock.rfc3339(job.updated_at),
        "message": message,
        "account_id": job.org_id,
        "auth_token_partial": came_from.get("token_hint"),
        "client_ip": came_from.get("client_ip"),
    }


class FirewallOptionsIn(Body):
    enable: StrictBool | None = None
    policy_in: str | None = None
    policy_out: str | None = None


class FirewallRuleIn(Body):
    type: str
    action: str
    source: str | None = None
    dest: str | None = None
    proto: str | None = None
    dport: str | None = None
    sport: str | None = None
    comment: str | None = None
    enable: StrictInt | None = 1


class BackupNotesIn(Body):
    notes: str = Field(max_length=4096)


class BackupScheduleIn(Body):
    frequency: str
    hour_utc: StrictInt
    day_of_week: StrictInt | None = None
    day_of_month: StrictInt | None = None


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def backup(row: Row[Any], vm_uuid: str | None = None) -> dict[str, Any]:
    """A vmplane backup as Blue Lobster shows one; `volid` is the backup's id (`bkp-…`)."""
    return {
        "volid": row.id,
        "size_bytes": row.logical_bytes,
        "size_human": human_bytes(row.logical_bytes),
        "stored_bytes": row.added_bytes,
        "created_at": clock.rfc3339(row.created_at),
        "finished_at": clock.rfc3339(row.finished_at),
        "format": "raw",
        "notes": row.notes,
        "status": row.status,
        "vm_id": row.vm_id,
        "vm_uuid": vm_uuid,
        "vm_name": row.vm_name,
    }


class InstanceLogIn(Body):
    start_time: datetime
    end_time: datetime


class TeamAssignIn(Body):
    team_id: str | None = Field(None, min_length=1, max_length=64)
