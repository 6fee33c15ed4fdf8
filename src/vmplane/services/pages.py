"""Opaque page tokens for keyset pagination."""

import base64
import json

from ..errors import InvalidRequest


def encode(kind: str, seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([kind, seq]).encode()).decode().rstrip("=")


def decode(kind: str, token: str | None) -> int | None:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        got_kind, seq = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if got_kind != kind or not isinstance(seq, int):
            raise ValueError
    except (ValueError, TypeError, json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("pageToken is not a token this list gave out", field="pageToken") from None
    return seq
