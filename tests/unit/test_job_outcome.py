"""JobOutcome: what the faces that answer with an operation's result read of a waited job."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vmplane.errors import DriverError
from vmplane.services.jobs import JobOutcome


def _outcome(state: str, *errors: str | None) -> JobOutcome:
    return JobOutcome(SimpleNamespace(state=state), [SimpleNamespace(error=e) for e in errors])  # type: ignore[arg-type]


def test_first_task_error_in_task_order_else_the_default() -> None:
    assert _outcome("failed", None, "disk full", "later").error("the job failed") == "disk full"
    assert _outcome("failed", None, "").error("the job failed") == "the job failed"
    assert _outcome("failed").error("unknown error") == "unknown error"


@pytest.mark.parametrize(
    ("state", "ended", "failed", "unsuccessful"),
    [
        ("queued", False, False, False),
        ("running", False, False, False),
        ("succeeded", True, False, False),
        ("failed", True, True, True),
        ("partial", True, False, True),
        ("cancelled", True, False, True),
    ],
)
def test_states(state: str, ended: bool, failed: bool, unsuccessful: bool) -> None:
    o = _outcome(state)
    assert (o.ended, o.failed, o.unsuccessful) == (ended, failed, unsuccessful)
    assert o.state == state


def test_raise_if_failed_names_what_and_the_first_error() -> None:
    _outcome("partial", "one of two").raise_if_failed("deleting VMs")  # only a failed job raises
    _outcome("running").raise_if_failed("deleting VMs")
    with pytest.raises(DriverError, match="^stop of VM a failed: no such VM$"):
        _outcome("failed", "no such VM").raise_if_failed("stop of VM a")
    with pytest.raises(DriverError, match="^stop of VM a failed: the job failed$"):
        _outcome("failed").raise_if_failed("stop of VM a")
