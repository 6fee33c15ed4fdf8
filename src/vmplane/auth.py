"""Who is acting, and what they may do: principals, roles, API keys and JWTs."""

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

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

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]

    @property
    def can_write(self) -> bool:
        return not self.read_only and self.at_least(Role.MEMBER)

    @property
    def operator(self) -> bool:
        """An owner or admin of the bootstrap organization: runs the installation."""
        return self.org_id == DEFAULT_ORG and self.at_least(Role.ADMIN) and self.team_id is None


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """What lists show of a key: enough to recognise it, useless to use it."""
    return key[: len(KEY_PREFIX) + 6]
