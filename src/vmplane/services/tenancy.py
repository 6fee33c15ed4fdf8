"""Tenancy: organizations, users and roles, teams, API keys, quotas, and resolving credentials."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import ADMIN_USER, DEFAULT_ORG, RANK, Principal, Role, key_digest, key_prefix, new_api_key
from ..domain import QUOTA_FIELDS, NodeStatus, Vm
from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Reason, Unauthorized, VmplaneError
from ..lru import TtlLru
from ..store import nodes as node_q
from ..store import snapshots as snap_q
from ..store import tenancy as t_q
from ..store import vms as vm_q
from . import scopes
from .vms import check_name, get_visible_vm

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

log = logging.getLogger("vmplane.auth")

CACHE_SECONDS = 2.0


class QuotaExceeded(VmplaneError):
    reason = Reason.QUOTA_EXCEEDED


class TenancyService:
    def __init__(self, *, store: Store, settings: Settings, data_dir: Path, schedules_changed: Callable[[], None]) -> None:
        """`schedules_changed()`: tell the scheduler that sweeps disabled some of its schedules."""
        self.store = store
        self.settings = settings
        self.data_dir = data_dir
        self.schedules_changed = schedules_changed
        self._keys: dict[str, tuple[float, Principal | str, float | None]] = {}
        """digest -> (cached until, principal or why refused, the key's own expiry), for keys
        the store holds (so bounded by them)"""
        self._unknown: TtlLru[str, bool] = TtlLru(settings.negative_key_cache_size, CACHE_SECONDS)
        """digests of keys the store does not hold: bounded, for they are whatever clients send"""
        self.key_used: dict[str, float] = {}
        self.failed_auths = FailedAuths(store)

    # -- bootstrap -----------------------------------------------------------------------

    async def bootstrap(self) -> str | None:
        """On an empty store: the bootstrap organization, its owner, and an owner key written
        to `<data-dir>/admin-api-key` (mode 0600). Returns the key file's path if made now."""
        now = clock.now()
        async with self.store.write() as conn:
            if await t_q.count_orgs(conn):
                return None
            await t_q.insert_org(conn, {"id": DEFAULT_ORG, "name": "default", "quotas": {}, "created_at": now})
            await t_q.insert_user(conn, {"id": ADMIN_USER, "name": "admin", "created_at": now})
            await t_q.add_membership(conn, DEFAULT_ORG, ADMIN_USER, Role.OWNER.value, now)
            key = await self._insert_key(conn, org_id=DEFAULT_ORG, user_id=ADMIN_USER, name="bootstrap owner key", team_id=None, read_only=False, expires_at=None)
        path = self.data_dir / "admin-api-key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(path, 0o600)
        return str(path)

    async def _insert_key(
        self, conn: AsyncConnection, *, org_id: str, user_id: str, name: str, team_id: str | None, read_only: bool, expires_at: float | None,
        creator: Principal | None = None,
    ) -> str:  # fmt: skip
        """`creator`: who makes the key (recorded; None for the bootstrap owner's key)."""
        key = new_api_key()
        creator_key = creator.credential if creator is not None and (creator.credential or "").startswith("key-") else None
        await t_q.insert_key(
            conn,
            {"id": ids.new_id("key"), "org_id": org_id, "user_id": user_id, "name": name, "prefix": key_prefix(key),
             "digest": key_digest(key), "team_id": team_id, "read_only": read_only, "created_at": clock.now(),
             "expires_at": expires_at, "created_by_user": creator.user_id if creator is not None else None,
             "created_by_key": creator_key},  # fmt: skip
        )
        return key

    # -- resolving credentials -----------------------------------------------------------

    async def principal_for_key(self, key: str) -> Principal:
        """The principal an API key acts as; Unauthorized for unknown, revoked or expired keys."""
        digest = key_digest(key)
        now = clock.now()
        cached = self._keys.get(digest)
        if cached is None or cached[0] < now:
            if self._unknown.get(digest):
                raise Unauthorized("unknown API key")
            async with self.store.read() as conn:
                row = await t_q.key_by_digest(conn, digest)
            value: Principal | str
            if row is None:
                self._keys.pop(digest, None)
                self._unknown.set(digest, True)
                raise Unauthorized("unknown API key")
            elif row.revoked_at is not None:
                value = "this API key was revoked"
            else:
                value = Principal(row.org_id, row.user_id, row.user_name, Role(row.role), row.team_id, row.read_only, row.id, row.created_by_user, row.created_by_key, row.prefix)
            cached = self._keys[digest] = (now + CACHE_SECONDS, value, row.expires_at if row is not None else None)
        _, value, expires_at = cached
        if isinstance(value, str):
            raise Unauthorized(value)
        if expires_at is not None and expires_at <= now:
            raise Unauthorized("this API key has expired")
        self.key_used[value.credential or ""] = now
        return value

    async def principal_for_jwt(self, token: str) -> Principal:
        s = self.settings
        if s.jwt_secret is not None:
            key, algorithm = s.jwt_secret.get_secret_value(), "HS256"
        elif s.jwt_public_key_file is not None:
            key, algorithm = Path(s.jwt_public_key_file).read_text(), "RS256"
        else:
            raise Unauthorized("bearer tokens are not accepted here (no JWT key is configured)")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=s.jwt_audience, issuer=s.jwt_issuer,
                options={"require": ["exp", "sub"] + (["iss"] if s.jwt_issuer else []) + (["aud"] if s.jwt_audience else [])},
            )  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the bearer token is not valid: {exc}") from None
        org_id = claims.get(s.jwt_org_claim) or DEFAULT_ORG
        async with self.store.read() as conn:
            user = await t_q.get_user(conn, str(claims["sub"]))
            member = await t_q.membership(conn, str(org_id), user.id) if user else None
        if user is None or member is None:
            raise Unauthorized("the bearer token's subject is not a member of that organization")
        return Principal(str(org_id), user.id, user.name, Role(member.role), None, False, "jwt")

    async def principal_for_internal(self, user_id: str, org_id: str) -> Principal:
        async with self.store.read() as conn:
            user = await t_q.get_user(conn, user_id)
            member = await t_q.membership(conn, org_id, user_id) if user else None
        if user is None or member is None:
            raise Unauthorized(f"{user_id} is no longer a member of {org_id}")
        return Principal(org_id, user.id, user.name, Role(member.role), None, False, "internal")

    def known_key(self, key: str) -> bool:
        """Whether this process has seen `key` authenticate (no store query): such a key is
        let past an address whose anonymous budget is spent, so that a client behind the
        same address as an attacker keeps working."""
        cached = self._keys.get(key_digest(key))
        return cached is not None and isinstance(cached[1], Principal)

    def forget_cached(self) -> None:
        self._keys.clear()
        self._unknown.clear()

    # -- WebSocket tickets ---------------------------------------------------------------

    async def ws_ticket(self, who: Principal) -> tuple[str, float]:
        """A one-time ticket that opens one WebSocket as `who` (the credential that asked for
        it), good for `ws_ticket_seconds`; only its digest is stored."""
        ticket = "wst_" + secrets.token_urlsafe(24)
        now = clock.now()
        expires = now + self.settings.ws_ticket_seconds
        row = {"token_hash": key_digest(ticket), "org_id": who.org_id, "user_id": who.user_id, "credential": who.credential,
               "team_id": who.team_id, "read_only": who.read_only, "expires_at": expires, "used": False}  # fmt: skip
        async with self.store.write() as conn:
            await t_q.add_ws_ticket(conn, row, now)
        return ticket, expires

    async def principal_for_ws_ticket(self, ticket: str) -> Principal:
        """Spend a ticket: the principal it was made for, once; Unauthorized if it is unknown,
        used or expired, or its credential has been revoked or its user removed since."""
        async with self.store.write() as conn:
            row = await t_q.use_ws_ticket(conn, key_digest(ticket), clock.now())
        if row is None:
            raise Unauthorized("the WebSocket ticket is unknown, used or expired")
        creator: tuple[str | None, str | None] = (None, None)
        if row.credential and row.credential.startswith("key-"):
            async with self.store.read() as conn:
                key = await t_q.get_key(conn, row.org_id, row.credential)
            if key is None or key.revoked_at is not None or (key.expires_at is not None and key.expires_at <= clock.now()):
                raise Unauthorized("the API key that made this WebSocket ticket is no longer valid")
            creator = (key.created_by_user, key.created_by_key)
        who = await self.principal_for_internal(row.user_id, row.org_id)
        return Principal(who.org_id, who.user_id, who.user_name, who.role, row.team_id, row.read_only, row.credential, *creator)

    async def flush_key_use(self) -> None:
        used, self.key_used = self.key_used, {}
        used.pop("", None)
        if used:
            async with self.store.write() as conn:
                await t_q.touch_keys(conn, used)

    # -- API keys ------------------------------------------------------------------------

    async def create_key(self, who: Principal, *, name: str, user: str | None, team: str | None, read_only: bool, expires_in_days: float | None) -> tuple[Row[Any], str]:
        """A new key. Owners and admins mint keys for themselves; owners also for users of
        lower rank; never a key whose role outranks its creator. The new key is no wider than
        the one that made it: its team, read-only, and expiring no later."""
        require(who, Role.ADMIN, "manage API keys")
        async with self.store.write() as conn:
            user_id = who.user_id
            if user is not None:
                u = await t_q.get_user(conn, user)
                member = await t_q.membership(conn, who.org_id, u.id) if u is not None else None
                if u is None or member is None:
                    raise InvalidRequest(f"userId {user!r} is not a member of this organization", field="userId")
                if u.id != who.user_id:
                    if not who.at_least(Role.OWNER):
                        raise Forbidden("only owners create API keys for other users; you may create keys for yourself")
                    if RANK[Role(member.role)] >= RANK[who.role]:
                        raise Forbidden(f"userId {user!r} is {member.role}: owners create keys only for users of a lower role", field="userId")
                user_id = u.id
            team_id = None
            if team is not None:
                tm = await t_q.get_team(conn, who.org_id, team)
                if tm is None:
                    raise InvalidRequest(f"teamId {team!r} is not a team of this organization", field="teamId")
                team_id = tm.id
            if who.team_id is not None and team_id not in (None, who.team_id):
                raise Forbidden("a team-scoped key can only create keys for its own team")
            expires = clock.now() + expires_in_days * 86400 if expires_in_days else None
            if (who.credential or "").startswith("key-"):
                mine = await t_q.get_key(conn, who.org_id, who.credential or "")
                if mine is not None and mine.expires_at is not None:
                    expires = min(expires or mine.expires_at, mine.expires_at)
            key = await self._insert_key(
                conn, org_id=who.org_id, user_id=user_id, name=name, team_id=team_id or who.team_id, read_only=read_only or who.read_only,
                expires_at=expires, creator=who,
            )  # fmt: skip
            row = await t_q.key_by_digest(conn, key_digest(key))
        assert row is not None  # inserted above, in this transaction
        return row, key

    async def list_keys(self, who: Principal) -> Sequence[Row[Any]]:
        """The organization's keys (owners and admins; read-only keys too: it is a read). A
        team-scoped credential sees its team's keys only."""
        require_reader(who, Role.ADMIN, "list API keys")
        async with self.store.read() as conn:
            rows = await t_q.list_keys(conn, who.org_id)
        return rows if who.team_id is None else [k for k in rows if k.team_id == who.team_id]

    async def revoke_key(self, who: Principal, key_id: str) -> None:
        """Revoke a key: one's own; an admin's, also those of users of a lower role; an
        owner's, any of the organization. A team-scoped credential only its team's."""
        require(who, Role.ADMIN, "manage API keys")
        async with self.store.write() as conn:
            key = await t_q.get_key(conn, who.org_id, key_id)
            if key is None or (who.team_id is not None and key.team_id != who.team_id):
                raise NotFound(f"API key {key_id} does not exist")
            if key.user_id != who.user_id and not who.at_least(Role.OWNER):
                member = await t_q.membership(conn, who.org_id, key.user_id)
                if member is not None and RANK[Role(member.role)] >= RANK[who.role]:
                    raise Forbidden(f"API key {key_id} belongs to a user of your role or higher ({member.role})")
            await t_q.revoke_key(conn, key_id, clock.now())
        self.forget_cached()
        await scopes.sweep(self.store, self.schedules_changed, who.org_id, credential=key_id)  # what the key made stops acting

    # -- users and teams -----------------------------------------------------------------

    async def members(self, who: Principal) -> Sequence[Row[Any]]:
        async with self.store.read() as conn:
            return await t_q.members(conn, who.org_id)

    async def add_member(self, who: Principal, name: str, role: Role) -> Row[Any]:
        require(who, Role.ADMIN, "manage users")
        if role == Role.OWNER and not who.at_least(Role.OWNER):
            raise Forbidden("only owners can make owners")
        check_name(name, "name")
        now = clock.now()
        async with self.store.write() as conn:
            user = await self._user_named(conn, name, now)
            if await t_q.membership(conn, who.org_id, user.id) is not None:
                raise Conflict(f"{name} is already a member")
            await t_q.add_membership(conn, who.org_id, user.id, role.value, now)
        return user

    @staticmethod
    async def _user_named(conn: AsyncConnection, name: str, now: float) -> Row[Any]:
        """The user called `name`, made now if there is none."""
        user = await t_q.get_user(conn, name)
        if user is None:
            await t_q.insert_user(conn, {"id": ids.new_id("usr"), "name": name, "created_at": now})
            user = await t_q.get_user(conn, name)
            assert user is not None  # inserted just now, in this transaction
        return user

    @staticmethod
    async def _member(conn: AsyncConnection, who: Principal, user_ref: str) -> tuple[Row[Any], Row[Any]]:
        """A user of the caller's organization and their membership (404 otherwise)."""
        user = await t_q.get_user(conn, user_ref)
        member = await t_q.membership(conn, who.org_id, user.id) if user else None
        if user is None or member is None:
            raise NotFound(f"user {user_ref} is not a member")
        return user, member

    async def set_role(self, who: Principal, user_ref: str, role: Role) -> None:
        require(who, Role.ADMIN, "manage users")
        async with self.store.write() as conn:
            user, member = await self._member(conn, who, user_ref)
            if Role.OWNER in (role, member.role) and not who.at_least(Role.OWNER):
                raise Forbidden("only owners can change an owner's role or make owners")
            await t_q.set_role(conn, who.org_id, user.id, role.value)
        self.forget_cached()

    async def remove_member(self, who: Principal, user_ref: str) -> None:
        require(who, Role.ADMIN, "manage users")
        async with self.store.write() as conn:
            user, member = await self._member(conn, who, user_ref)
            if member.role == Role.OWNER and not who.at_least(Role.OWNER):
                raise Forbidden("only owners can remove an owner")
            if user.id == who.user_id:
                raise Conflict("you cannot remove yourself")
            await t_q.remove_member(conn, who.org_id, user.id, clock.now())
        self.forget_cached()
        await scopes.sweep(self.store, self.schedules_changed, who.org_id, owner_id=user.id)  # what the user made stops acting

    async def teams(self, who: Principal) -> Sequence[Row[Any]]:
        async with self.store.read() as conn:
            return await t_q.list_teams(conn, who.org_id)

    async def create_team(self, who: Principal, name: str) -> Row[Any]:
        require(who, Role.ADMIN, "manage teams")
        check_name(name, "name")
        async with self.store.write() as conn:
            if await t_q.get_team(conn, who.org_id, name) is not None:
                raise Conflict(f"a team named {name!r} already exists", reason=Reason.NAME_TAKEN)
            team_id = ids.new_id("team")
            await t_q.insert_team(conn, {"id": team_id, "org_id": who.org_id, "name": name, "created_at": clock.now()})
            team = await t_q.get_team(conn, who.org_id, team_id)
        assert team is not None  # inserted above, in this transaction
        return team

    async def delete_team(self, who: Principal, team_ref: str) -> None:
        require(who, Role.ADMIN, "manage teams")
        async with self.store.write() as conn:
            team = await t_q.get_team(conn, who.org_id, team_ref)
            if team is None:
                raise NotFound(f"team {team_ref} does not exist")
            if await t_q.team_in_use(conn, team.id):
                raise Conflict(f"team {team.name} still has VMs")
            await t_q.delete_team(conn, who.org_id, team.id)

    async def team_id(self, who: Principal, team_ref: str | None) -> str | None:
        """The team a new resource goes to: the credential's team, or one named in the request."""
        if team_ref is None:
            return who.team_id
        async with self.store.read() as conn:
            team = await t_q.get_team(conn, who.org_id, team_ref)
        if team is None:
            raise InvalidRequest(f"teamId {team_ref!r} is not a team of this organization", field="teamId")
        found: str = team.id
        if who.team_id is not None and found != who.team_id:
            raise Forbidden("a team-scoped credential can only use its own team")
        return found

    async def team(self, who: Principal, team_ref: str) -> Row[Any]:
        """A team of the caller's organization by id or name (a team-scoped credential sees
        only its own team: another is Forbidden)."""
        async with self.store.read() as conn:
            team = await t_q.get_team(conn, who.org_id, team_ref)
        if team is None:
            raise NotFound(f"team {team_ref} does not exist")
        if who.team_id is not None and team.id != who.team_id:
            raise Forbidden("a team-scoped credential can only see its own team")
        return team

    async def set_vm_team(self, who: Principal, vm_ref: str, team_ref: str | None) -> tuple[Vm, Row[Any] | None]:
        """Put a VM in a team (None: in no team, visible to organization-wide credentials
        only). Owners and admins, with a credential of the whole organization (a team-scoped
        one could move VMs out of its own reach; it may only name its own team, which the VMs
        it sees are in already). Returns the VM and its team."""
        vm = await get_visible_vm(self.store, vm_ref, who)
        require(who, Role.ADMIN, "move VMs between teams")
        team = await self.team(who, team_ref) if team_ref is not None else None
        if who.team_id is not None and (team is None or team.id != who.team_id):
            raise Forbidden("a team-scoped credential cannot move VMs between teams")
        async with self.store.write() as conn:
            await vm_q.set_vm(conn, vm.id, team_id=team.id if team is not None else None, updated_at=clock.now())
        return await get_visible_vm(self.store, vm.id, who), team

    # -- organizations and quotas --------------------------------------------------------

    async def create_org(self, who: Principal, name: str, owner: str) -> tuple[Row[Any], str]:
        if not who.operator:
            raise Forbidden("only owners and admins of the bootstrap organization create organizations")
        check_name(name, "name")
        check_name(owner, "owner")
        now = clock.now()
        org_id = ids.new_id("org")
        async with self.store.write() as conn:
            if any(o.name == name for o in await t_q.list_orgs(conn)):
                raise Conflict(f"an organization named {name!r} already exists", reason=Reason.NAME_TAKEN)
            await t_q.insert_org(conn, {"id": org_id, "name": name, "quotas": dict(self.settings.default_quotas), "created_at": now})
            user = await self._user_named(conn, owner, now)
            await t_q.add_membership(conn, org_id, user.id, Role.OWNER.value, now)
            key = await self._insert_key(conn, org_id=org_id, user_id=user.id, name="owner key", team_id=None, read_only=False, expires_at=None, creator=who)
            org = await t_q.get_org(conn, org_id)
        assert org is not None  # inserted above, in this transaction
        return org, key

    async def orgs(self, who: Principal) -> Sequence[Row[Any]]:
        async with self.store.read() as conn:
            rows = await t_q.list_orgs(conn)
        return rows if who.operator else [o for o in rows if o.id == who.org_id]

    async def quotas(self, who: Principal, org_id: str | None = None) -> dict[str, Any]:
        target = org_id or who.org_id
        if target != who.org_id and not who.operator:
            raise NotFound(f"organization {target} does not exist")
        async with self.store.read() as conn:
            org = await t_q.get_org(conn, target)
            if org is None:
                raise NotFound(f"organization {target} does not exist")
            used = await self._usage(conn, target)
            by_status = await t_q.vms_by_status(conn, target)
            nodes = [n for n in await node_q.list_nodes(conn) if n.status == NodeStatus.ONLINE.value]
        limits = {f: org.quotas.get(f) for f in QUOTA_FIELDS}
        # Without a quota, the most an organization can hold is what the online nodes can
        # hand out (capacity x overcommit); VMs and snapshots have no such bound (None).
        s = self.settings
        room = {
            "vcpu": sum(int(n.cpu_total * s.cpu_overcommit) for n in nodes),
            "ramMb": sum(int(n.ram_mb_total * s.ram_overcommit) for n in nodes),
            "diskGb": sum(int(n.disk_gb_total * s.disk_overcommit) for n in nodes),
        }
        effective = {f: limits[f] if limits[f] is not None else room.get(f) for f in QUOTA_FIELDS}
        return {"orgId": target, "limits": limits, "effectiveLimits": effective, "usage": used, "vmsByStatus": by_status}

    @staticmethod
    async def _usage(conn: AsyncConnection, org_id: str) -> dict[str, int]:
        """What `org_id` holds of every quota kind (VMs that failed to be created hold nothing)."""
        usage = await t_q.org_usage(conn, org_id)
        used = {"vcpu": int(usage.cpu), "ramMb": int(usage.ram_mb), "diskGb": int(usage.disk_gb), "vms": int(usage.vms)}
        used["snapshots"] = await snap_q.count_for_org(conn, org_id)
        for kind in t_q.COUNTED:
            used[kind] = await t_q.count_owned(conn, org_id, kind)
        return used

    async def set_quotas(self, who: Principal, org_id: str, limits: dict[str, int | None]) -> dict[str, Any]:
        if not who.operator:
            raise Forbidden("only operators set quotas")
        async with self.store.write() as conn:
            if await t_q.get_org(conn, org_id) is None:
                raise NotFound(f"organization {org_id} does not exist")
            await t_q.set_quotas(conn, org_id, {k: v for k, v in limits.items() if v is not None})
        return await self.quotas(who, org_id)

    async def reserve(
        self, conn: AsyncConnection, org_id: str, *, vcpu: int = 0, ram_mb: int = 0, disk_gb: int = 0, vms: int = 0, snapshots: int = 0,
        networks: int = 0, templates: int = 0, webhooks: int = 0, schedules: int = 0, plugins: int = 0,
    ) -> None:  # fmt: skip
        """Check that `org_id` may hold this much more, inside the transaction that records it
        (QuotaExceeded, 409, otherwise).

        The organization's row is locked first (PostgreSQL; SQLite has one writer), so
        concurrent reservations are judged one after the other and never exceed the quota."""
        org = await t_q.get_org(conn, org_id, lock=conn.dialect.name == "postgresql")
        if org is None or not org.quotas:
            return
        asked = {"vms": vms, "vcpu": vcpu, "ramMb": ram_mb, "diskGb": disk_gb}
        want: dict[str, tuple[int, int]] = {}
        if any(asked.values()):
            usage = await t_q.org_usage(conn, org_id)
            want.update(vms=(int(usage.vms), vms), vcpu=(int(usage.cpu), vcpu), ramMb=(int(usage.ram_mb), ram_mb), diskGb=(int(usage.disk_gb), disk_gb))
        if snapshots:
            want["snapshots"] = (await snap_q.count_for_org(conn, org_id), snapshots)
        for kind, more in (("networks", networks), ("templates", templates), ("webhooks", webhooks), ("schedules", schedules), ("plugins", plugins)):
            if more and org.quotas.get(kind) is not None:
                want[kind] = (await t_q.count_owned(conn, org_id, kind), more)
        for field, (used, more) in want.items():
            limit = org.quotas.get(field)
            if limit is not None and more > 0 and used + more > limit:
                raise QuotaExceeded(f"quota exceeded: {field} limit is {limit}, {used} in use, {more} more asked", quota=field, limit=limit, used=used, requested=more)


def require(who: Principal, role: Role, what: str) -> None:
    """For changes: at least `role`, with a credential that may write."""
    if not who.at_least(role) or who.read_only:
        raise Forbidden(f"your role ({who.role}{', read-only key' if who.read_only else ''}) cannot {what}")


def require_reader(who: Principal, role: Role, what: str) -> None:
    """For reads: at least `role`; a read-only credential reads all its role can."""
    if not who.at_least(role):
        raise Forbidden(f"your role ({who.role}) cannot {what}")


class FailedAuths:
    """Requests refused for their credentials (bad, or none where one is needed), audited in
    aggregate: one audit row per client address per minute whose `count` grows, so a flood of
    bogus keys costs a row a minute, not a row a request. Counts reach the store within about
    a second (one write per address and second at most)."""

    FLUSH_SECONDS = 1.0

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pending: dict[tuple[str, int], tuple[int, str, str]] = {}
        """(address, minute) -> (requests not yet written, method, path of the first)"""
        self._rows: dict[tuple[str, int], int] = {}
        """(address, minute) -> the seq of its audit row"""
        self._flusher: asyncio.Task[None] | None = None

    def note(self, address: str, method: str, path: str) -> None:
        minute = int(clock.now() // 60)
        n, m, p = self._pending.get((address, minute), (0, method, path))
        self._pending[(address, minute)] = (n + 1, m, p)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_soon(), name="failed-auth-audit")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(self.FLUSH_SECONDS)
        try:
            await self.flush()
        except Exception:
            log.exception("writing failed authentications to the audit log failed")

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        now_minute = int(clock.now() // 60)
        async with self.store.write() as conn:
            for (address, minute), (n, method, path) in pending.items():
                seq = self._rows.get((address, minute))
                if seq is not None:
                    await t_q.count_into_audit(conn, seq, n)
                    continue
                row = {"ts": minute * 60.0, "org_id": None, "actor": "unauthenticated", "credential": None, "method": method[:8],
                       "route": "(failed authentication)", "path": path[:1000], "status": 401, "outcome": "denied",
                       "remote": address[:64], "count": n}  # fmt: skip
                self._rows[(address, minute)] = await t_q.add_audit_row(conn, row)
        self._rows = {k: v for k, v in self._rows.items() if k[1] >= now_minute}

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
