"""Logging of vmplane's processes (`vmplane serve`, `vmplane agent`): credentials that ride in
query strings never reach a log line.

Old WebSocket clients send `?apiKey=`; console WebSockets carry one-time tokens (`?token=`,
`?ticket=`, `?session=`); uvicorn writes `"WebSocket /path?query" [accepted]` through its
error logger even with the access log off, and httpx logs the URLs it fetches. Every log
record is scrubbed as it is made (a record factory, so no handler or logger can miss it): the
value of any query parameter whose name speaks of a key, token, ticket, session, secret or
password becomes `[redacted]`.
"""

from __future__ import annotations

import logging
import re
from typing import Any

SECRET_PARAM = re.compile(
    r"(?P<lead>[?&;](?P<name>[^=&\s\"'?#]*(?:key|token|ticket|session|secret|password|signature)[^=&\s\"'?#]*)=)[^&\s\"'#]*",
    re.IGNORECASE,
)
REDACTED = "[redacted]"


def scrub(text: str) -> str:
    """`text` with the values of secret-looking query parameters replaced."""
    if "=" not in text:
        return text
    return SECRET_PARAM.sub(lambda m: m.group("lead") + REDACTED, text)


_installed = False


def install_scrubbing() -> None:
    """Scrub every log record this process makes from now on (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return record

    logging.setLogRecordFactory(factory)
