"""Who may mint which API key, tried against a real server with two organizations, an owner,
an admin, a team-scoped key, a read-only key and a JWT tenant: no key outranks the one that
made it, every key says who made it, the audit log names the acting credential and its
creator, and read-only credentials read what their role reads."""

import time
from typing import Any

import httpx
import jwt

from ..api.test_tenancy import SECRET, key_for, new_org
from ..support import Server


async def _keys(client: httpx.AsyncClient) -> dict[str, dict[str, Any]]:
    """The keys a client lists, by id (without `lastUsedAt`, which every request moves)."""
    r = await client.get("/api/v1/api-keys")
    assert r.status_code == 200, r.text
    return {k["id"]: {f: v for f, v in k.items() if f != "lastUsedAt"} for k in r.json()["items"]}


async def _key_id(owner: httpx.AsyncClient, key: str) -> str:
    return next(k["id"] for k in (await _keys(owner)).values() if k["prefix"] == key[:10])


def _jwt(sub: str, org: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "org": org, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


async def test_an_admin_cannot_mint_an_owners_key_or_outrank_itself(server_factory: Any) -> None:
    server: Server = await server_factory(jwt_secret=SECRET)
    owner = server.client
    boot_key_id = await _key_id(owner, server.admin_key)
    ada = server.client_with(await key_for(owner, "ada", "admin"))
    mo_key = await key_for(owner, "mo", "member")
    users = {u["name"]: u["id"] for u in (await owner.get("/api/v1/users")).json()["items"]}
    before = await _keys(owner)
    ada_id = await _key_id(owner, ada.headers["X-API-Key"])
    assert before[ada_id]["createdBy"] == {"userId": users["admin"], "keyId": boot_key_id}

    # the attack of issue 19: an admin asks for a key of the owner
    r = await ada.post("/api/v1/api-keys", json={"name": "owner's", "userId": "admin"})
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    # nor for anyone else (only owners mint for others), nor does the admin outrank itself
    r = await ada.post("/api/v1/api-keys", json={"name": "mo's", "userId": "mo"})
    assert r.status_code == 403 and "yourself" in r.json()["error"]
    assert (await ada.patch(f"/api/v1/users/{users['ada']}", json={"role": "owner"})).status_code == 403
    assert (await ada.patch(f"/api/v1/users/{users['admin']}", json={"role": "member"})).status_code == 403
    # an admin cannot revoke the owner's key either
    assert (await ada.delete(f"/api/v1/api-keys/{boot_key_id}")).status_code == 403
    assert await _keys(owner) == before  # nothing was made, nothing revoked

    # owners mint for users of a lower role, never for another owner
    assert (await owner.post("/api/v1/users", json={"name": "olga", "role": "owner"})).status_code == 201
    r = await owner.post("/api/v1/api-keys", json={"name": "olga's", "userId": "olga"})
    assert r.status_code == 403 and r.json()["details"]["field"] == "userId"
    # a user of another organization is not a member here
    org_b, b = await new_org(server, "acme", "wile")
    r = await ada.post("/api/v1/api-keys", json={"name": "x", "userId": "wile"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "userId"

    # the admin mints for itself; the new key records its creator, and what it does is
    # audited under its own id, naming that creator
    r = await ada.post("/api/v1/api-keys", json={"name": "ada's second"})
    assert r.status_code == 201, r.text
    second = r.json()
    assert second["userId"] == users["ada"] and second["createdBy"] == {"userId": users["ada"], "keyId": ada_id}
    ada2 = server.client_with(second["key"])
    assert (await ada2.post("/api/v1/teams", json={"name": "audited"})).status_code == 201
    rows = [i for i in (await owner.get("/api/v1/audit", params={"limit": 100})).json()["items"] if i["route"] == "/api/v1/teams"]
    assert rows[0]["actor"] == "ada" and rows[0]["credential"] == second["id"]
    assert rows[0]["credentialCreatedBy"] == {"userId": users["ada"], "keyId": ada_id}
    r = await ada.post("/api/v1/api-keys", json={"name": "m"}, headers={"X-API-Key": mo_key})
    assert r.status_code == 403  # members manage no keys
    # an admin revokes a member's key, not another admin's; the owner revokes any
    adam_id = await _key_id(owner, await key_for(owner, "adam", "admin"))
    assert (await ada.delete(f"/api/v1/api-keys/{adam_id}")).status_code == 403
    assert (await ada.delete(f"/api/v1/api-keys/{await _key_id(owner, mo_key)}")).status_code == 204
    assert (await owner.delete(f"/api/v1/api-keys/{adam_id}")).status_code == 204
    keys = await _keys(owner)
    assert keys[adam_id]["revokedAt"] and keys[await _key_id(owner, mo_key)]["revokedAt"] and not keys[ada_id]["revokedAt"]

    # a JWT tenant of the other organization: its keys say who made them (no key: a JWT)
    tenant = httpx.AsyncClient(base_url=server.url, headers=_jwt("wile", org_b))
    r = await tenant.post("/api/v1/api-keys", json={"name": "from my IdP"})
    assert r.status_code == 201
    wile_id = r.json()["userId"]
    assert r.json()["createdBy"] == {"userId": wile_id, "keyId": None}
    assert all(k["userId"] == wile_id for k in (await _keys(b)).values())
    assert not any(k["id"] == r.json()["id"] for k in (await _keys(owner)).values())
    for c in (ada, ada2, tenant, b):
        await c.aclose()


async def test_derived_keys_are_no_wider_than_their_maker(server: Server) -> None:
    owner = server.client
    assert (await owner.post("/api/v1/teams", json={"name": "red"})).status_code == 201
    assert (await owner.post("/api/v1/teams", json={"name": "blue"})).status_code == 201
    tad = server.client_with(await key_for(owner, "tad", "admin", teamId="red", expiresInDays=1))
    blue_key = await key_for(owner, "bea", "member", teamId="blue")
    # a team key's keys stay in its team and expire with it
    r = await tad.post("/api/v1/api-keys", json={"name": "tad's"})
    assert r.status_code == 201, r.text
    child = r.json()
    parent = (await _keys(owner))[await _key_id(owner, tad.headers["X-API-Key"])]
    assert child["teamId"] == parent["teamId"] and child["expiresAt"] == parent["expiresAt"]
    r = await tad.post("/api/v1/api-keys", json={"name": "blue?", "teamId": "blue"})
    assert r.status_code == 403
    # it lists and revokes only its team's keys
    listed = await _keys(tad)
    assert listed and all(k["teamId"] == parent["teamId"] for k in listed.values())
    blue_id = await _key_id(owner, blue_key)
    assert (await tad.delete(f"/api/v1/api-keys/{blue_id}")).status_code == 404
    assert (await _keys(owner))[blue_id]["revokedAt"] is None
    await tad.aclose()


async def test_read_only_credentials_read_what_their_role_reads(server: Server) -> None:
    owner = server.client
    rita = server.client_with(await key_for(owner, "rita", "admin", readOnly=True))
    viewer = server.client_with(await key_for(owner, "vic", "viewer"))
    assert (await owner.post("/api/v1/teams", json={"name": "t1"})).status_code == 201
    r = await rita.get("/api/v1/audit")
    assert r.status_code == 200 and any(i["route"] == "/api/v1/teams" for i in r.json()["items"])
    r = await rita.get("/api/v1/api-keys")
    assert r.status_code == 200 and {k["userId"] for k in r.json()["items"]} >= {"usr-admin"}
    before = await _keys(owner)
    # ... and still changes nothing
    assert (await rita.post("/api/v1/api-keys", json={"name": "x"})).status_code == 403
    assert (await rita.delete(f"/api/v1/api-keys/{next(iter(before))}")).status_code == 403
    assert await _keys(owner) == before
    # a viewer's role reads neither, read-only or not
    assert (await viewer.get("/api/v1/audit")).status_code == 403
    assert (await viewer.get("/api/v1/api-keys")).status_code == 403
    await rita.aclose()
    await viewer.aclose()
