"""Each face's table from the core's reasons to its answers: total over `Reason`, and the native
face's answers to each error class as they always were (status, code)."""

import json
from typing import Any

import pytest

from vmplane import errors
from vmplane.api.compat.bluelobster import core_error as bl_error
from vmplane.api.compat.bluelobster import wire as bl_wire
from vmplane.api.compat.fastvm import wire as fastvm_wire
from vmplane.api.compat.hypersdk import wire as hypersdk_wire
from vmplane.api.compat.volant import core_error as volant_error
from vmplane.api.compat.volant import wire as volant_wire
from vmplane.api.errors import NATIVE, NATIVE_STATUS, core_error, native_field
from vmplane.drivers import remote_wire as agent_wire
from vmplane.errors import Reason
from vmplane.outbound import Refused, TooLarge
from vmplane.services.scopes import ScopeEnded
from vmplane.services.tenancy import QuotaExceeded
from vmplane.services.vsphere import VcenterError


def _body(response: Any) -> Any:
    return json.loads(bytes(response.body))


TABLES = {
    "native": NATIVE,
    "fastvm": fastvm_wire.STATUS,
    "hypersdk": hypersdk_wire.STATUS,
    "volant": volant_wire.STATUS,
    "bluelobster": bl_wire.STATUS,
    "agent": agent_wire.STATUS,
}


@pytest.mark.parametrize("face", sorted(TABLES))
def test_every_reason_has_an_answer(face: str) -> None:
    assert set(TABLES[face]) == set(Reason)


NATIVE_ANSWERS = [
    (errors.VmplaneError("x"), 500, "internal_error"),
    (errors.InvalidRequest("x"), 400, "invalid_request"),
    (errors.Unauthorized("x"), 401, "unauthorized"),
    (ScopeEnded("x"), 401, "unauthorized"),
    (errors.Forbidden("x"), 403, "forbidden"),
    (errors.RateLimited("x"), 429, "rate_limited"),
    (errors.NotFound("x"), 404, "not_found"),
    (errors.Conflict("x"), 409, "conflict"),
    (errors.Conflict("x", reason=Reason.NAME_TAKEN), 409, "conflict"),
    (errors.Conflict("x", reason=Reason.IN_PROGRESS), 409, "conflict"),
    (errors.InvalidState("x"), 409, "invalid_state"),
    (QuotaExceeded("x"), 409, "quota_exceeded"),
    (errors.PayloadTooLarge("x"), 413, "payload_too_large"),
    (errors.NoCapacity("x"), 409, "no_capacity"),  # issue 23: a create with no room is a conflict, refused at once
    (errors.NotReady("x"), 503, "not_ready"),
    (errors.DriverError("x"), 502, "driver_error"),
    (errors.ImageRefused("x"), 400, "image_refused"),
    (VcenterError("x"), 502, "vcenter_error"),
    (Refused("x"), 400, "outbound_refused"),
    (TooLarge("x"), 400, "too_large"),
    (errors.TaskCancelled("x"), 500, "cancelled"),
]


@pytest.mark.parametrize(("exc", "status", "code"), NATIVE_ANSWERS, ids=[type(e).__name__ + ":" + e.reason for e, _, _ in NATIVE_ANSWERS])
def test_native_answers_as_before(exc: errors.VmplaneError, status: int, code: str) -> None:
    response = core_error(exc)
    assert response.status_code == status
    assert _body(response) == {"error": "x", "code": code, "details": {}}
    assert NATIVE_STATUS[exc.reason] == status


def test_native_names_domain_fields_by_its_wire_paths() -> None:
    assert native_field("resources.disk_gb") == "resources.diskGb"
    assert native_field("[2].resources.ram_mb") == "[2].resources.ramMb"
    assert native_field("resources.cpu") == "resources.cpu"
    assert native_field("name") == "name"
    exc = errors.InvalidRequest("too small", field="[0].resources.disk_gb", reason=Reason.CANNOT_SHRINK, minimum=20)
    assert exc.reason == Reason.CANNOT_SHRINK and exc.field == "[0].resources.disk_gb"
    body = _body(core_error(exc))
    assert body == {"error": "too small", "code": "invalid_request", "details": {"minimum": 20, "field": "[0].resources.diskGb"}}


def test_compat_faces_answer_no_room_and_node_failures_in_their_terms() -> None:
    assert volant_error(errors.NoCapacity("full")).status_code == 409
    assert volant_error(errors.ImageRefused("bad")).status_code == 500
    assert volant_error(errors.InvalidState("no")).status_code == 409
    r = bl_error(errors.NoCapacity("full"))
    assert r.status_code == 409 and _body(r) == {"error": "resource_conflict", "message": "full"}
    r = bl_error(errors.DriverError("node down"))
    assert r.status_code == 500 and _body(r)["error"] == "operation_failed"
    r = bl_error(bl_wire.BlError(500, "reboot_failed", "no", task_id="job-1"))
    assert r.status_code == 500 and _body(r) == {"error": "reboot_failed", "message": "no", "task_id": "job-1"}
    assert fastvm_wire.STATUS[Reason.WRONG_STATE] == hypersdk_wire.STATUS[Reason.WRONG_STATE] == 409


def test_the_agent_carries_the_reason() -> None:
    sent = agent_wire.error_to_wire(errors.Conflict("busy", reason=Reason.IN_PROGRESS))
    got = agent_wire.error_from_wire(409, sent, "node-1")
    assert type(got) is errors.Conflict and got.reason == Reason.IN_PROGRESS and got.message == "busy"
    old = {"error": "no", "code": "invalid_state", "type": "InvalidState", "details": {"current": "running"}}  # an older agent's
    got = agent_wire.error_from_wire(409, old, "node-1")
    assert isinstance(got, errors.InvalidState) and got.reason == Reason.WRONG_STATE and got.details == {"current": "running"}


def test_a_reason_that_is_not_a_reason_stays_a_detail() -> None:
    """Drivers name an OS error's cause `reason=exc.strerror`: a detail, as it always was."""
    exc = errors.DriverError("cannot connect to the serial console", vm_id="vm-1", reason="No such file or directory")
    assert exc.reason == Reason.DRIVER_FAILED
    assert _body(core_error(exc))["details"] == {"vm_id": "vm-1", "reason": "No such file or directory"}
    got = agent_wire.error_from_wire(502, agent_wire.error_to_wire(exc), "node-1")
    assert type(got) is errors.DriverError and got.reason == Reason.DRIVER_FAILED and got.details == exc.details


def test_the_agent_answers_with_the_statuses_it_always_did() -> None:
    """The node agent's statuses were the core's own before reasons; its table keeps them."""
    # the native face answers a create with no room 409 since issue 23; the agent's wire keeps 503/400
    assert agent_wire.STATUS == {**NATIVE_STATUS, Reason.NO_CAPACITY: 503, Reason.BEYOND_ANY_NODE: 400}
