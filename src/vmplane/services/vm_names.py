"""Naming VMs after their display names (domain.names): the first free candidate of the name
derived from the display name (`my-web`, `my-web-2`, …) in the organization.

The look at taken names is a guess; the unique (organization, name) index decides. An insert
or rename that loses a race to a concurrent one fails in its savepoint and picks again, up to
`NAME_ATTEMPTS` times, instead of checking and then inserting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import Vm
from ..domain.names import candidate, derive_name, derived_from
from ..errors import Conflict, Reason
from ..store import vms as vm_q

NAME_BLOCK = 64
"""how many of a base's candidate names (`web`, `web-2`, ...) one query looks at"""
NAME_ATTEMPTS = 8
"""inserts (or renames) of a VM named after its display name, when concurrent ones take its name first"""
LOST_RACE = "no free name was found for the VM: other VMs took the same names meanwhile"


async def free_name(conn: AsyncConnection, base: str, org_id: str, used: set[str], known: dict[str, tuple[int, set[str]]]) -> str:
    """The first candidate of `base` (`base`, `base-2`, ...) that the organization has no VM
    by and that is not in `used`. `known` caches, per base, how many candidates were looked up
    and which of them are taken (a bulk create of many `web`s looks once)."""
    looked, taken = known.setdefault(base, (0, set()))
    k = 1
    while True:
        if k > looked:
            taken.update(await vm_q.names_taken(conn, [candidate(base, j) for j in range(k, k + NAME_BLOCK)], org_id))
            looked = k + NAME_BLOCK - 1
            known[base] = (looked, taken)
        name = candidate(base, k)
        if name not in taken and name not in used:
            return name
        k += 1


async def insert_named(conn: AsyncConnection, rows: list[dict[str, Any]], wanted: Sequence[tuple[str | None, str | None]], org_id: str) -> None:
    """Insert new VM rows (store.vms.insert_vms). `wanted` is each row's (name, display name):
    a row without a name takes the first free candidate of its display name's; a row's spec
    keeps the display name where it differs from the name."""
    fixed = [name for name, _ in wanted if name is not None]
    pending = [(row, display) for row, (name, display) in zip(rows, wanted) if name is None and display is not None]
    for _ in range(NAME_ATTEMPTS):
        used = set(fixed)
        known: dict[str, tuple[int, set[str]]] = {}
        for row, display in pending:
            row["name"] = await free_name(conn, derive_name(display), org_id, used, known)
            used.add(row["name"])
        for row, (_, shown) in zip(rows, wanted):
            row["spec"].pop("displayName", None)
            if shown is not None and shown != row["name"]:
                row["spec"]["displayName"] = shown
        try:
            async with conn.begin_nested():
                await vm_q.insert_vms(conn, rows)
            return
        except IntegrityError:
            if not pending or await vm_q.names_taken(conn, fixed, org_id):
                raise Conflict("a VM with one of these names was created at the same time", reason=Reason.NAME_TAKEN) from None
    raise Conflict(LOST_RACE, reason=Reason.NAME_TAKEN)


async def derived_name(conn: AsyncConnection, display_name: str, vm: Vm) -> str:
    """The name a rename to `display_name` gives `vm`: its own when that is already one of the
    display name's candidates (`my-web-3` stays for `my web!`), else the first free one."""
    base = derive_name(display_name)
    if derived_from(vm.name, base):
        return vm.name
    return await free_name(conn, base, vm.org_id, set(), {})
