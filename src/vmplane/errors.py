"""One error vocabulary for the whole core; faces map these to their own wire shapes."""

from typing import Any


class VmplaneError(Exception):
    """Base of every error the core raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequest(VmplaneError):
    status = 400
    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        if field is not None:
            details["field"] = field
        super().__init__(message, **details)
        self.field = field


class Unauthorized(VmplaneError):
    status = 401
    code = "unauthorized"


class Forbidden(VmplaneError):
    status = 403
    code = "forbidden"


class RateLimited(VmplaneError):
    status = 429
    code = "rate_limited"


class NotFound(VmplaneError):
    status = 404
    code = "not_found"


class Conflict(VmplaneError):
    status = 409
    code = "conflict"


class InvalidState(Conflict):
    """An operation needs the resource in another state (`@requires(VmState.STOPPED)`)."""

    code = "invalid_state"

    def __init__(self, message: str, current: str | None = None, required: Any = None) -> None:
        details: dict[str, Any] = {}
        if current is not None:
            details["current"] = current
        if required is not None:
            details["required"] = required
        super().__init__(message, **details)


class PayloadTooLarge(VmplaneError):
    status = 413
    code = "payload_too_large"


class NoCapacity(VmplaneError):
    status = 503
    code = "no_capacity"


class NotReady(VmplaneError):
    status = 503
    code = "not_ready"


class DriverError(VmplaneError):
    """A hypervisor driver call failed; the message says what failed, details say where."""

    status = 502
    code = "driver_error"


class ImageRefused(DriverError):
    """A disk image from outside that vmplane will not use (`drivers.qemu.intake`); the
    message says why."""

    status = 400
    code = "image_refused"


class TaskCancelled(VmplaneError):
    code = "cancelled"
