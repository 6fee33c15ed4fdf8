"""Scope of work done for a credential: schedules, webhooks and deployments act with the scope
of the credential that made them, and stop when it ends.

Each of them stores the scope of the credential that made it: the organization, the user
(`owner_id`), the credential (`credential`: an API key's id, or `jwt`), its team and whether
it is read-only. When it acts (a schedule replays its request, a webhook receives events,
the reconciler changes a deployment's replicas) it acts as exactly that: `acting` rebuilds
the principal from the store each time, with the user's role of now, the key's team and
read-only flag, and refuses (ScopeEnded, saying why) when the key was revoked, has expired
or is gone, or the user left the organization. The holder is then disabled: `enabled` false
(schedules, webhooks) and `disabled_reason` set, shown in its API answer, and a
`schedule.disabled` / `webhook.disabled` / `deployment.disabled` event. This is checked at
each run, and swept at once when a key is revoked or a user leaves (`sweep`), and every
minute for keys that expired (`sweep_expired`).

A JWT carries no key to revoke, and its token expires within minutes by design: what a
JWT-made holder keeps is the subject's membership. It acts as the subject's organization-wide
membership (JWT principals have no team and are never read-only) until the subject leaves
the organization; the token's own expiry does not end it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..auth import Principal, Role
from ..errors import Forbidden, Unauthorized
from ..store import events as ev_q
from ..store import tenancy as t_q
from ..store.tables import api_keys, deployments, schedules, webhooks

if TYPE_CHECKING:
    from ..store import Store

log = logging.getLogger("vmplane.scopes")

KEY_PREFIX = "key-"
INTERNAL_HEADER = "x-vmplane-internal"
ACTING_AS_HEADER = "x-vmplane-acting-as"
ACTING_SCOPE_HEADER = "x-vmplane-acting-scope"
"""with the internal secret: the stored scope (Scope.header) a request this process makes to
itself acts with, so a schedule made with a team-scoped or read-only key replays as exactly
that key (api/identity.py reads them)"""
HOLDERS: tuple[tuple[str, Table], ...] = (("schedule", schedules), ("webhook", webhooks), ("deployment", deployments))
"""what carries a credential's scope: (event prefix, table)"""


class ScopeEnded(Unauthorized):
    """The credential a holder was made with can no longer act (revoked, expired, gone, or
    its user left the organization)."""


@dataclass(frozen=True, slots=True)
class Scope:
    org_id: str
    owner_id: str
    credential: str | None
    team_id: str | None
    read_only: bool

    def columns(self) -> dict[str, Any]:
        """The columns a holder stores it in (owner, credential, team, read-only)."""
        return {"owner_id": self.owner_id, "credential": self.credential, "team_id": self.team_id, "read_only": self.read_only}

    def header(self) -> str:
        """`credential|team|0 or 1`: the scope a request vmplane makes to itself acts with."""
        return f"{self.credential or ''}|{self.team_id or ''}|{int(self.read_only)}"


def of(who: Principal) -> Scope:
    """The scope of the credential `who` acts with, for a holder it makes. A request vmplane
    makes to itself already acts with a stored scope, which carries over."""
    credential = who.credential if who.credential and who.credential.startswith(KEY_PREFIX) else ("jwt" if who.credential == "jwt" else None)
    return Scope(who.org_id, who.user_id, credential, who.team_id, who.read_only)


def of_row(row: Row[Any]) -> Scope:
    return Scope(row.org_id, row.owner_id, row.credential, row.team_id, bool(row.read_only))


def parse_header(value: str) -> tuple[str | None, str | None, bool]:
    credential, _, rest = value.partition("|")
    team, _, ro = rest.partition("|")
    return credential or None, team or None, ro == "1"


def require_write(who: Principal, what: str) -> None:
    """A read-only credential (or a viewer) makes nothing that acts: every schedule replays a
    change, every deployment makes VMs."""
    if not who.can_write:
        raise Forbidden(f"your role ({who.role}{', read-only key' if who.read_only else ''}) cannot make {what}")


async def why_ended(conn: AsyncConnection, scope: Scope, now: float) -> str | None:
    """Why a holder of `scope` may no longer act, or None if it may."""
    if scope.owner_id is None:
        return "it has no owner to act as (made before scopes were recorded, by a user no longer known)"
    member = await t_q.membership(conn, scope.org_id, scope.owner_id)
    if member is None:
        return f"its owner ({scope.owner_id}) is no longer a member of the organization"
    if scope.credential and scope.credential.startswith(KEY_PREFIX):
        key = await t_q.get_key(conn, scope.org_id, scope.credential)
        if key is None or key.user_id != scope.owner_id:
            return f"the API key that made it ({scope.credential}) no longer exists"
        if key.revoked_at is not None:
            return f"the API key that made it ({scope.credential}) was revoked"
        if key.expires_at is not None and key.expires_at <= now:
            return f"the API key that made it ({scope.credential}) has expired"
    return None


async def acting(store: Store, scope: Scope) -> Principal:
    """The principal a holder of `scope` acts as now; ScopeEnded saying why it cannot."""
    async with store.read() as conn:
        why = await why_ended(conn, scope, clock.now())
        user = await t_q.get_user(conn, scope.owner_id) if why is None else None
        member = await t_q.membership(conn, scope.org_id, scope.owner_id) if why is None else None
    if why is not None or user is None or member is None:
        raise ScopeEnded(why or f"its owner ({scope.owner_id}) is no longer a member of the organization")
    return Principal(scope.org_id, user.id, user.name, Role(member.role), scope.team_id, scope.read_only, scope.credential or "internal")


async def disable(conn: AsyncConnection, kind: str, row: Row[Any], reason: str) -> bool:
    """Disable one holder, saying why, inside the caller's transaction (with its event). False
    if it was disabled already."""
    table = dict(HOLDERS)[kind]
    values: dict[str, Any] = {"disabled_reason": reason, "updated_at": clock.now()}
    if "enabled" in table.c:
        values["enabled"] = False
    if kind == "schedule":
        values["next_run"] = None
    res = await conn.execute(update(table).where(table.c.id == row.id, table.c.disabled_reason.is_(None)).values(**values))
    if res.rowcount != 1:
        return False
    data = {"id": row.id, "reason": reason}
    if "name" in table.c:
        data["name"] = row.name
    await ev_q.emit(conn, f"{kind}.disabled", row.id, data, row.org_id, row.team_id)
    log.warning("%s %s disabled: %s", kind, row.id, reason)
    return True


async def sweep(
    store: Store, schedules_changed: Callable[[], None], org_id: str, *, credential: str | None = None, owner_id: str | None = None
) -> int:
    """Disable every holder of organization `org_id` made with key `credential`, or owned by
    `owner_id`, that may no longer act (called when a key is revoked or a user leaves);
    `schedules_changed()` tells the scheduler when some were. Returns how many were disabled."""
    n = 0
    now = clock.now()
    async with store.write() as conn:
        for kind, table in HOLDERS:
            q = select(table).where(table.c.org_id == org_id, table.c.disabled_reason.is_(None))
            if credential is not None:
                q = q.where(table.c.credential == credential)
            if owner_id is not None:
                q = q.where(table.c.owner_id == owner_id)
            for row in (await conn.execute(q)).all():
                why = await why_ended(conn, of_row(row), now)
                if why is not None and await disable(conn, kind, row, why):
                    n += 1
    if n:
        schedules_changed()
    return n


async def sweep_expired(store: Store, schedules_changed: Callable[[], None]) -> int:
    """Disable the holders whose key has expired since the last sweep (every minute)."""
    now = clock.now()
    async with store.read() as conn:
        q = select(api_keys.c.org_id, api_keys.c.id).where(api_keys.c.expires_at.is_not(None), api_keys.c.expires_at <= now)
        expired = (await conn.execute(q)).all()
        live: list[tuple[str, str]] = []
        for org_id, key_id in expired:
            for _kind, table in HOLDERS:
                found = select(table.c.id).where(table.c.credential == key_id, table.c.disabled_reason.is_(None)).limit(1)
                if (await conn.execute(found)).first() is not None:
                    live.append((org_id, key_id))
                    break
    return sum([await sweep(store, schedules_changed, org_id, credential=key_id) for org_id, key_id in live])


def render(row: Row[Any]) -> dict[str, Any]:
    """What a holder's API answer says of its scope: `scope` and `disabledReason`."""
    return {
        "scope": {"credential": row.credential, "teamId": row.team_id, "readOnly": bool(row.read_only), "ownerId": row.owner_id},
        "disabledReason": row.disabled_reason,
    }
