"""The one table of VM operations and the states they may start from (vmplane.vmstates)."""

import pytest

from vmplane.domain import VmStatus
from vmplane.errors import InvalidState, Reason
from vmplane.vmstates import OPERATIONS, VmOp, allows, require_state


def test_every_operation_has_a_rule_and_every_rule_a_sentence() -> None:
    assert set(OPERATIONS) == set(VmOp)
    for op, rule in OPERATIONS.items():
        assert rule.allowed, op
        assert "{vm}" in rule.refusal, op


def test_power_refusals_name_every_state_allowed() -> None:
    with pytest.raises(InvalidState) as info:
        require_state("reboot", "stopped", "vm-1")
    exc = info.value
    assert exc.reason == Reason.WRONG_STATE
    assert exc.message == "cannot reboot VM vm-1: it is stopped"
    assert exc.details == {"current": "stopped", "required": ["running"]}
    with pytest.raises(InvalidState) as info:
        require_state(VmOp.START, "running", "vm-1")
    assert info.value.details["required"] == ["error", "stopped", "unknown"]


def test_moves_migrations_and_the_guest() -> None:
    require_state(VmOp.MOVE, "stopped", "vm-1")
    with pytest.raises(InvalidState) as info:
        require_state(VmOp.MOVE, "running", "vm-1")
    assert info.value.message == "VM vm-1 is running; only stopped VMs move (running ones migrate)"
    assert info.value.details == {"current": "running", "required": "stopped"}
    with pytest.raises(InvalidState) as info:
        require_state(VmOp.GUEST, "stopped", "web")
    assert info.value.message == "VM web is stopped, not running"


def test_what_a_vm_being_deleted_or_made_cannot_do() -> None:
    for op in (VmOp.RENAME, VmOp.RESIZE, VmOp.DELETE):
        assert not allows(op, VmStatus.DELETING)
        assert allows(op, VmStatus.STOPPED)
    assert not allows(VmOp.RESIZE, VmStatus.PROVISIONING) and allows(VmOp.RENAME, VmStatus.PROVISIONING)
    with pytest.raises(InvalidState) as info:
        require_state(VmOp.DELETE, "deleting", "vm-2")
    assert info.value.message == "VM vm-2 is already being deleted" and info.value.details == {"current": "deleting"}
