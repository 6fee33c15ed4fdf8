"""Events on the wire: the JSON every stream and webhook uses, encoded once per event."""

import json
from typing import Any

from .. import clock
from ..event_types import Event


def to_dict(event: Event) -> dict[str, Any]:
    return {
        "id": event.seq,
        "type": event.type,
        "time": clock.rfc3339_ms(event.ts),
        "resource": event.resource,
        "data": event.data,
    }


def to_json(event: Event) -> bytes:
    """The event as JSON, encoded once however many subscribers receive it."""
    if event.encoded is None:
        event.encoded = json.dumps(to_dict(event), separators=(",", ":")).encode()
    return event.encoded


def sse(event: Event) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event.seq, event.type.encode(), to_json(event))
