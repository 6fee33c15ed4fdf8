"""Sizes as people type them (`2G`, `2GiB`, `512M`) for --ram-mb and --disk-gb.

The rule (said in --help and docs/cli.md): a plain number is the option's own unit (MiB for
--ram-mb, GiB for --disk-gb); K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024 (`2G` =
`2GiB` = 2048 MiB: what `free -h`, QEMU and qemu-img mean by G); KB, MB, GB, TB are powers
of 1000 as in Incus (`2GB` = 2,000,000,000 bytes = 1907.35 MiB). The result must be a whole
number of the option's unit: a size that is not is refused with the nearest ones, never
rounded behind the caller's back.
"""

import re

import typer

_BINARY = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(ib|b)?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int, unit: str, flag: str) -> int:
    """`text` in the option's `unit` ("MiB" or "GiB"), as a whole number; exits 2 naming `flag`.
    An int is the option's default, already in its unit (click passes defaults through too)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a size: give a number of {unit} or one with a unit, such as 512M, 2G, 2GiB or 20GB", param_hint=flag)
    number, prefix, suffix = float(m.group(1)), (m.group(2) or "").lower(), (m.group(3) or "").lower()
    base = 1024 ** _BINARY["m" if unit == "MiB" else "g"]
    if not prefix:
        value = number  # a plain number: the option's unit
    elif suffix == "b":  # KB, MB, GB, TB: powers of 1000
        value = number * 1000 ** _BINARY[prefix] / base
    else:  # K, M, G, T, KiB, …: powers of 1024
        value = number * 1024 ** _BINARY[prefix] / base
    if abs(value - round(value)) > 1e-9:
        low, high = int(value), int(value) + 1
        raise typer.BadParameter(f"{text} is {value:.2f} {unit}; give a whole number of {unit}: {f'{low} or {high}' if low else high}", param_hint=flag)
    return int(round(value))


def ram_mb(text: str | int) -> int:
    return parse_size(text, "MiB", "--ram-mb")


def disk_gb(text: str | int) -> int:
    return parse_size(text, "GiB", "--disk-gb")


def show_mib(mib: int) -> str:
    """512 MiB, 2 GiB, 1.5 GiB: a MiB count for people."""
    if mib >= 1024 * 1024 and mib % (1024 * 1024) == 0:
        return f"{mib // (1024 * 1024)} TiB"
    if mib >= 1024:
        return f"{mib / 1024:g} GiB"
    return f"{mib} MiB"


RAM_HELP = "memory: 512M, 2G (= 2GiB = 2048 MiB), 2GB (powers of 1000); a plain number is MiB"
DISK_HELP = "disk: 20G (= 20GiB), 20GB (powers of 1000, must come to whole GiB); a plain number is GiB"
