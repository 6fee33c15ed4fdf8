"""Event types and the patterns subscribers filter with (`vm.*`, `job.completed`): the
vocabulary of events, which the store writes and events/ carries to subscribers."""

import fnmatch
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

VM_TYPES = ("vm.created", "vm.starting", "vm.running", "vm.stopped", "vm.deleted", "vm.error", "vm.updated", "vm.health", "vm.guest_ready", "vm.port_changed")
JOB_TYPES = ("job.submitted", "job.started", "job.progress", "job.completed", "job.failed", "job.cancelled")
TASK_TYPES = ("task.started", "task.succeeded", "task.failed", "task.cancelled")
SCHEDULE_TYPES = ("schedule.triggered", "schedule.completed", "schedule.failed", "schedule.disabled")
NODE_TYPES = ("node.online", "node.offline")
WEBHOOK_TYPES = ("webhook.delivered", "webhook.failed", "webhook.disabled")
PLUGIN_TYPES = ("plugin.installed", "plugin.enabled", "plugin.disabled", "plugin.deleted")
DEPLOYMENT_TYPES = ("deployment.created", "deployment.updated", "deployment.deleted", "deployment.reconciled", "deployment.disabled")
ALL_TYPES = VM_TYPES + JOB_TYPES + TASK_TYPES + SCHEDULE_TYPES + NODE_TYPES + WEBHOOK_TYPES + PLUGIN_TYPES + DEPLOYMENT_TYPES

PATTERN_RE = re.compile(r"^[a-z_*]+(\.[a-z_*]+)?$")

# VM status → the event announcing it (other statuses are `vm.updated`)
VM_STATUS_EVENT = {
    "starting": "vm.starting",
    "running": "vm.running",
    "stopped": "vm.stopped",
    "error": "vm.error",
}


def vm_event_for(status: str) -> str:
    return VM_STATUS_EVENT.get(status, "vm.updated")


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def sees(org_id: str | None, team_id: str | None, event: "Event") -> bool:
    """Whether a credential of organization `org_id` (None: every one) and team `team_id`
    (None: the whole organization) may see `event`: events of every organization, and its
    organization's events of its team (a team-scoped credential) or of any team."""
    if event.org_id is None or org_id is None:
        return True
    return event.org_id == org_id and (team_id is None or event.team_id == team_id)


def matches(patterns: tuple[str, ...] | None, type_: str) -> bool:
    """None matches everything; `*` matches within and across dots (`job.*`, `*`)."""
    if not patterns:
        return True
    return any(p == type_ or _compiled(p).match(type_) for p in patterns)


def check_patterns(patterns: list[str]) -> tuple[str, ...]:
    """Validate patterns; ValueError names the bad one."""
    for p in patterns:
        if not PATTERN_RE.match(p):
            raise ValueError(f"{p!r} is not an event type or pattern such as 'vm.*' or 'job.completed'")
        if "*" not in p and p not in ALL_TYPES:
            raise ValueError(f"{p!r} is not a known event type")
    return tuple(patterns)


@dataclass(slots=True)
class Event:
    seq: int
    type: str
    ts: float
    resource: str | None
    data: dict[str, Any]
    org_id: str | None = None
    """who may see it: one organization, or None for every one"""
    team_id: str | None = None
    """within the organization: its credentials of the whole organization, and of this team
    (None: of the whole organization only)"""
    encoded: bytes | None = field(default=None, compare=False, repr=False)
    """the event's JSON, filled in once by `wire.to_json` and shared by every subscriber"""
