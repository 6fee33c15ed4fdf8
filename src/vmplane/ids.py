"""The one id generator: short random ids with a type prefix (`vm-…`, `job-…`)."""

import re
import secrets
import uuid

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
_ID_RE = re.compile(r"^[a-z]{2,8}-[0-9a-z]{4,40}$")


def new_id(prefix: str) -> str:
    """A new id such as `vm-3k9f2m7q1xw8` (60 random bits)."""
    return prefix + "-" + "".join(secrets.choice(_ALPHABET) for _ in range(12))


def new_uuid() -> str:
    return str(uuid.uuid4())


def looks_like_id(value: str) -> bool:
    """True if `value` has the shape of a vmplane id (safe for paths and logs)."""
    return bool(_ID_RE.match(value))


def looks_like_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
