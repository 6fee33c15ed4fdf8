"""One error vocabulary for the whole core: what happened, never how HTTP shows it.

Every error the core raises on purpose is a `VmplaneError` with a `reason` (a `Reason`: what
happened, e.g. `name_taken`, `wrong_state`, `no_capacity`), a human sentence (`message`) and
`details`. Where the error is about one field of the request, `details["field"]` names it as
the domain does (`resources.disk_gb`, `name`); a face maps that name to its own wire path.

The classes group reasons (a `Conflict` is `conflict`, `name_taken`, `in_progress` or
`unsupported`); each class has a default reason and a raise site may name a finer one
(`Conflict(..., reason=Reason.NAME_TAKEN)`). Statuses and wire codes are not here: each face
maps reasons to its status and body in one table (`api/errors.NATIVE` for the native face,
`api/compat/<face>/wire.STATUS` for the others, `drivers/remote_wire.STATUS` for the node agent).

Which VM states allow which operation is one table too: `vmstates.OPERATIONS`, checked by
`vmstates.require_state` (services and job handlers call it rather than raise `InvalidState`).
"""

import math
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """What happened; the faces' tables are keyed on these."""

    INTERNAL = "internal"
    """something that should not happen; the log says more"""
    INVALID = "invalid"
    """the request is malformed or asks for something impossible (the field says where)"""
    BEYOND_ANY_NODE = "beyond_any_node"
    """a resource (the field) is more than any node could ever hold"""
    CANNOT_SHRINK = "cannot_shrink"
    """a disk (the field) would be smaller than it is, or than what it is made from"""
    OVER_LIMIT = "over_limit"
    """the request asks for more than a fixed limit allows (a period longer than the most, say)"""
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RATE_LIMITED = "rate_limited"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    """the request contradicts what exists (not covered by a finer reason)"""
    NAME_TAKEN = "name_taken"
    """the name is another resource's"""
    IN_PROGRESS = "in_progress"
    """other work on the resource must end first"""
    UNSUPPORTED = "unsupported"
    """the installation or the resource's node cannot do this (no backup store, a driver without the feature)"""
    WRONG_STATE = "wrong_state"
    """the resource is not in a state the operation allows (`details`: current, required)"""
    QUOTA_EXCEEDED = "quota_exceeded"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    BODY_TOO_LARGE = "body_too_large"
    """something fetched from outside is larger than its cap"""
    OUTBOUND_REFUSED = "outbound_refused"
    """the outbound policy refuses to connect where a URL leads"""
    NO_CAPACITY = "no_capacity"
    NOT_READY = "not_ready"
    DRIVER_FAILED = "driver_failed"
    """a hypervisor driver call failed (a node, QEMU, the guest agent)"""
    IMAGE_REFUSED = "image_refused"
    """a disk image from outside that vmplane will not use"""
    VCENTER_FAILED = "vcenter_failed"
    BACKUP_STORE_FAILED = "backup_store_failed"
    CANCELLED = "cancelled"


class VmplaneError(Exception):
    """Base of every error the core raises on purpose."""

    reason: Reason = Reason.INTERNAL

    def __init__(self, message: str, *, reason: Reason | str | None = None, **details: Any) -> None:
        """`reason`: a finer Reason than the class's; anything else is a detail (drivers name
        an OS error's cause `reason=exc.strerror`)."""
        super().__init__(message)
        self.message = message
        if isinstance(reason, Reason):
            self.reason = reason
        elif reason is not None:
            details["reason"] = reason
        self.details = details


class InvalidRequest(VmplaneError):
    reason = Reason.INVALID

    def __init__(self, message: str, field: str | None = None, *, reason: Reason | str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, reason=reason, **details)
        self.field = field


class Unauthorized(VmplaneError):
    reason = Reason.UNAUTHORIZED


class Forbidden(VmplaneError):
    reason = Reason.FORBIDDEN


class RateLimited(VmplaneError):
    """Too much at once (requests, open streams, disk exports). `retry_after`: the whole
    seconds (rounded up, at least 1) after which a retry may pass; every face sends it as
    `Retry-After`. A limit on things running at once cannot know when one ends: 5 s then."""

    reason = Reason.RATE_LIMITED

    def __init__(self, message: str, *, retry_after: float = 5, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = max(1, math.ceil(retry_after))


class NotFound(VmplaneError):
    reason = Reason.NOT_FOUND


class Conflict(VmplaneError):
    reason = Reason.CONFLICT


class InvalidState(Conflict):
    """An operation needs the resource in another state; for a VM, raised by
    `vmstates.require_state` from the table of operations and the states they allow."""

    reason = Reason.WRONG_STATE

    def __init__(self, message: str, current: str | None = None, required: Any = None) -> None:
        details: dict[str, Any] = {}
        if current is not None:
            details["current"] = current
        if required is not None:
            details["required"] = required
        super().__init__(message, **details)


class PayloadTooLarge(VmplaneError):
    reason = Reason.PAYLOAD_TOO_LARGE


class NoCapacity(VmplaneError):
    reason = Reason.NO_CAPACITY


class NotReady(VmplaneError):
    reason = Reason.NOT_READY


class DriverError(VmplaneError):
    """A hypervisor driver call failed; the message says what failed, details say where."""

    reason = Reason.DRIVER_FAILED


class NodeUnreachable(DriverError):
    """The node's agent could not be asked, or did not answer (offline, unreachable, timed out,
    the connection broke): the call's outcome on the node is unknown, and asking again once
    the node is back is the way to learn it (the contract's calls are idempotent)."""


class Superseded(Conflict):
    """A node refused a call that a later one has superseded: a call made on the same resource
    by a later run of a task (`drivers.base.CallOrder`) reached it first. The caller's run is
    stale (its task is another run's now) and must not act further."""


class ImageRefused(DriverError):
    """A disk image from outside that vmplane will not use (`drivers.qemu.intake`); the
    message says why."""

    reason = Reason.IMAGE_REFUSED


class TaskCancelled(VmplaneError):
    reason = Reason.CANCELLED
