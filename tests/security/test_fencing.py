"""Fencing: a worker that stalls past its task's lease, on PostgreSQL with two replicas (two
runtimes in this process on one database), cannot act on the node nor end the task once the
other replica has taken the task over; the task's changing driver calls happen once.

The node both replicas reach (as they reach an agent's node) is one sim driver, seen by each
replica through a recorder that notes every call; replica A's recorder can hold A's handler
between two driver calls, which with A's lease renewals stopped is a worker stalled past its
lease. Then: a later attempt claimed by the stalled process itself, and an end the store
refuses (with the changes its run deferred to it).
"""

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, update

from vmplane import clock
from vmplane.drivers.base import HypervisorDriver
from vmplane.drivers.sim import SimDriver
from vmplane.jobs import fencing
from vmplane.jobs.handlers.base import BaseHandler
from vmplane.store import jobs as job_q
from vmplane.store import meta as meta_q
from vmplane.store.tables import events, tasks

from ..support import Server, new_pg_database

LEASE = 1.0
SHARED = "shared-1"
CHANGES = {"stop_vm", "revert_vm", "start_vm"}


class Recorder:
    """A replica's view of the shared node: notes each call (replica, method); when `hold` is
    set, the first `get_vm` made by a job handler returns only once `release` is set."""

    def __init__(self, driver: HypervisorDriver, replica: str, calls: list[tuple[str, str]]) -> None:
        self._driver, self._replica, self._calls = driver, replica, calls
        self.hold = False
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._driver, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            if name != "guest_state":  # the readiness watch's look at a started guest: not the task's work
                self._calls.append((self._replica, name))
            result = await attr(*args, **kwargs)
            if self.hold and name == "get_vm" and fencing.current.get() is not None:
                self.hold = False
                self.held.set()
                await self.release.wait()
            return result

        return recorded


async def until(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < deadline, f"still not {what} after {timeout} s"
        await asyncio.sleep(0.02)


@pytest.mark.postgres
async def test_a_worker_stalled_past_its_lease_neither_acts_nor_ends_the_task(server_factory: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, logger="vmplane.jobs")
    url = await new_pg_database()
    a: Server = await server_factory(database_url=url, sim_nodes=0, lease_seconds=LEASE, coordination_seconds=0.1)
    b: Server = await server_factory(database_url=url, sim_nodes=0, lease_seconds=LEASE, coordination_seconds=0.1)
    node = SimDriver(hostname=SHARED, latency=0.01)
    await node.open()
    calls: list[tuple[str, str]] = []
    rec_a, rec_b = Recorder(node, "A", calls), Recorder(node, "B", calls)
    for server, rec in ((a, rec_a), (b, rec_b)):
        server.rt.registry.add(SHARED, rec)
    await a.rt.cluster.register_node(SHARED, node)

    r = await a.client.post("/api/v1/vms", json={"name": "fenced", "nodeId": SHARED})
    assert r.status_code == 202, r.text
    vm_id = r.json()["vmIds"][0]
    assert (await a.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    r = await a.client.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "s1"})
    assert r.status_code == 202, r.text
    assert (await a.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap_id = (await a.client.get("/api/v1/snapshots")).json()["items"][0]["id"]

    # A takes the revert (B may not, for now) and stalls in its handler between reading the
    # VM's state and stopping it, its lease renewals stopped with it.
    b_not_here = b.rt.engine.not_here
    b.rt.engine.not_here = lambda: {SHARED}
    rec_a.hold = True
    calls.clear()
    r = await a.client.post(f"/api/v1/vms/{vm_id}/revert", json={"snapshotId": snap_id})
    assert r.status_code == 202, r.text
    job_id = r.json()["jobId"]
    await asyncio.wait_for(rec_a.held.wait(), 20)
    a_lease_loop = a.rt.engine._loops[1]
    a_lease_loop.cancel()
    await asyncio.gather(a_lease_loop, return_exceptions=True)
    a.rt.engine.not_here = lambda: {SHARED}  # stalled: A claims nothing either
    b.rt.engine.not_here = b_not_here
    stalled_at = time.monotonic()

    # B finds the lease run out, requeues the task and runs it to its end (attempt 2).
    job = await b.wait_job(job_id, timeout=30)
    assert job["state"] == "succeeded", job
    (task,) = job["tasks"]
    assert task["attempts"] == 2
    assert time.monotonic() - stalled_at > LEASE
    assert sorted(c for c in calls if c[1] in CHANGES) == [("B", "revert_vm"), ("B", "start_vm"), ("B", "stop_vm")]

    # A wakes up: its next step (stopping the VM) is refused, its end is not recorded.
    rec_a.release.set()
    await until(lambda: a.rt.engine.running_count == 0, "A's stale run stopped")
    a.rt.engine._loops[1] = asyncio.create_task(a.rt.engine._lease_loop())

    # Each change happened once, by B; A only read the VM's state before it stalled.
    assert [c for c in calls if c[0] == "A"] == [("A", "get_vm")]
    assert sorted(c[1] for c in calls if c[1] in CHANGES) == sorted(CHANGES)
    lost = [m for m in caplog.messages if task["id"] in m and "attempt 1 lost its lease" in m]
    assert lost, caplog.messages
    assert any(task["id"] in m and "nothing of it was recorded" in m for m in caplog.messages)
    runtime = await node.get_vm(vm_id)
    assert runtime is not None and runtime.state.value == "running"
    # The job ended once: one task end, the job counted once, the VM as B left it.
    async with a.rt.store.read() as conn:
        job_row = await job_q.get_job(conn, job_id)
        task_ends = [
            r.type
            for r in (await conn.execute(select(events.c.type, events.c.data).where(events.c.resource == vm_id))).all()
            if r.type.startswith("task.") and r.type != "task.started" and r.data["id"] == task["id"]
        ]
    assert (job_row.state, job_row.n_succeeded, job_row.n_failed, job_row.n_cancelled, job_row.total) == ("succeeded", 1, 0, 0, 1)
    assert task_ends == ["task.succeeded"]
    assert (await a.client.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"
    # The store refuses A's attempt whatever it tries (its token is attempt 1).
    async with a.rt.store.write() as conn:
        renewal = await job_q.renew_leases(conn, owner=a.rt.engine.owner, leases={task["id"]: 1}, until=time.time() + 60)
    assert renewal.lost == {task["id"]}
    await node.close()


async def test_a_later_attempt_in_the_same_process_stops_the_stalled_one(server_factory: Any, database_url: str, caplog: Any) -> None:
    """The lease owner is per process, so it is no fence: a replica stalled past its lease
    whose task was requeued (by another replica's recovery) may claim that task again itself.
    The stalled first attempt is stopped the moment the second is claimed, and only the
    second acts and ends (SQLite and PostgreSQL)."""
    caplog.set_level(logging.WARNING, logger="vmplane.jobs")
    node = SimDriver(hostname="node-1", latency=0.01)
    calls: list[tuple[str, str]] = []
    rec = Recorder(node, "A", calls)
    a: Server = await server_factory(database_url=database_url, nodes=[("node-1", rec)], lease_seconds=LEASE)
    r = await a.client.post("/api/v1/vms", json={"name": "again"})
    vm_id = r.json()["vmIds"][0]
    assert (await a.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    r = await a.client.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "s1"})
    assert (await a.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap_id = (await a.client.get("/api/v1/snapshots")).json()["items"][0]["id"]

    rec.hold = True
    calls.clear()
    r = await a.client.post(f"/api/v1/vms/{vm_id}/revert", json={"snapshotId": snap_id})
    job_id = r.json()["jobId"]
    await asyncio.wait_for(rec.held.wait(), 20)
    lease_loop = a.rt.engine._loops[1]
    lease_loop.cancel()
    await asyncio.gather(lease_loop, return_exceptions=True)
    (stalled,) = a.rt.engine._running.values()
    # The lease runs out; another replica's recovery requeues the task (as its lease loop does).
    await asyncio.sleep(LEASE * 1.2)
    async with a.rt.store.write() as conn:
        (orphan,) = await job_q.expired_tasks(conn, now=time.time())
        assert await job_q.requeue_task(conn, orphan, time.time())
    a.rt.engine.wakeup()

    job = await a.wait_job(job_id, timeout=30)  # this process claims it again: attempt 2
    a.rt.engine._loops[1] = asyncio.create_task(a.rt.engine._lease_loop())
    assert job["state"] == "succeeded" and job["tasks"][0]["attempts"] == 2, job
    assert stalled[0].done() and stalled[1].lost and stalled[1].attempt == 1
    rec.release.set()
    # One get_vm by the stalled attempt, then the second attempt's whole revert, once.
    # (the get_vm before start_vm: the start first looks whether its forwarded ports are still free)
    assert calls == [("A", "get_vm"), ("A", "get_vm"), ("A", "stop_vm"), ("A", "revert_vm"), ("A", "get_vm"), ("A", "start_vm"), ("A", "get_vm")], calls
    assert any(f"task {orphan.id} (vm-revert): attempt 1 lost its lease" in m for m in caplog.messages), caplog.messages
    async with a.rt.store.read() as conn:
        task_ends = [
            r.type
            for r in (await conn.execute(select(events.c.type, events.c.data).where(events.c.resource == vm_id))).all()
            if r.type in ("task.succeeded", "task.failed", "task.cancelled") and r.data["id"] == orphan.id
        ]
    assert task_ends == ["task.succeeded"]


async def test_the_deferred_changes_of_a_refused_end_are_not_written(server_factory: Any, database_url: str) -> None:
    """A run that never noticed it lost its lease (no fenced step after the loss) reaches its
    end: the store refuses the end, and the changes it deferred to its end are not written,
    while the run ending beside it in the same batch is recorded whole (SQLite and PostgreSQL)."""
    class Deferring(BaseHandler):
        def __init__(self) -> None:
            self.go = asyncio.Event()
            self.started: set[str] = set()

        async def run(self, ctx: Any) -> None:
            ctx.defer(lambda conn: meta_q.put(conn, f"deferred-{ctx.resource_id}", str(ctx.attempt)))
            self.started.add(ctx.resource_id)
            await self.go.wait()

    a: Server = await server_factory(database_url=database_url, lease_seconds=30.0)
    handler = Deferring()
    a.rt.engine.handlers["test-deferring"] = handler
    now = clock.now()
    async with a.rt.store.write() as conn:
        await job_q.insert_job(
            conn,
            {"id": "job-d", "type": "test-deferring", "state": "queued", "org_id": "org-default", "created_by": "x", "total": 2,
             "n_succeeded": 0, "n_failed": 0, "n_cancelled": 0, "progress_sum": 0, "cancel_requested": False, "created_at": now,
             "updated_at": now},
            [{"id": f"task-{r}", "job_id": "job-d", "org_id": "org-default", "type": "test-deferring", "resource_id": r, "state": "queued",
              "progress": 0, "payload": {}, "attempts": 0, "cancel_requested": False, "created_at": now} for r in ("d1", "d2")],
        )  # fmt: skip
    a.rt.engine.wakeup()
    await until(lambda: handler.started == {"d1", "d2"}, "both tasks running")
    async with a.rt.store.write() as conn:  # d1 passes to another worker behind this one's back
        await conn.execute(update(tasks).where(tasks.c.id == "task-d1").values(lease_owner="elsewhere", attempts=tasks.c.attempts + 1))
    handler.go.set()
    await until(lambda: a.rt.engine.running_count == 0, "both runs over")
    async with a.rt.store.read() as conn:
        d1, d2 = [await job_q.get_task(conn, "job-d", t) for t in ("task-d1", "task-d2")]
        job = await job_q.get_job(conn, "job-d")
        written = {k: await meta_q.get(conn, k) for k in ("deferred-d1", "deferred-d2")}
    assert (d1.state, d1.lease_owner, d1.attempts) == ("running", "elsewhere", 2)
    assert d2.state == "succeeded" and (job.n_succeeded, job.state) == (1, "running")
    assert written == {"deferred-d1": None, "deferred-d2": "1"}
