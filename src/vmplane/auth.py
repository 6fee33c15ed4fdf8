"""Who is acting, and what they may do: principals, roles, API keys and JWTs."""

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

DEFAULT_ORG = "org-default"
"""The bootstrap organization; it owns what predates tenancy and runs the installation."""
ADMIN_USER = "usr-admin"
KEY_PREFIX = "vmp_"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2, Role.OWNER: 3}


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    user_id: str
    user_name: str
    role: Role
    team_id: str | None = None
    """a team-scoped credential sees only its team's resources"""
    read_only: bool = False
    credential: str | None = None
    """the API key's id, `jwt`, or `internal`"""
    creator_user: str | None = None
    creator_key: str | None = None
    """who made the API key acting (its creator's user id, and the key they used), if known"""
    token_hint: str | None = None
    """what lists show of the credential (an API key's prefix): recognisable, useless to use"""
    client_ip: str | None = None
    """the address the request came from (set per request; None for vmplane's own requests)"""

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]

    @property
    def can_write(self) -> bool:
        return not self.read_only and self.at_least(Role.MEMBER)

    @property
    def limit_key(self) -> str:
        """What rate limits and stream limits count against: the API key, else (a JWT, a
        WebSocket ticket a JWT made) the organization and subject, never one shared bucket."""
        if self.credential is not None and self.credential.startswith("key-"):
            return self.credential
        return f"{self.credential or 'user'}:{self.org_id}:{self.user_id}"

    @property
    def operator(self) -> bool:
        """An owner or admin of the bootstrap organization: runs the installation."""
        return self.org_id == DEFAULT_ORG and self.at_least(Role.ADMIN) and self.team_id is None


def origin(who: Principal) -> dict[str, str]:
    """Where a request came from, as its job records it (`jobs.origin`): the credential's hint
    and the client's address (what is known of them; never a secret)."""
    return {k: v for k, v in (("token_hint", who.token_hint), ("client_ip", who.client_ip)) if v is not None}


def principal_of(payload: dict[str, Any]) -> Principal:
    """The submitter a task's payload names under `who` (an import's: services/imports.py
    writes it), as the task acts for them."""
    w = payload["who"]
    return Principal(org_id=w["org_id"], user_id=w["user_id"], user_name=w["user_name"], role=Role(w["role"]), team_id=w.get("team_id"))


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """What lists show of a key: enough to recognise it, useless to use it."""
    return key[: len(KEY_PREFIX) + 6]
