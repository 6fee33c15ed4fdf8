"""VM names and display names.

A VM's `name` is a DNS label (it reaches hostnames, file paths and the guest): 1-63 letters,
digits and '-', unique within the organization. Faces whose contracts allow more (FastVM: up
to 64 of any character; Blue Lobster: underscores) keep what the client sent as the VM's
*display name*, free text of at most 64 printable characters, and the core derives a valid
name from it (`derive_name`), made unique with a numeric suffix (`candidate`) where needed.
"""

from __future__ import annotations

import re
import unicodedata

from ..errors import InvalidRequest

NAME_MAX = 63
NAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
DISPLAY_NAME_MAX = 64
DISPLAY_NAME_RULE = f"1 to {DISPLAY_NAME_MAX} printable characters (no control characters)"
FALLBACK_NAME = "vm"
"""the name derived from a display name with nothing usable in it (`日本`, `!!!`)"""

_SUFFIXED = re.compile(r"^(.*)-([0-9]+)$")


def check_display_name(value: object, field: str = "displayName") -> str:
    """`value` when it is a display name (else InvalidRequest naming `field`)."""
    if not isinstance(value, str) or not 1 <= len(value) <= DISPLAY_NAME_MAX or not value.isprintable():
        raise InvalidRequest(f"{field} must be {DISPLAY_NAME_RULE}", field=field)
    return value


def derive_name(display: str, fallback: str = FALLBACK_NAME) -> str:
    """A valid VM name for a display name: a valid name stays as it is; otherwise accents are
    dropped (`café` -> `cafe`), every other character but ASCII letters and digits becomes '-',
    runs of '-' collapse, '-' is trimmed from both ends, and the result is cut to 63
    characters (`my web` -> `my-web`, `my_vm` -> `my-vm`); nothing left: `fallback`. Every
    name vmplane makes from a caller's text (display names, an imported VM's OVF name, a
    HyperSDK job's name or path) is made here."""
    if NAME_RE.match(display):
        return display
    out: list[str] = []
    for c in unicodedata.normalize("NFKD", display):
        if c.isascii() and c.isalnum():
            out.append(c)
        elif not unicodedata.combining(c):
            out.append("-")
    name = re.sub("-+", "-", "".join(out)).strip("-")[:NAME_MAX].strip("-")
    return name or fallback


def candidate(base: str, n: int) -> str:
    """The n-th name to try for `base` (a valid name): `base`, then `base-2`, `base-3`, ...,
    with `base` cut so that the name stays within 63 characters."""
    if n <= 1:
        return base
    suffix = f"-{n}"
    return base[: NAME_MAX - len(suffix)].rstrip("-") + suffix


def derived_from(name: str, base: str) -> bool:
    """Whether `name` is one of `base`'s candidates (a VM already named so keeps its name when
    its display name changes to another of the same base)."""
    if name == base:
        return True
    m = _SUFFIXED.match(name)
    return m is not None and int(m[2]) >= 2 and candidate(base, int(m[2])) == name
