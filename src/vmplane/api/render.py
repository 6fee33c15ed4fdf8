"""Records and rows → native wire dicts. Built by hand (not through pydantic) because lists are
hot; `Json`, the response that renders them with orjson."""

from typing import Any

import orjson
from fastapi.responses import JSONResponse
from sqlalchemy import Row

from .. import clock
from ..domain import DEFAULT_BOOT_ORDER, Iso, Template, Vm, job_progress


class Json(JSONResponse):
    """A JSONResponse rendered by orjson: the same bytes as Starlette's (compact, UTF-8), in a
    tenth of the time (a page of 50 VMs: ~0.4 ms by the json module, 14 % of the page's
    time). What orjson does not take (an integer past 64 bits) is rendered as Starlette does."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def dumps(content: Any) -> bytes:
    """JSON text as `Json` renders it."""
    try:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return JSONResponse.render(None, content)  # type: ignore[arg-type]


def vm(row: Vm, now: float) -> dict[str, Any]:
    spec = row.spec
    return {
        "id": row.id,
        "uuid": row.uuid,
        "vmid": row.vmid,
        "name": row.name,
        "displayName": row.display_name,
        "node": row.node_id,
        "nodeId": row.node_id,
        "status": row.status,
        "guestReady": row.guest_ready,
        "blank": row.blank,
        "cdrom": {"isoId": row.cdrom_iso_id} if row.cdrom_iso_id else None,
        "bootOrder": list(spec.boot_order or DEFAULT_BOOT_ORDER),
        "firmware": spec.firmware or "bios",
        "uptime": clock.human_duration(now - row.started_at) if row.started_at and row.status == "running" else None,
        "startedAt": clock.rfc3339(row.started_at) if row.started_at and row.status == "running" else None,
        "tags": row.tags,
        "resources": {"cpu": row.cpu, "ramMb": row.ram_mb, "diskGb": row.disk_gb},
        "templateId": row.template_id,
        "snapshotId": row.snapshot_id,
        "error": row.error,
        "expose": [e.to_json() for e in spec.expose],
        "nics": [{"networkId": n.network_id, "network": n.network, "mac": n.mac, "ipAddresses": list(n.addresses)} for n in spec.nics],
        "pciDevices": list(spec.pci_assigned),
        "plugin": spec.plugin.to_json() if spec.plugin is not None else None,
        "ssh": row.ssh_endpoint,
        "pendingRestart": bool(pending := row.pending),
        "pending": pending,
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
    }


def template(row: Template) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "os": row.os,
        "nodeId": row.node_id,
        "sizeMb": row.size_mb,
        "status": row.status,
        "format": row.format,
        "sourceUrl": row.source_url,
        "checksum": row.checksum,
        "loginUser": row.login_user,
        "shared": row.shared,
        "error": row.error,
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
    }


def iso(row: Iso) -> dict[str, Any]:
    return {
        "id": row.id, "name": row.name, "status": row.status, "sizeBytes": row.size_bytes, "sha256": row.sha256,
        "sourceUrl": row.source_url, "shared": row.shared, "error": row.error,
        "createdAt": clock.rfc3339(row.created_at), "updatedAt": clock.rfc3339(row.updated_at),
    }  # fmt: skip


def job(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "type": row.type,
        "state": row.state,
        "progress": job_progress(row.total, row.progress_sum),
        "createdBy": row.created_by,
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
        "startedAt": clock.rfc3339(row.started_at),
        "finishedAt": clock.rfc3339(row.finished_at),
        "taskCount": row.total,
        "keyPrefix": (row.origin or {}).get("token_hint"),
        "clientIp": (row.origin or {}).get("client_ip"),
    }


def task(row: Row[Any]) -> dict[str, Any]:
    return {
        "id": row.id,
        "resourceId": row.resource_id,
        "state": row.state,
        "progress": row.progress,
        "error": row.error,
        "attempts": row.attempts,
        "startedAt": clock.rfc3339(row.started_at),
        "finishedAt": clock.rfc3339(row.finished_at),
    }


def task_log_line(ts: float, message: str) -> str:
    return f"{clock.rfc3339(ts)}: {message}"


def node_resources(row: Any) -> dict[str, int]:
    return {
        "cpuTotal": int(row.cpu_total),
        "cpuUsed": int(row.cpu_used),
        "ramMbTotal": int(row.ram_mb_total),
        "ramMbUsed": int(row.ram_mb_used),
        "diskGbTotal": int(row.disk_gb_total),
        "diskGbUsed": int(row.disk_gb_used),
    }


def node(row: Row[Any], operator: bool = True) -> dict[str, Any]:
    """`operator`: the caller runs the installation; others do not see where agents listen."""
    return {
        "id": row.id,
        "hostname": row.hostname,
        "status": row.status,
        "driver": row.driver,
        "hypervisor": (row.labels or {}).get("hypervisor") or row.driver,
        "simulated": row.driver == "sim" or (row.labels or {}).get("hypervisor") == "sim",
        "cordoned": bool(row.cordoned),
        "agentUrl": row.agent_url if operator else None,
        "heartbeatAt": clock.rfc3339(row.heartbeat_at),
        "resources": node_resources(row),
        "createdAt": clock.rfc3339(row.created_at),
        "updatedAt": clock.rfc3339(row.updated_at),
    }
