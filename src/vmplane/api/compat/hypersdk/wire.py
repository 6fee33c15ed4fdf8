"""HyperSDK's wire format: request bodies (JSON or YAML, one object, an array or `{jobs: [...]}`),
job definitions and what they become as vmplane imports, and the answers' shapes.

Where the document (hypersdk-api.md) and the real daemon's clients (PEERS.md) differ, answers
carry both: progress has the document's `stage` and `current_bytes` and the client's `phase`
and `bytes_transferred`; submit answers `job_id` and `message` and `job_ids` and `accepted`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .... import clock
from ....errors import InvalidRequest, Reason
from ....services.webhooks import redacted_headers
from ...errors import NATIVE_STATUS

STATUS: dict[Reason, int] = {**NATIVE_STATUS, Reason.NO_CAPACITY: 503, Reason.BEYOND_ANY_NODE: 400}
"""the face's status for each reason of the core: the native face's"""

HYPERSDK_STATUS = {
    "queued": "pending", "running": "running", "succeeded": "completed", "partial": "failed", "failed": "failed", "cancelled": "cancelled",
}  # fmt: skip
"""a vmplane job state as HyperSDK names it"""
STATUSES = ("pending", "running", "completed", "failed", "cancelled")
FORMATS = ("ovf", "ova", "qcow2", "raw", "vmdk")
"""`definition.format` values HyperSDK's client accepts"""
EXPORT_METHODS = ("", "ctl", "govc", "ovftool", "web")
SOURCE_TYPES = ("vsphere", "ova", "disk", "vmplane")
SCHEDULE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WEBHOOK_EVENTS = (
    "job.submitted", "job.started", "job.completed", "job.failed", "job.progress", "job.cancelled",
    "schedule.triggered", "schedule.completed", "schedule.failed",
)  # fmt: skip
"""the document's events, and the two more vmplane has (job.cancelled, schedule.failed)"""
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def now() -> str:
    return clock.rfc3339(clock.now()) or ""


def ts(value: float | None) -> str | None:
    return clock.rfc3339(value)


class _YamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # yaml has no type information here: SafeLoader is Any
    """Safe YAML without aliases (a few aliases can expand to gigabytes once written out)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.YAMLError("YAML aliases (*name) are not accepted")
        return super().compose_node(parent, index)


async def body(request: Request) -> Any:
    """The request body as data: JSON, or YAML (as the daemon accepts); None when empty (an
    explicit `null` is refused: no operation takes one)."""
    raw = await request.body()
    if not raw.strip():
        return None
    data = _parse(request, raw)
    if data is None:
        raise InvalidRequest("the request body is null; send an object (or nothing)", field="body")
    return data


def _parse(request: Request, raw: bytes) -> Any:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in YAML_TYPES:
        try:
            return json.loads(raw)
        except ValueError:
            if kind == "application/json":
                raise InvalidRequest("the request body is not valid JSON", field="body") from None
    try:
        data = yaml.load(raw, Loader=_YamlLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError) as exc:
        raise InvalidRequest(f"the request body is neither valid JSON nor valid YAML: {str(exc)[:200]}", field="body") from None
    return json.loads(json.dumps(data, default=str))  # dates and other YAML types as strings


def model(cls: type[BaseModel], data: Any, what: str) -> Any:
    """Validate `data` as `cls`; InvalidRequest names the field."""
    from pydantic import ValidationError

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidRequest(f"{what} must be a JSON object", field=what)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        field = f"{what}.{loc}" if loc else what
        raise InvalidRequest(f"{field}: {first.get('msg', 'invalid value')}", field=field) from None


class Open(BaseModel):
    """HyperSDK clients send many fields vmplane has no use for: accepted and ignored."""

    model_config = ConfigDict(extra="allow", strict=False)


Text = Field(None, max_length=1024)


class VCenterIn(Open):
    server: str | None = Text
    url: str | None = Text
    vcenter_url: str | None = Text
    username: str | None = Field(None, max_length=256)
    password: str | None = Field(None, max_length=1024)
    insecure: bool | None = None
    datacenter: str | None = Field(None, max_length=256)


class SourceIn(VCenterIn):
    type: str = Field("vsphere", max_length=32)
    profile: str | None = Field(None, max_length=63)
    """a stored vSphere connection profile, by name (instead of credentials)"""
    path: str | None = Text
    """ova/disk: a file on the server"""
    format: str | None = Field(None, max_length=16)
    """disk: qcow2, raw, vmdk or vhdx"""
    api_key: str | None = Field(None, max_length=1024)
    """vmplane: the other vmplane's API key"""
    vm_id: str | None = Field(None, max_length=128)
    """vmplane: the VM there"""

    @field_validator("type")
    @classmethod
    def _type(cls, v: str) -> str:
        v = v.lower()
        if v not in SOURCE_TYPES:
            raise ValueError(f"must be one of {', '.join(SOURCE_TYPES)}")
        return v


class OptionsIn(Open):
    network_mapping: dict[str, str] | None = None
    remove_cdrom: bool | None = None
    start: bool | None = None
    power_on: bool | None = None
    libvirt_autostart: bool | None = None
    libvirt_bridge: str | None = Field(None, max_length=64)


class JobDefIn(Open):
    """A HyperSDK job definition (the document's and the Python client's fields)."""

    id: str | None = Field(None, max_length=128)
    name: str | None = Field(None, max_length=128)
    vm_path: str | None = Field(None, max_length=1024)
    vcenter_url: str | None = Text
    vcenter: VCenterIn | None = None
    username: str | None = Field(None, max_length=256)
    password: str | None = Field(None, max_length=1024)
    datacenter: str | None = Field(None, max_length=256)
    insecure: bool | None = None
    source: SourceIn | None = None
    destination: dict[str, Any] | None = None
    options: OptionsIn | None = None
    format: str | None = Field(None, max_length=16)
    export_method: str | None = Field(None, max_length=16)
    output_dir: str | None = Text
    output_path: str | None = Text
    profile: str | None = Field(None, max_length=63)
    network_mapping: dict[str, str] | None = None
    remove_cdrom: bool | None = None
    start: bool | None = None


def job_defs(data: Any) -> list[Any]:
    """One object, an array, or `{jobs: [...]}` → a list of raw definitions."""
    if isinstance(data, dict) and isinstance(data.get("jobs"), list) and "vm_path" not in data:
        return list(data["jobs"])
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        return [data]
    raise InvalidRequest("the body must be a job definition, an array of them, or {\"jobs\": [...]}", field="body")


def definition_echo(d: JobDefIn) -> dict[str, Any]:
    """What a job's `definition` shows again: the definition as sent (no defaults filled in),
    credentials left out."""
    out = d.model_dump(exclude_unset=True, exclude_none=True, mode="json")
    out.pop("password", None)
    for key in ("vcenter", "source"):
        if isinstance(out.get(key), dict):
            out[key].pop("password", None)
            out[key].pop("api_key", None)
    return out


def definition_of(imp: Any) -> dict[str, Any]:
    """A HyperSDK job definition for an import: the definition as it was submitted (the
    import's `origin`, credentials left out), with vmplane's own fields beside it (the id, the
    VM's name when none was sent, the import's source as `vmplane_source`, the options it
    applied). An import made elsewhere (the native API) gets the fields HyperSDK's client
    reads, derived from the import."""
    derived = _derived_definition(imp)
    sent = dict(imp.origin or {})
    if not sent:
        return derived
    out = {**derived, **sent, "id": imp.id, "created_at": derived["created_at"], "vmplane_source": derived["source"]}
    for key, allowed in (("format", FORMATS), ("export_method", EXPORT_METHODS)):
        if out.get(key) not in allowed:  # HyperSDK's client refuses any other value
            out[key] = derived[key]
    for key in ("vm_path", "name"):
        if not isinstance(out.get(key), str) or not out[key]:
            out[key] = derived[key]
    if isinstance(sent.get("options"), dict):
        out["options"] = {**derived["options"], **sent["options"]}
    return out


def _derived_definition(imp: Any) -> dict[str, Any]:
    """The fields HyperSDK's client reads, from the import itself."""
    src = dict(imp.source or {})
    kind = src.get("type")
    d: dict[str, Any] = {
        "id": imp.id, "name": imp.name, "vm_path": src.get("vmPath") or src.get("url") or src.get("path") or "",
        "format": "ova" if kind == "ova" else (src.get("format") if src.get("format") in FORMATS else "ovf"),
        "export_method": "web" if src.get("exportMethod") == "datastore" else "", "source": src,
        "compress": False, "thin": False, "insecure": bool(src.get("insecure")), "created_at": ts(imp.created_at),
    }  # fmt: skip
    if kind == "vsphere":
        for key, value in (("vcenter_url", src.get("vcenterUrl")), ("username", src.get("username")), ("profile", src.get("profile"))):
            if value:
                d[key] = value
    options = dict(imp.options or {})
    d["options"] = {"remove_cdrom": bool(options.get("removeCdroms")), "start": bool(options.get("start", True)),
                    "network_mapping": options.get("networkMapping") or {}}  # fmt: skip
    return d


def render_job(imp: Any, job: Any) -> dict[str, Any]:
    """A HyperSDK job from a vmplane import (an ImportView) and its job (None if gone)."""
    state = job.state if job is not None else imp.state
    status = HYPERSDK_STATUS.get(state, "failed")
    done, total = int(imp.bytes_done or 0), imp.bytes_total
    percent = 100 if status == "completed" else imp.percent
    stage = imp.stage or {"pending": "pending", "running": "connecting"}.get(status, status)
    if status == "completed":
        stage = "completed"
    progress = {
        "phase": stage, "stage": stage, "current_step": stage, "percent_complete": percent,
        "current_bytes": done, "bytes_transferred": done, "bytes_downloaded": done, "total_bytes": int(total or 0),
        "export_method": "",
    }  # fmt: skip
    return {
        "definition": definition_of(imp),
        "status": status,
        "progress": progress,
        "started_at": ts(job.started_at if job is not None else None),
        "updated_at": ts(max(imp.updated_at, job.updated_at if job is not None else 0)),
        "completed_at": ts(imp.finished_at or (job.finished_at if job is not None else None)),
        "error": imp.error,
        "vm_id": imp.vm_id,
        "vmplane_job_id": imp.job_id,
    }


def render_schedule(row: Any) -> dict[str, Any]:
    o = row.origin or {}
    return {
        "id": o.get("id") or row.id, "name": row.name, "description": o.get("description", ""), "schedule": row.schedule,
        "job_template": o.get("job_template") or {}, "enabled": row.enabled, "next_run": ts(row.next_run), "last_run": ts(row.last_run),
        "run_count": row.run_count, "success_count": row.success_count, "failure_count": row.failure_count, "tags": o.get("tags") or [],
        "last_job_id": row.last_job_id, "last_error": row.last_error, "created_at": ts(row.created_at), "updated_at": ts(row.updated_at),
        "vmplane_schedule_id": row.id,
    }  # fmt: skip


def render_webhook(row: Any) -> dict[str, Any]:
    return {
        "url": row.url, "events": list(row.events), "enabled": row.enabled, "timeout": math.ceil(row.timeout_sec), "retry_count": row.retry_count,
        "headers": redacted_headers(row.headers), "created_at": ts(row.created_at),
    }  # fmt: skip


def webhook_events(events: Any) -> list[str]:
    """The document's names (`job.completed`), the Python client's (`job_completed`), or `*` patterns."""
    if events is None:
        return ["job.*", "schedule.*"]
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise InvalidRequest("events must be a list of event names such as job.completed", field="events")
    out = []
    for e in events:
        name = e.strip().lower()
        if "." not in name and "_" in name:
            name = name.replace("_", ".", 1)
        if name in ("*", "job.*", "schedule.*") or name in WEBHOOK_EVENTS:
            out.append(name)
        else:
            raise InvalidRequest(f"events: {e!r} is not one of {', '.join(WEBHOOK_EVENTS)}", field="events")
    if not out:
        raise InvalidRequest("events must name at least one event", field="events")
    return out


def go_duration(seconds: float) -> str:
    """`1h2m3s`, as Go prints a time.Duration (the daemon's uptime)."""
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"
