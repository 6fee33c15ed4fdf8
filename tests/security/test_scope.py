"""Scope travels with the work (issue 19, item 2), against real servers, as a hostile tenant
would try it: two organizations, an owner, a team-scoped admin key (team red), another team's
key (blue), a read-only key, and another organization's owner.

- a schedule made with a team key replays as that key: it cannot move another team's VM (the
  run records the 404) though the key's user is an admin of the whole organization;
- a schedule, webhook or deployment whose key is revoked, has expired, or whose user left is
  disabled with the reason, and does not act (no job, no delivery, no replica);
- a team key lists, reads and cancels only its team's jobs (others: 404; Blue Lobster's tasks
  too), its SSE, WebSocket, HyperSDK /ws and Volant SSE streams carry only its team's events,
  and its webhooks only its team's;
- a JWT-made schedule acts as the subject's membership until the subject leaves;
- Idempotency-Key answers are kept per credential and only for what was authorized; a replay
  of an answer that carried a secret (a key, a WebSocket ticket) is 409
  `idempotency_replay_unavailable`.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import websockets
from sqlalchemy import select, update

from vmplane.store import schedules as sch_q
from vmplane.store.tables import api_keys, idempotency_keys, jobs, schedule_runs, vms

from ..support import Server, free_port
from ..support_hypersdk import P, Receiver, doc_job


@dataclass
class Tenants:
    server: Server
    owner: httpx.AsyncClient
    """the owner of organization acme (its whole organization)"""
    red: httpx.AsyncClient
    """rita, an admin of acme, with a key scoped to team red"""
    blue: httpx.AsyncClient
    """bob, a member of acme, with a key scoped to team blue"""
    reader: httpx.AsyncClient
    """ada, an admin of acme, with a read-only key"""
    other: httpx.AsyncClient
    """the owner of organization globex"""
    red_team: str
    blue_team: str
    keys: dict[str, str]
    key_ids: dict[str, str]

    async def aclose(self) -> None:
        for c in (self.owner, self.red, self.blue, self.reader, self.other):
            await c.aclose()


async def _key(owner: httpx.AsyncClient, user: str, role: str, **kw: Any) -> dict[str, Any]:
    r = await owner.post("/api/v1/users", json={"name": user, "role": role})
    assert r.status_code in (201, 409), r.text
    r = await owner.post("/api/v1/api-keys", json={"name": f"{user} key", "userId": user, **kw})
    assert r.status_code == 201, r.text
    return r.json()


async def tenants(server: Server) -> Tenants:
    r = await server.client.post("/api/v1/orgs", json={"name": "acme", "owner": "wile"})
    assert r.status_code == 201, r.text
    owner = server.client_with(r.json()["ownerKey"])
    r = await server.client.post("/api/v1/orgs", json={"name": "globex", "owner": "hank"})
    other = server.client_with(r.json()["ownerKey"])
    red_team = (await owner.post("/api/v1/teams", json={"name": "red"})).json()["id"]
    blue_team = (await owner.post("/api/v1/teams", json={"name": "blue"})).json()["id"]
    made = {
        "red": await _key(owner, "rita", "admin", teamId=red_team),
        "blue": await _key(owner, "bob", "member", teamId=blue_team),
        "reader": await _key(owner, "ada", "admin", readOnly=True),
    }
    keys = {k: v["key"] for k, v in made.items()}
    return Tenants(
        server, owner, server.client_with(keys["red"]), server.client_with(keys["blue"]), server.client_with(keys["reader"]), other,
        red_team, blue_team, keys, {k: v["id"] for k, v in made.items()},
    )  # fmt: skip


async def make_vm(server: Server, client: httpx.AsyncClient, name: str, team: str | None = None) -> tuple[str, str]:
    """A running VM made by `client` (in its team, or `team`): (vm id, the create job's id)."""
    r = await client.post("/api/v1/vms", json=[{"name": name, **({"teamId": team} if team else {})}])
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], client=client)
    assert job["state"] == "succeeded", job
    return r.json()["vmIds"][0], job["id"]


async def _schedule(client: httpx.AsyncClient, template: dict[str, Any], name: str = "nightly") -> httpx.Response:
    return await client.post("/api/v1/schedules", json={"name": name, "schedule": "0 2 * * *", "jobTemplate": template})


async def _run_rows(server: Server, schedule_id: str) -> list[Any]:
    async with server.rt.store.read() as conn:
        return list((await conn.execute(select(schedule_runs).where(schedule_runs.c.schedule_id == schedule_id))).all())


async def _team_of(server: Server, vm_id: str) -> str | None:
    async with server.rt.store.read() as conn:
        return (await conn.execute(select(vms.c.team_id).where(vms.c.id == vm_id))).scalar_one()


async def _jobs_count(server: Server) -> int:
    async with server.rt.store.read() as conn:
        return len((await conn.execute(select(jobs.c.id))).all())


async def test_a_team_keys_schedule_acts_as_that_key_and_cannot_move_another_teams_vm(server: Server) -> None:
    t = await tenants(server)
    try:
        blue_vm, _ = await make_vm(server, t.blue, "blue-1")
        red_vm, _ = await make_vm(server, t.red, "red-1")
        # rita is an admin of acme: with her user's rights the move would succeed; her key is red's
        r = await _schedule(t.red, {"method": "PUT", "path": f"/api/v1/vms/{blue_vm}/team", "body": {"teamId": t.red_team}})
        assert r.status_code == 201, r.text
        sch = r.json()
        r = await t.red.post(f"/api/v1/schedules/{sch['id']}/trigger")
        assert r.status_code == 200 and r.json()["jobId"] is None
        assert "answered 404" in r.json()["error"], r.json()
        runs = await _run_rows(server, sch["id"])
        assert [(x.state, "404" in (x.error or "")) for x in runs] == [("failed", True)]
        assert await _team_of(server, blue_vm) == t.blue_team  # not moved
        assert sch["scope"] == {"credential": t.key_ids["red"], "teamId": t.red_team, "readOnly": False, "ownerId": sch["scope"]["ownerId"]}
        assert sch["disabledReason"] is None
        # the same key's schedule on its own team's VM does act, as that key (the job is red's)
        r = await _schedule(t.red, {"method": "POST", "path": f"/api/v1/vms/{red_vm}/stop"}, "stop-red")
        r = await t.red.post(f"/api/v1/schedules/{r.json()['id']}/trigger")
        assert r.status_code == 200 and r.json()["jobId"], r.json()
        job = await server.wait_job(r.json()["jobId"], client=t.red)
        assert job["state"] == "succeeded"
        # the blue team does not see red's schedules; another organization sees none
        assert [s["name"] for s in (await t.blue.get("/api/v1/schedules")).json()["items"]] == []
        assert (await t.blue.get(f"/api/v1/schedules/{sch['id']}")).status_code == 404
        assert (await t.other.get(f"/api/v1/schedules/{sch['id']}")).status_code == 404
        # a read-only key makes no schedule (every schedule replays a change) and no deployment
        before = await _jobs_count(server)
        r = await _schedule(t.reader, {"method": "POST", "path": "/api/v1/vms", "body": [{"name": "ro"}]})
        assert r.status_code == 403, r.text
        r = await t.reader.post("/api/v1/deployments", json={"name": "ro", "replicas": 1})
        assert r.status_code == 403, r.text
        assert len((await t.owner.get("/api/v1/schedules")).json()["items"]) == 2
        assert await _jobs_count(server) == before
    finally:
        await t.aclose()


async def test_what_a_revoked_expired_or_departed_credential_made_is_disabled_and_does_not_act(server: Server, receiver: Receiver) -> None:
    t = await tenants(server)
    try:
        made: dict[str, dict[str, Any]] = {}
        for who in ("red", "blue"):
            c = t.red if who == "red" else t.blue
            r = await _schedule(c, {"method": "POST", "path": "/api/v1/vms", "body": [{"name": f"sched-{who}"}]})
            assert r.status_code == 201, r.text
            s = r.json()
            r = await c.post("/api/v1/webhooks", json={"url": receiver.url + f"/{who}", "events": ["vm.*"]})
            assert r.status_code == 201, r.text
            w = r.json()
            r = await c.post("/api/v1/deployments", json={"name": f"dep-{who}", "replicas": 0})
            assert r.status_code == 201, r.text
            made[who] = {"schedule": s, "webhook": w, "deployment": r.json()}
            assert s["scope"]["teamId"] == w["scope"]["teamId"] == r.json()["scope"]["teamId"]
        # the webhooks work (each hears of its team's VM)
        await make_vm(server, t.owner, "before-red", t.red_team)
        await make_vm(server, t.owner, "before-blue", t.blue_team)
        for who in ("red", "blue"):
            await until(lambda: any(r["path"] == f"/hook/{who}" for r in receiver.requests), 15, f"{who}'s delivery")
        # red's key is revoked: the sweep disables all it made, saying why, at once
        assert (await t.owner.delete(f"/api/v1/api-keys/{t.key_ids['red']}")).status_code == 204
        s = (await t.owner.get(f"/api/v1/schedules/{made['red']['schedule']['id']}")).json()
        w = (await t.owner.get(f"/api/v1/webhooks/{made['red']['webhook']['id']}")).json()
        d = (await t.owner.get("/api/v1/deployments/dep-red")).json()
        for holder in (s, w, d):
            assert "was revoked" in holder["disabledReason"] and t.key_ids["red"] in holder["disabledReason"], holder
        assert s["enabled"] is False and w["enabled"] is False and s["nextRun"] is None
        # ...and it does not act: no run, no replica, nothing delivered, and it cannot be turned back on
        r = await t.owner.post(f"/api/v1/schedules/{s['id']}/trigger")
        assert r.status_code == 409 and "revoked" in r.json()["error"]
        r = await t.owner.post(f"/api/v1/schedules/{s['id']}/enable")
        assert r.status_code == 409
        assert (await t.owner.patch("/api/v1/deployments/dep-red", json={"replicas": 1})).status_code == 200
        # blue's key expires: found at run time (the schedule's next run, the reconciler, the
        # dispatcher), with the same effect
        async with server.rt.store.write() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == t.key_ids["blue"]).values(expires_at=time.time() - 1))
        server.rt.tenancy.forget_cached()
        blue_s = made["blue"]["schedule"]["id"]
        async with server.rt.store.write() as conn:  # the schedule falls due now
            await sch_q.set_schedule(conn, blue_s, next_run=time.time() - 1)
        server.rt.schedules.wake()
        await t.owner.patch("/api/v1/deployments/dep-blue", json={"replicas": 1})
        heard = len(receiver.requests)
        await make_vm(server, t.owner, "after-red", t.red_team)  # events the two hooks would have had
        await make_vm(server, t.owner, "after-blue", t.blue_team)
        for path in (f"/api/v1/schedules/{blue_s}", f"/api/v1/webhooks/{made['blue']['webhook']['id']}", "/api/v1/deployments/dep-blue"):
            got = await wait_until_json(t.owner, path, lambda h: h["disabledReason"] is not None, 15)
            assert "has expired" in got["disabledReason"] and t.key_ids["blue"] in got["disabledReason"], got
        runs = await _run_rows(server, blue_s)
        assert [(x.state, x.job_id) for x in runs] == [("failed", None)] and "expired" in runs[0].error
        await asyncio.sleep(2.5)  # a few reconciler passes
        for dep in ("dep-red", "dep-blue"):
            d = (await t.owner.get(f"/api/v1/deployments/{dep}")).json()
            assert d["replicaVms"] == [], d  # scaled to 1, but nobody acts for it
        async with server.rt.store.read() as conn:
            names = {r[0] for r in (await conn.execute(select(vms.c.name))).all()}
        assert not names & {"sched-red", "sched-blue", "dep-red-1", "dep-blue-1"}
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == heard, receiver.requests[heard:]
        # the events say so, to the organization
        types = await event_types(server, t.owner, "schedule.disabled,webhook.disabled,deployment.disabled")
        assert sorted(types) == sorted(["schedule.disabled", "webhook.disabled", "deployment.disabled"] * 2), types
        # a user who leaves: what they made with any credential stops at once
        k = await _key(t.owner, "carl", "member")
        carl = server.client_with(k["key"])
        r = await _schedule(carl, {"method": "POST", "path": "/api/v1/vms", "body": [{"name": "carl"}]})
        assert r.status_code == 201
        assert (await t.owner.delete("/api/v1/users/carl")).status_code == 204
        got = (await t.owner.get(f"/api/v1/schedules/{r.json()['id']}")).json()
        assert got["enabled"] is False and got["disabledReason"], got
        await carl.aclose()
    finally:
        await t.aclose()


async def until(cond: Any, timeout: float, what: str) -> None:
    """Wait (without blocking the servers in this loop) until `cond()` is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not after {timeout} s"
        await asyncio.sleep(0.05)


async def wait_until_json(client: httpx.AsyncClient, path: str, cond: Any, timeout: float) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = (await client.get(path)).json()
        if cond(got):
            return got
        assert asyncio.get_running_loop().time() < deadline, got
        await asyncio.sleep(0.1)


async def event_types(server: Server, client: httpx.AsyncClient, types: str) -> list[str]:
    """The types of the stored events of `types` that `client` sees (SSE from the start)."""
    out: list[str] = []
    async with client.stream("GET", "/api/v1/events", params={"types": types, "since": "0"}) as r:
        assert r.status_code == 200

        async def read() -> None:
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    out.append(line[7:])

        try:
            await asyncio.wait_for(read(), 1.0)
        except TimeoutError:
            pass
    return out


async def test_a_team_key_lists_reads_and_cancels_only_its_teams_jobs(server: Server) -> None:
    t = await tenants(server)
    try:
        red_vm, red_job = await make_vm(server, t.red, "red-1")
        blue_vm, blue_job = await make_vm(server, t.blue, "blue-1")
        listed = {j["id"] for j in (await t.red.get("/api/v1/jobs")).json()["items"]}
        assert red_job in listed and blue_job not in listed
        assert {j["id"] for j in (await t.blue.get("/api/v1/jobs")).json()["items"]} == {blue_job}
        assert {red_job, blue_job} <= {j["id"] for j in (await t.owner.get("/api/v1/jobs")).json()["items"]}
        assert (await t.other.get("/api/v1/jobs")).json()["items"] == []
        blue_task = (await t.blue.get(f"/api/v1/jobs/{blue_job}")).json()["tasks"][0]["id"]
        assert (await t.red.get(f"/api/v1/jobs/{blue_job}")).status_code == 404
        assert (await t.red.get(f"/api/v1/jobs/{blue_job}/tasks/{blue_task}")).status_code == 404
        assert (await t.other.get(f"/api/v1/jobs/{blue_job}")).status_code == 404
        assert (await t.red.get(f"/api/v1/jobs/{red_job}")).status_code == 200
        # the Blue Lobster face's tasks are these jobs: the same rule
        assert (await t.red.get(f"/compat/bluelobster/api/v1/tasks/{blue_job}")).status_code == 404
        assert (await t.red.get(f"/compat/bluelobster/api/v1/tasks/{red_job}")).status_code == 200
        listed = json.dumps((await t.red.get("/compat/bluelobster/api/v1/tasks")).json())
        assert red_job in listed and blue_job not in listed
        # a job still running: red cannot cancel blue's (404, and it is not cancelled)
        r = await t.blue.post(f"/api/v1/vms/{blue_vm}/reboot")
        assert r.status_code == 202, r.text
        running = r.json()["jobId"]
        r = await t.red.post(f"/api/v1/jobs/{running}/cancel")
        assert r.status_code == 404, r.text
        async with server.rt.store.read() as conn:
            row = (await conn.execute(select(jobs.c.cancel_requested, jobs.c.team_id).where(jobs.c.id == running))).one()
        assert row.cancel_requested is False and row.team_id == t.blue_team
        assert (await server.wait_job(running, client=t.blue))["state"] == "succeeded"
        # an organization-wide key's job on a team's VM is that team's job
        r = await t.owner.post(f"/api/v1/vms/{red_vm}/stop")
        assert r.json()["jobId"] in {j["id"] for j in (await t.red.get("/api/v1/jobs")).json()["items"]}
        assert (await t.blue.get(f"/api/v1/jobs/{r.json()['jobId']}")).status_code == 404
    finally:
        await t.aclose()


async def test_a_team_keys_streams_and_webhooks_carry_only_its_teams_events(server: Server, receiver: Receiver) -> None:
    t = await tenants(server)
    try:
        r = await t.red.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["*"]})
        assert r.status_code == 201, r.text
        sse: list[dict[str, Any]] = []
        native_ws: list[dict[str, Any]] = []
        hyper_ws: list[dict[str, Any]] = []
        volant: list[dict[str, Any]] = []
        ws_base = server.url.replace("http", "ws")
        red_key = {"X-API-Key": t.keys["red"]}

        async def read_sse() -> None:
            async with t.red.stream("GET", "/api/v1/events", timeout=httpx.Timeout(30, read=None)) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        sse.append(json.loads(line[6:]))

        async def read_volant() -> None:
            async with t.red.stream("GET", "/compat/volant/api/v1/events/vms", timeout=httpx.Timeout(30, read=None)) as resp:
                assert resp.status_code == 200
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        volant.append(json.loads(line[6:]))

        async def read_ws(url: str, into: list[dict[str, Any]]) -> None:
            async with websockets.connect(url, additional_headers=red_key) as ws:
                async for msg in ws:
                    into.append(json.loads(msg))

        readers = [
            asyncio.create_task(read_sse()),
            asyncio.create_task(read_volant()),
            asyncio.create_task(read_ws(ws_base + "/api/v1/events/ws", native_ws)),
            asyncio.create_task(read_ws(ws_base + f"{P}/ws", hyper_ws)),
        ]
        await asyncio.sleep(0.5)
        blue_vm, blue_job = await make_vm(server, t.blue, "blue-1")
        red_vm, red_job = await make_vm(server, t.red, "red-1")
        other_vm, other_job = await make_vm(server, t.other, "globex-1")  # another organization
        owner_vm, owner_job = await make_vm(server, t.owner, "no-team")  # acme's, in no team
        # HyperSDK jobs (imports that fail at once: the vCenter port is closed)
        red_imp = (await t.red.post(f"{P}/jobs/submit", json=doc_job(f"127.0.0.1:{free_port()}", "DC/vm/red"))).json()["job_id"]
        blue_imp = (await t.blue.post(f"{P}/jobs/submit", json=doc_job(f"127.0.0.1:{free_port()}", "DC/vm/blue"))).json()["job_id"]
        assert red_imp.startswith("imp-") and blue_imp.startswith("imp-")

        def has(where: list[dict[str, Any]], needle: str) -> bool:
            return needle in json.dumps(where)

        await until(
            lambda: has(sse, red_job) and has(native_ws, red_job) and has(hyper_ws, red_imp) and has(volant, "red-1"), 20, "red's own events"
        )
        await until(lambda: any(r["body"] and red_vm in json.dumps(r["body"]) for r in receiver.requests), 20, "red's own delivery")
        await asyncio.sleep(1.0)  # anything else on its way arrives now
        for r_ in readers:
            r_.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        delivered = json.dumps([r["body"] for r in receiver.requests])
        for where, got in (("sse", json.dumps(sse)), ("ws", json.dumps(native_ws)), ("hypersdk ws", json.dumps(hyper_ws)), ("webhook", delivered)):
            for foreign in (blue_vm, blue_job, other_vm, other_job, owner_vm, owner_job, blue_imp):
                assert foreign not in got, (where, foreign)
        assert red_vm in json.dumps(sse) and red_vm in json.dumps(native_ws)
        # Volant's stream names VMs (the face's identity of a VM): only red's
        assert {e["name"] for e in volant} == {"red-1"}, volant
        # the organization's owner sees both teams' events
        types = await event_types(server, t.owner, "vm.created")
        assert len(types) >= 3
    finally:
        await t.aclose()


async def test_idempotency_is_per_credential_authorized_first_and_keeps_no_secret(server: Server) -> None:
    t = await tenants(server)
    try:
        # the owner makes a key with an Idempotency-Key
        r = await t.owner.post("/api/v1/api-keys", json={"name": "deploy"}, headers={"Idempotency-Key": "mint-1"})
        assert r.status_code == 201, r.text
        minted = r.json()["key"]
        # a read-only key of the same user (and other users' keys) sending the same key and
        # body: what it would get without the Idempotency-Key (403 for read-only), no replay
        r = await t.owner.post("/api/v1/api-keys", json={"name": "owner read-only", "readOnly": True})
        owner_ro = server.client_with(r.json()["key"])
        r = await owner_ro.post("/api/v1/api-keys", json={"name": "deploy"}, headers={"Idempotency-Key": "mint-1"})
        assert r.status_code == 403 and r.headers.get("idempotent-replayed") is None, r.text
        await owner_ro.aclose()
        for c in (t.reader, t.red, t.other):
            r = await c.post("/api/v1/api-keys", json={"name": "deploy"}, headers={"Idempotency-Key": "mint-1"})
            assert minted not in r.text
            assert r.headers.get("idempotent-replayed") is None
        r = await t.reader.post("/api/v1/api-keys", json={"name": "deploy"}, headers={"Idempotency-Key": "mint-1"})
        assert r.status_code == 403, r.text
        # the owner's own replay does not give the secret a second time, nor make another key
        n_keys = len((await t.owner.get("/api/v1/api-keys")).json()["items"])
        r = await t.owner.post("/api/v1/api-keys", json={"name": "deploy"}, headers={"Idempotency-Key": "mint-1"})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_replay_unavailable", r.text
        assert minted not in r.text and r.headers.get("idempotent-replayed") == "true"
        assert len((await t.owner.get("/api/v1/api-keys")).json()["items"]) == n_keys
        # WebSocket tickets are secrets too
        r = await t.red.post("/api/v1/ws-tickets", headers={"Idempotency-Key": "ticket-1"})
        assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
        ticket = r.json()["ticket"]
        r = await t.red.post("/api/v1/ws-tickets", headers={"Idempotency-Key": "ticket-1"})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_replay_unavailable" and ticket not in r.text
        async with server.rt.store.read() as conn:
            stored = " ".join(b for (b,) in (await conn.execute(select(idempotency_keys.c.body))).all())
        assert minted not in stored and ticket not in stored
        # another key of the same user (an organization-wide answer is not replayed to a team key)
        k2 = await _key(t.owner, "rita", "admin")
        rita_all = server.client_with(k2["key"])
        r = await rita_all.post("/api/v1/vms", json=[{"name": "idem"}], headers={"Idempotency-Key": "vm-1"})
        assert r.status_code == 202
        r2 = await t.red.post("/api/v1/vms", json=[{"name": "idem"}], headers={"Idempotency-Key": "vm-1"})
        assert r2.headers.get("idempotent-replayed") is None and r2.text != r.text
        r3 = await rita_all.post("/api/v1/vms", json=[{"name": "idem"}], headers={"Idempotency-Key": "vm-1"})
        assert r3.headers.get("idempotent-replayed") == "true" and r3.json() == r.json()
        await rita_all.aclose()
    finally:
        await t.aclose()


async def test_a_jwt_made_schedule_acts_as_the_subjects_membership_until_the_subject_leaves(server_factory: Any) -> None:
    secret = "s" * 40
    server = await server_factory(jwt_secret=secret)
    t = await tenants(server)
    try:
        org = (await t.owner.get("/api/v1/org")).json()["id"]
        await _key(t.owner, "jill", "member")
        token = jwt.encode({"sub": "jill", "org": org, "exp": int(time.time()) + 60}, secret, algorithm="HS256")
        jill = httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token}"})
        r = await _schedule(jill, {"method": "POST", "path": "/api/v1/vms", "body": [{"name": "jill-1"}]})
        assert r.status_code == 201, r.text
        sch = r.json()
        assert sch["scope"]["credential"] == "jwt" and sch["scope"]["teamId"] is None and sch["scope"]["readOnly"] is False
        r = await t.owner.post(f"/api/v1/schedules/{sch['id']}/trigger")  # acts as jill (a member) while she is one
        assert r.status_code == 200 and r.json()["jobId"], r.json()
        assert (await t.owner.delete("/api/v1/users/jill")).status_code == 204
        got = (await t.owner.get(f"/api/v1/schedules/{sch['id']}")).json()
        assert got["enabled"] is False and "no longer a member" in got["disabledReason"], got
        assert (await t.owner.post(f"/api/v1/schedules/{sch['id']}/trigger")).status_code == 409
        await jill.aclose()
    finally:
        await t.aclose()


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver().start()
    yield r
    await r.stop()
