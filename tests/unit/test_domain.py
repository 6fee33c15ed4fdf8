"""Small pure pieces: job end states, uptime format, page tokens, ids."""

from datetime import UTC, datetime

import pytest

from vmplane import clock, ids
from vmplane.domain import JobState, job_final_state
from vmplane.errors import InvalidRequest
from vmplane.services import pages


@pytest.mark.parametrize(
    "counts, state",
    [
        ((3, 3, 0, 0), JobState.SUCCEEDED),
        ((3, 0, 3, 0), JobState.FAILED),
        ((3, 2, 1, 0), JobState.PARTIAL),
        ((3, 1, 0, 2), JobState.CANCELLED),
        ((3, 2, 0, 0), None),
    ],
)
def test_job_final_state(counts: tuple[int, int, int, int], state: JobState | None) -> None:
    assert job_final_state(*counts) == state


@pytest.mark.parametrize("seconds, text", [(9, "9s"), (64, "1m 4s"), (3 * 3600 + 120, "3h 2m"), (2 * 86400 + 3 * 3600 + 5, "2d 3h")])
def test_human_duration(seconds: int, text: str) -> None:
    assert clock.human_duration(seconds) == text


def test_rfc3339() -> None:
    assert clock.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert clock.rfc3339(None) is None


@pytest.mark.parametrize(
    "ts", [1765000000.9999995, 1765000000.9999994, 169028091.9999995, 1.4999, 86399.9999999, -0.0000004, -1.5, 951782400.0, 4102444799.5]
)
def test_rfc3339_agrees_with_datetime(ts: float) -> None:
    """The fast formatting rounds to the microsecond as datetime does (a time a hair before a
    second's end is that second's end on both)."""
    assert clock.rfc3339(ts) == datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_page_tokens_round_trip_and_reject_foreign_tokens() -> None:
    token = pages.encode("vms", 42)
    assert pages.decode("vms", token) == 42
    assert pages.decode("vms", None) is None
    with pytest.raises(InvalidRequest):
        pages.decode("jobs", token)
    with pytest.raises(InvalidRequest):
        pages.decode("vms", "not-a-token!!")


def test_ids() -> None:
    a, b = ids.new_id("vm"), ids.new_id("vm")
    assert a != b and a.startswith("vm-") and ids.looks_like_id(a)
    assert not ids.looks_like_id("vm-../../etc")
    assert ids.looks_like_uuid(ids.new_uuid())
