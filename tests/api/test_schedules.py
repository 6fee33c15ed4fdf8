"""Schedules: manual and clock-driven runs make exactly one job each; misfires; validation."""

import asyncio
import time
from typing import Any

import pytest

from vmplane import clock
from vmplane.store import schedules as sch_q

from ..support import Server, new_pg_database
from .test_events import collect, sse_events

CREATE_VM = {"method": "POST", "path": "/api/v1/vms", "body": [{"name": "from-schedule"}]}


async def make(server: Server, **kw: Any) -> dict[str, Any]:
    body = {"name": "nightly", "schedule": "0 2 * * *", "jobTemplate": CREATE_VM, **kw}
    r = await server.client.post("/api/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def make_due(server: Server, schedule_id: str, at: float) -> None:
    async with server.rt.store.write() as conn:
        await sch_q.set_schedule(conn, schedule_id, next_run=at)
    server.rt.schedules._wake.set()


async def jobs_of(server: Server) -> list[dict[str, Any]]:
    return (await server.client.get("/api/v1/jobs", params={"type": "vm-create"})).json()["items"]


async def wait_for_count(server: Server, schedule_id: str, field: str, n: int, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = (await server.client.get(f"/api/v1/schedules/{schedule_id}")).json()
        if s[field] >= n:
            return s
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.1)


async def test_manual_trigger_makes_exactly_one_job_as_the_owner(server: Server) -> None:
    sch = await make(server)
    assert sch["nextRun"].endswith("T02:00:00Z") and sch["runCount"] == 0 and sch["createdBy"] == "admin"
    r = await server.client.post(f"/api/v1/schedules/{sch['id']}/trigger")
    assert r.status_code == 200 and r.json()["jobId"], r.text
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded" and job["createdBy"] == "admin"
    s = await wait_for_count(server, sch["id"], "successCount", 1)
    assert s["runCount"] == 1 and s["lastJobId"] == job["id"] and s["nextRun"] == sch["nextRun"]
    assert len(await jobs_of(server)) == 1
    stats = (await server.client.get("/api/v1/schedules/stats")).json()
    assert stats == {"totalSchedules": 1, "enabledSchedules": 1, "disabledSchedules": 0, "totalRuns": 1, "successfulRuns": 1, "failedRuns": 0}
    events = await collect(sse_events(server.client, {"since": "0", "resource": sch["id"]}), 2)
    assert [e["event"] for e in events] == ["schedule.triggered", "schedule.completed"]
    # a second trigger replays the same request: the VM name is taken, so that run fails
    r = await server.client.post(f"/api/v1/schedules/{sch['id']}/trigger")
    assert r.json()["jobId"] is None and "409" in r.json()["error"]
    s = await wait_for_count(server, sch["id"], "failureCount", 1)
    assert "already exists" in s["lastError"]


async def test_due_by_the_clock_runs_exactly_once(server: Server) -> None:
    sch = await make(server, jobTemplate={"method": "POST", "path": "/api/v1/vms", "body": {"name": "clock-1"}})
    await make_due(server, sch["id"], clock.now() + 0.3)
    s = await wait_for_count(server, sch["id"], "successCount", 1)
    await asyncio.sleep(1.5)
    assert len(await jobs_of(server)) == 1
    s = (await server.client.get(f"/api/v1/schedules/{sch['id']}")).json()
    assert s["runCount"] == 1 and s["nextRun"].endswith("T02:00:00Z") and s["lastRun"]


@pytest.mark.parametrize("policy, expected_jobs", [("skip", 0), ("run_once", 1)])
async def test_misfires_never_burst(server: Server, policy: str, expected_jobs: int) -> None:
    sch = await make(server, schedule="* * * * *", misfirePolicy=policy)
    await make_due(server, sch["id"], clock.now() - 3 * 3600)  # down for three hours: 180 missed runs
    deadline = time.monotonic() + 10
    while True:
        s = (await server.client.get(f"/api/v1/schedules/{sch['id']}")).json()
        if s["nextRun"] and s["nextRun"] > clock.rfc3339(clock.now()):
            break
        assert time.monotonic() < deadline, s
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)
    assert len(await jobs_of(server)) == expected_jobs
    assert s["runCount"] == expected_jobs


async def test_two_schedulers_on_one_postgresql_run_each_due_time_once(server_factory: Any) -> None:
    url = await new_pg_database()
    a = await server_factory(database_url=url)
    b = await server_factory(database_url=url)
    sch = await make(a, jobTemplate={"method": "POST", "path": "/api/v1/vms", "body": {"name": "once-only"}})
    for _ in range(3):  # several due times, both schedulers awake
        await make_due(a, sch["id"], clock.now() + 0.2)
        b.rt.schedules._wake.set()
        before = (await a.client.get(f"/api/v1/schedules/{sch['id']}")).json()["runCount"]
        await wait_for_count(a, sch["id"], "runCount", before + 1)
        await asyncio.sleep(0.5)
    s = (await a.client.get(f"/api/v1/schedules/{sch['id']}")).json()
    assert s["runCount"] == 3
    assert len((await a.client.get("/api/v1/jobs")).json()["items"]) == 1  # later runs hit the taken name before any job


async def test_crud_enable_disable_and_validation(server: Server) -> None:
    c = server.client
    sch = await make(server, timezone="Europe/Paris")
    assert sch["nextRun"].endswith(("T01:00:00Z", "T00:00:00Z"))  # 02:00 in Paris
    r = await c.post(f"/api/v1/schedules/{sch['id']}/disable")
    assert r.json()["enabled"] is False and r.json()["nextRun"] is None
    r = await c.post(f"/api/v1/schedules/{sch['id']}/enable")
    assert r.json()["enabled"] is True and r.json()["nextRun"]
    r = await c.patch(f"/api/v1/schedules/{sch['id']}", json={"schedule": "*/15 * * * *"})
    assert r.json()["schedule"] == "*/15 * * * *"
    r = await c.put(f"/api/v1/schedules/{sch['id']}", json={"name": "renamed", "schedule": "0 3 * * 0", "jobTemplate": CREATE_VM})
    assert r.json()["name"] == "renamed" and r.json()["timezone"] == "UTC"
    for bad, field in [
        ({"schedule": "61 * * * *"}, "schedule"),
        ({"schedule": "* * * *  "}, "schedule"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"jobTemplate": {"method": "POST", "path": "/etc/passwd"}}, "jobTemplate.path"),
        ({"jobTemplate": {"method": "POST", "path": "/api/v1/schedules/x/trigger"}}, "jobTemplate.path"),
        ({"jobTemplate": {"method": "GET", "path": "/api/v1/vms"}}, "jobTemplate.method"),
        ({"misfirePolicy": "burst"}, "misfirePolicy"),
    ]:
        r = await c.post("/api/v1/schedules", json={"name": "x", "schedule": "0 2 * * *", "jobTemplate": CREATE_VM, **bad})
        assert r.status_code == 400 and r.json()["details"]["field"] == field, (bad, r.text)
    assert (await c.delete(f"/api/v1/schedules/{sch['id']}")).status_code == 204
    assert (await c.get(f"/api/v1/schedules/{sch['id']}")).status_code == 404
    assert (await c.get("/api/v1/schedules")).json()["items"] == []
