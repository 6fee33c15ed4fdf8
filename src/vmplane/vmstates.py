"""Which VM states allow which operation: one table (`OPERATIONS`), checked in one place
(`require_state`), by the services when a request arrives and by the job handlers when its
task runs. No I/O here.

An operation that is refused raises `InvalidState` (reason `wrong_state`) with the VM's
current state and, where the rule names them, the states it needs. What a VM must have
besides a state (a node, a driver with the feature) is the caller's check.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .domain import VmStatus
from .errors import InvalidState


class VmOp(StrEnum):
    START = "start"
    STOP = "stop"
    SHUTDOWN = "shutdown"
    REBOOT = "reboot"
    POWER_CYCLE = "power-cycle"
    MOVE = "move"
    """to another node, stopped (its disk is copied)"""
    MIGRATE = "migrate"
    """to another node, running (live)"""
    GUEST = "guest"
    """reach into the running guest: exec, console, stats, a plugin's workload"""
    RENAME = "rename"
    RESIZE = "resize"
    DELETE = "delete"


EVERY = frozenset(VmStatus)


@dataclass(frozen=True, slots=True)
class Rule:
    allowed: frozenset[VmStatus]
    """the states the operation may start from"""
    refusal: str
    """the sentence when it may not: `{vm}` (how the caller names the VM), `{status}`, `{op}`"""
    required: str | tuple[str, ...] | None = None
    """what the error's details say the operation needs (`required`), if anything"""


POWER_RULE = "cannot {op} VM {vm}: it is {status}"


def _power(*allowed: VmStatus) -> Rule:
    return Rule(frozenset(allowed), POWER_RULE, tuple(sorted(allowed)))


OPERATIONS: dict[VmOp, Rule] = {
    VmOp.START: _power(VmStatus.STOPPED, VmStatus.ERROR, VmStatus.UNKNOWN),
    VmOp.STOP: _power(VmStatus.RUNNING, VmStatus.STARTING, VmStatus.STOPPING, VmStatus.REBOOTING, VmStatus.ERROR, VmStatus.UNKNOWN),
    VmOp.SHUTDOWN: _power(VmStatus.RUNNING),
    VmOp.REBOOT: _power(VmStatus.RUNNING),
    VmOp.POWER_CYCLE: _power(VmStatus.RUNNING, VmStatus.STOPPED, VmStatus.ERROR, VmStatus.UNKNOWN),
    VmOp.MOVE: Rule(frozenset({VmStatus.STOPPED}), "VM {vm} is {status}; only stopped VMs move (running ones migrate)", "stopped"),
    VmOp.MIGRATE: Rule(frozenset({VmStatus.RUNNING}), "VM {vm} is {status}; only running VMs migrate (stopped ones move)", "running"),
    VmOp.GUEST: Rule(frozenset({VmStatus.RUNNING}), "VM {vm} is {status}, not running", "running"),
    VmOp.RENAME: Rule(EVERY - {VmStatus.DELETING}, "VM {vm} is being deleted"),
    VmOp.RESIZE: Rule(EVERY - {VmStatus.DELETING, VmStatus.PROVISIONING}, "VM {vm} is {status}; resize it once it is created"),
    VmOp.DELETE: Rule(EVERY - {VmStatus.DELETING}, "VM {vm} is already being deleted"),
}
"""operation -> the states it may start from; power actions name them all when refused"""


def allows(op: VmOp | str, status: str) -> bool:
    return status in OPERATIONS[VmOp(op)].allowed


def require_state(op: VmOp | str, status: str, vm: str) -> None:
    """Raise InvalidState unless a VM in `status` may undergo `op`; `vm` is how the sentence
    names it (its id, or its name where the caller speaks of names)."""
    op = VmOp(op)
    rule = OPERATIONS[op]
    if status in rule.allowed:
        return
    message = rule.refusal.format(op=op.value, vm=vm, status=status)
    if rule.required is None:
        raise InvalidState(message, current=status)
    raise InvalidState(message, current=status, required=rule.required if isinstance(rule.required, str) else list(rule.required))
