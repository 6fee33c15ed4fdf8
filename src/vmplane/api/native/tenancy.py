"""/api/v1/api-keys, /users, /teams, /orgs, /org, /org/quotas, /audit."""

from datetime import UTC
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from ... import clock
from ...auth import Role
from ...errors import InvalidRequest
from ...services import pages
from ...services.tenancy import require_reader
from ...store import tenancy as t_q
from ..deps import CallerDep, RuntimeDep
from ..middleware import NO_STORE
from ..schemas import In, Page
from .deps import ERRORS, Limit, PageToken

router = APIRouter(tags=["tenancy"])
RoleName = Literal["owner", "admin", "member", "viewer"]


class KeyCreateIn(In):
    name: str = Field(..., min_length=1, max_length=128)
    userId: str | None = Field(
        None, max_length=128, description="whose key (default: yours; owners may name a user of a lower role)"
    )
    teamId: str | None = Field(None, max_length=64, description="limit the key to one team's resources")
    readOnly: bool = False
    expiresInDays: float | None = Field(None, gt=0, le=3650)


class CreatorOut(BaseModel):
    userId: str | None
    keyId: str | None = Field(None, description="the API key used to make it (null: a JWT, or the installation itself)")


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    userId: str
    teamId: str | None
    readOnly: bool
    createdAt: str
    expiresAt: str | None
    revokedAt: str | None
    lastUsedAt: str | None
    createdBy: CreatorOut | None = Field(None, description="who made the key: their user id and the key they used (null: unknown)")


class KeyCreatedOut(KeyOut):
    key: str = Field(..., description="shown once; only a digest is stored")


class MemberIn(In):
    name: str = Field(..., min_length=1, max_length=63)
    role: RoleName = "member"


class RoleIn(In):
    role: RoleName


class MemberOut(BaseModel):
    id: str
    name: str
    role: str
    createdAt: str


class TeamIn(In):
    name: str = Field(..., min_length=1, max_length=63)


class TeamOut(BaseModel):
    id: str
    name: str
    createdAt: str


class OrgIn(In):
    name: str = Field(..., min_length=1, max_length=63)
    owner: str = Field(..., min_length=1, max_length=63, description="name of its first owner (created if new)")


class OrgOut(BaseModel):
    id: str
    name: str
    createdAt: str


class OrgCreatedOut(OrgOut):
    ownerKey: str = Field(..., description="an API key of the new owner, shown once")


class QuotaLimits(In):
    vcpu: int | None = Field(None, ge=0)
    ramMb: int | None = Field(None, ge=0)
    diskGb: int | None = Field(None, ge=0)
    vms: int | None = Field(None, ge=0)
    snapshots: int | None = Field(None, ge=0)
    networks: int | None = Field(None, ge=0)
    templates: int | None = Field(None, ge=0)
    webhooks: int | None = Field(None, ge=0)
    schedules: int | None = Field(None, ge=0)
    plugins: int | None = Field(None, ge=0)


class QuotasOut(BaseModel):
    orgId: str
    limits: dict[str, int | None]
    effectiveLimits: dict[str, int | None] = Field(
        ..., description="the limits in force: the quota where one is set, else what the online nodes can hand out (null: no bound)"
    )
    usage: dict[str, int] = Field(..., description="what the organization holds of each kind (VMs that failed to be created count for nothing)")
    vmsByStatus: dict[str, int] = Field(..., description="the organization's VMs by status, failed ones included")


class AuditOut(BaseModel):
    id: int
    time: str
    actor: str
    credential: str | None
    method: str
    route: str
    path: str
    status: int
    outcome: str
    remote: str | None
    count: int
    """requests the row stands for (more than 1: failed authentications from one address in one minute)"""
    credentialCreatedBy: CreatorOut | None
    """who made the API key the request used (null: not a key, or made before this was recorded)"""


def key_out(k: Any) -> dict[str, Any]:
    return {
        "id": k.id, "name": k.name, "prefix": k.prefix, "userId": k.user_id, "teamId": k.team_id, "readOnly": k.read_only,
        "createdAt": clock.rfc3339(k.created_at), "expiresAt": clock.rfc3339(k.expires_at),
        "revokedAt": clock.rfc3339(k.revoked_at), "lastUsedAt": clock.rfc3339(k.last_used_at),
        "createdBy": creator_out(k.created_by_user, k.created_by_key),
    }  # fmt: skip


def creator_out(user_id: str | None, key_id: str | None) -> dict[str, Any] | None:
    return {"userId": user_id, "keyId": key_id} if user_id or key_id else None


def org_out(o: Any) -> dict[str, Any]:
    return {"id": o.id, "name": o.name, "createdAt": clock.rfc3339(o.created_at)}


@router.get("/api-keys", response_model=Page[KeyOut], responses=ERRORS)
async def list_keys(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    await rt.tenancy.flush_key_use()
    return JSONResponse({"items": [key_out(k) for k in await rt.tenancy.list_keys(who)], "nextPageToken": None})


@router.post("/api-keys", status_code=201, response_model=KeyCreatedOut, responses=ERRORS)
async def create_key(body: KeyCreateIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    row, key = await rt.tenancy.create_key(who, name=body.name, user=body.userId, team=body.teamId, read_only=body.readOnly, expires_in_days=body.expiresInDays)
    return JSONResponse({**key_out(row), "key": key}, status_code=201, headers=NO_STORE)


@router.delete("/api-keys/{key_id}", status_code=204, responses=ERRORS)
async def revoke_key(key_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.tenancy.revoke_key(who, key_id)
    return Response(status_code=204)


@router.get("/users", response_model=Page[MemberOut], responses=ERRORS)
async def list_users(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [{"id": m.id, "name": m.name, "role": m.role, "createdAt": clock.rfc3339(m.created_at)} for m in await rt.tenancy.members(who)]
    return JSONResponse({"items": items, "nextPageToken": None})


@router.post("/users", status_code=201, response_model=MemberOut, responses=ERRORS)
async def add_user(body: MemberIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    user = await rt.tenancy.add_member(who, body.name, Role(body.role))
    return JSONResponse({"id": user.id, "name": user.name, "role": body.role, "createdAt": clock.rfc3339(user.created_at)}, status_code=201)


@router.patch("/users/{user_id}", status_code=204, responses=ERRORS)
async def set_role(user_id: str, body: RoleIn, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.tenancy.set_role(who, user_id, Role(body.role))
    return Response(status_code=204)


@router.delete("/users/{user_id}", status_code=204, responses=ERRORS)
async def remove_user(user_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    """Removes the membership and revokes the user's keys in this organization."""
    await rt.tenancy.remove_member(who, user_id)
    return Response(status_code=204)


@router.get("/teams", response_model=Page[TeamOut], responses=ERRORS)
async def list_teams(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    items = [{"id": t.id, "name": t.name, "createdAt": clock.rfc3339(t.created_at)} for t in await rt.tenancy.teams(who)]
    return JSONResponse({"items": items, "nextPageToken": None})


@router.post("/teams", status_code=201, response_model=TeamOut, responses=ERRORS)
async def create_team(body: TeamIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    t = await rt.tenancy.create_team(who, body.name)
    return JSONResponse({"id": t.id, "name": t.name, "createdAt": clock.rfc3339(t.created_at)}, status_code=201)


@router.delete("/teams/{team_id}", status_code=204, responses=ERRORS)
async def delete_team(team_id: str, rt: RuntimeDep, who: CallerDep) -> Response:
    await rt.tenancy.delete_team(who, team_id)
    return Response(status_code=204)


@router.get("/orgs", response_model=Page[OrgOut], responses=ERRORS)
async def list_orgs(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Operators see every organization; others their own."""
    return JSONResponse({"items": [org_out(o) for o in await rt.tenancy.orgs(who)], "nextPageToken": None})


@router.post("/orgs", status_code=201, response_model=OrgCreatedOut, responses=ERRORS)
async def create_org(body: OrgIn, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    org, key = await rt.tenancy.create_org(who, body.name, body.owner)
    return JSONResponse({**org_out(org), "ownerKey": key}, status_code=201, headers=NO_STORE)


@router.get("/org", response_model=OrgOut, responses=ERRORS)
async def current_org(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    orgs = await rt.tenancy.orgs(who)
    return JSONResponse(org_out(next(o for o in orgs if o.id == who.org_id)))


@router.get("/org/quotas", response_model=QuotasOut, responses=ERRORS)
async def my_quotas(rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await rt.tenancy.quotas(who))


@router.get("/orgs/{org_id}/quotas", response_model=QuotasOut, responses=ERRORS)
async def org_quotas(org_id: str, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    return JSONResponse(await rt.tenancy.quotas(who, org_id))


@router.put("/orgs/{org_id}/quotas", response_model=QuotasOut, responses=ERRORS)
async def set_org_quotas(org_id: str, body: QuotaLimits, rt: RuntimeDep, who: CallerDep) -> JSONResponse:
    """Operators only. The body replaces the organization's quotas: a limit left out (or
    null) is unlimited (a new organization starts with VMPLANE_DEFAULT_QUOTAS; to raise one
    limit, send the others back as GET shows them)."""
    return JSONResponse(await rt.tenancy.set_quotas(who, org_id, body.model_dump()))


class UsageOut(BaseModel):
    orgId: str
    start: str
    end: str
    items: list[dict[str, Any]]
    totalHours: float
    totalCents: float


@router.get("/usage", response_model=UsageOut, responses=ERRORS)
async def usage(rt: RuntimeDep, who: CallerDep, start: str | None = None, end: str | None = None) -> JSONResponse:
    """Billed hours and cost per VM over [start, end) (RFC 3339; default the last 30 days; at most 90)."""
    return JSONResponse(await rt.billing.report(who, parse_time(start, "start"), parse_time(end, "end")))


def parse_time(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{field} must be an RFC 3339 time such as 2026-01-31T00:00:00Z", field=field) from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@router.get("/audit", response_model=Page[AuditOut], responses=ERRORS)
async def audit(rt: RuntimeDep, who: CallerDep, limit: Limit = 50, pageToken: PageToken = None) -> JSONResponse:
    """Every mutation in your organization, newest first (owners and admins). Operators also
    see requests refused for their credentials: one row per client address and minute, whose
    `count` says how many."""
    require_reader(who, Role.ADMIN, "read the audit log")
    after = pages.decode("audit", pageToken)
    async with rt.store.read() as conn:
        rows = await t_q.audit(conn, who.org_id, after_seq=after, limit=limit + 1, unattributed=who.operator)
    token = pages.encode("audit", rows[limit - 1].seq) if len(rows) > limit else None
    items = [
        {"id": r.seq, "time": clock.rfc3339(r.ts), "actor": r.actor, "credential": r.credential, "method": r.method,
         "route": r.route, "path": r.path, "status": r.status, "outcome": r.outcome, "remote": r.remote, "count": r.count,
         "credentialCreatedBy": creator_out(r.creator_user, r.creator_key)}  # fmt: skip
        for r in rows[:limit]
    ]
    return JSONResponse({"items": items, "nextPageToken": token})
