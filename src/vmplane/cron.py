"""Cron expressions (5 fields: minute hour day month weekday) in a time zone, via cronsim."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import InvalidRequest


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidRequest(f"timezone {name!r} is not an IANA time zone such as 'UTC' or 'Europe/Paris'", field="timezone") from None


def check(expr: str, tz: str) -> None:
    if len(expr.split()) != 5:
        raise InvalidRequest(f"schedule {expr!r} must have 5 fields: minute hour day month weekday", field="schedule")
    next_after(expr, tz, datetime.now(UTC).timestamp())


def next_after(expr: str, tz: str, after: float) -> float:
    """The first time strictly after `after` (epoch seconds) that `expr` names in `tz`."""
    start = datetime.fromtimestamp(after, tz=zone(tz))
    try:
        return next(iter(CronSim(expr, start))).timestamp()
    except (CronSimError, StopIteration) as exc:
        raise InvalidRequest(f"schedule {expr!r} is not a valid cron expression: {exc}", field="schedule") from None
