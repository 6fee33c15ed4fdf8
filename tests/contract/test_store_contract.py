"""The store contract: the same behaviour on SQLite and on PostgreSQL."""

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from vmplane import clock, ids
from vmplane.domain import TaskState
from vmplane.store import Store, StoreUnavailable
from vmplane.store import idempotency as idem_q
from vmplane.store import jobs as job_q
from vmplane.store import nodes as node_q
from vmplane.store import tenancy as t_q
from vmplane.store import vms as vm_q


@pytest.fixture
async def store(database_url: str) -> Any:
    s = Store(database_url)
    await s.open()
    yield s
    await s.close()


def node_row(node_id: str, cpu: int = 8) -> dict[str, Any]:
    now = clock.now()
    return {
        "id": node_id, "hostname": node_id, "driver": "sim", "status": "online", "cpu_total": cpu,
        "ram_mb_total": 8192, "disk_gb_total": 100, "labels": {}, "created_at": now, "updated_at": now,
    }  # fmt: skip


def vm_row(name: str) -> dict[str, Any]:
    now = clock.now()
    return {
        "id": ids.new_id("vm"), "uuid": ids.new_uuid(), "name": name, "org_id": "org-default", "node_id": None, "template_id": None,
        "status": "provisioning", "cpu": 1, "ram_mb": 256, "disk_gb": 1, "tags": ["a"], "spec": {},
        "created_at": now, "updated_at": now,
    }  # fmt: skip


async def test_migrations_are_idempotent(database_url: str) -> None:
    for _ in range(2):
        s = Store(database_url)
        await s.open()
        await s.ping()
        await s.close()


async def test_concurrent_claims_never_overcommit(store: Store) -> None:
    async with store.write() as conn:
        await node_q.upsert_node(conn, node_row("n1", cpu=10))

    async def claim() -> bool:
        async with store.write() as conn:
            return await node_q.claim(conn, "n1", 1, 100, 1, (1.0, 1.0, 1.0), clock.now())

    results = await asyncio.gather(*(claim() for _ in range(40)))
    assert sum(results) == 10
    async with store.read() as conn:
        n = await node_q.get_node(conn, "n1")
    assert n.cpu_used == 10 and n.ram_mb_used == 1000


async def test_tasks_are_claimed_once_and_in_resource_order(store: Store) -> None:
    now = clock.now()
    async with store.write() as conn:
        await job_q.insert_job(
            conn,
            {"id": "job-1", "type": "t", "state": "queued", "org_id": "org-default", "created_by": "x", "total": 3, "n_succeeded": 0,
             "n_failed": 0, "n_cancelled": 0, "progress_sum": 0, "cancel_requested": False, "created_at": now, "updated_at": now},
            [
                {"id": f"task-{i}", "job_id": "job-1", "org_id": "org-default", "type": "t", "resource_id": r, "state": "queued", "progress": 0,
                 "payload": {}, "attempts": 0, "cancel_requested": False, "created_at": now}
                for i, r in enumerate(["r1", "r1", "r2"])
            ],
        )  # fmt: skip

    async def claim(owner: str) -> list[str]:
        async with store.write() as conn:
            rows = await job_q.claim_tasks(
                conn, owner=owner, limit=10, lease_until=now + 10, now=now, postgres=store.dialect == "postgresql"
            )
        return [r.id for r in rows]

    got = await asyncio.gather(claim("a"), claim("b"))
    flat = got[0] + got[1]
    # task-1 waits for task-0 (same resource); nothing is claimed twice
    assert sorted(flat) == ["task-0", "task-2"]
    async with store.write() as conn:
        job = await job_q.finish_task(
            conn, task_id="task-0", job_id="job-1", owner="a" if "task-0" in got[0] else "b", attempt=1,
            state=TaskState.SUCCEEDED, error=None, old_progress=0, now=now,
        )  # fmt: skip
    assert job is not None and job.n_succeeded == 1 and job.state == "running"
    assert await claim("c") == ["task-1"]


async def _one_task_job(store: Store, job_id: str = "job-f") -> None:
    """A job of one task (`<job_id>-task`) on a resource of its own."""
    now = clock.now()
    async with store.write() as conn:
        await job_q.insert_job(
            conn,
            {"id": job_id, "type": "t", "state": "queued", "org_id": "org-default", "created_by": "x", "total": 1, "n_succeeded": 0,
             "n_failed": 0, "n_cancelled": 0, "progress_sum": 0, "cancel_requested": False, "created_at": now, "updated_at": now},
            [{"id": f"{job_id}-task", "job_id": job_id, "org_id": "org-default", "type": "t", "resource_id": f"r-{job_id}", "state": "queued",
              "progress": 0, "payload": {}, "attempts": 0, "cancel_requested": False, "created_at": now}],
        )  # fmt: skip


async def _claim(store: Store, owner: str, lease: float = 10) -> list[Any]:
    now = clock.now()
    async with store.write() as conn:
        pg = store.dialect == "postgresql"
        return list(await job_q.claim_tasks(conn, owner=owner, limit=10, lease_until=now + lease, now=now, postgres=pg))


async def _orphan_and_reclaim(store: Store, owner: str) -> Any:
    """The first attempt's lease runs out and a recovering worker requeues the task; `owner`
    claims it again (a second attempt). Returns the task row as the first attempt left it."""
    (first,) = await _claim(store, "w-1", lease=-1)  # already expired
    async with store.write() as conn:
        (orphan,) = await job_q.expired_tasks(conn, now=clock.now())
        assert await job_q.requeue_task(conn, orphan, clock.now())
    (second,) = await _claim(store, owner)
    assert (first.attempts, second.attempts) == (1, 2)
    return first


@pytest.mark.parametrize("new_owner", ["w-1", "w-2"])  # the same process re-claiming it, or another
async def test_a_stale_attempt_can_neither_renew_progress_end_nor_requeue_its_task(store: Store, new_owner: str) -> None:
    """The fencing token is the attempt, not the owner: a lease owner can hold a later attempt
    of the task its stalled first attempt still runs."""
    await _one_task_job(store)
    first = await _orphan_and_reclaim(store, new_owner)
    tid, now = first.id, clock.now()
    async with store.write() as conn:
        renewal = await job_q.renew_leases(conn, owner="w-1", leases={tid: 1}, until=now + 60)
        assert renewal.lost == {tid} and renewal.cancel == set()
        assert not await job_q.set_progress(conn, task_id=tid, job_id="job-f", owner="w-1", attempt=1, old=0, new=50, now=now)
        assert await job_q.finish_task(
            conn, task_id=tid, job_id="job-f", owner="w-1", attempt=1, state=TaskState.SUCCEEDED, error=None, old_progress=0, now=now
        ) is None  # fmt: skip
        assert not await job_q.requeue_task(conn, first, now, handed_off=True)
        task = await job_q.get_task(conn, "job-f", tid)
        job = await job_q.get_job(conn, "job-f")
    # The second attempt's task is as it was claimed: nothing of the first attempt landed.
    assert (task.state, task.lease_owner, task.attempts, task.progress) == ("running", new_owner, 2, 0)
    assert task.lease_expires < now + 60 and (job.n_succeeded, job.progress_sum, job.state) == (0, 0, "running")
    # The holder of attempt 2 can do all of it.
    async with store.write() as conn:
        assert await job_q.renew_leases(conn, owner=new_owner, leases={tid: 2}, until=now + 60) == job_q.LeaseRenewal(set(), set())
        assert await job_q.set_progress(conn, task_id=tid, job_id="job-f", owner=new_owner, attempt=2, old=0, new=50, now=now)
        job = await job_q.finish_task(
            conn, task_id=tid, job_id="job-f", owner=new_owner, attempt=2, state=TaskState.SUCCEEDED, error=None, old_progress=50, now=now
        )  # fmt: skip
    assert job is not None and job.state == "succeeded" and job.n_succeeded == 1 and job.progress_sum == 100
    async with store.write() as conn:  # ended: its lease is gone for every attempt
        assert (await job_q.renew_leases(conn, owner=new_owner, leases={tid: 2}, until=now + 60)).lost == {tid}


async def test_renewal_reports_cancellations_and_losses_apart(store: Store) -> None:
    for j in ("job-a", "job-b", "job-c"):
        await _one_task_job(store, j)
    claimed = {r.job_id: r for r in await _claim(store, "w-1")}
    a, b, c = (claimed[j].id for j in ("job-a", "job-b", "job-c"))
    async with store.write() as conn:
        await job_q.cancel_job(conn, "job-a", clock.now())
        assert await job_q.finish_task(
            conn, task_id=c, job_id="job-c", owner="w-1", attempt=1, state=TaskState.FAILED, error="x", old_progress=0, now=clock.now()
        ) is not None  # fmt: skip
        renewal = await job_q.renew_leases(conn, owner="w-1", leases={a: 1, b: 1, c: 1}, until=clock.now() + 60)
        assert renewal == job_q.LeaseRenewal(cancel={a}, lost={c})
        assert (await job_q.renew_leases(conn, owner="w-2", leases={b: 1}, until=clock.now() + 60)).lost == {b}  # not w-2's


async def test_a_lease_renewed_after_it_was_seen_expired_is_not_requeued(store: Store) -> None:
    """A recovering worker compares the lease expiry it saw: the holder renewed it meanwhile
    (it was only slow), so the task stays with its holder instead of running twice."""
    await _one_task_job(store)
    (task,) = await _claim(store, "w-1", lease=-1)
    async with store.write() as conn:
        (orphan,) = await job_q.expired_tasks(conn, now=clock.now())
    async with store.write() as conn:
        assert not (await job_q.renew_leases(conn, owner="w-1", leases={task.id: 1}, until=clock.now() + 60)).lost
    async with store.write() as conn:
        assert not await job_q.requeue_task(conn, orphan, clock.now())
        row = await job_q.get_task(conn, "job-f", task.id)
    assert (row.state, row.lease_owner, row.attempts) == ("running", "w-1", 1)


async def test_keyset_pages_see_every_row_once(store: Store) -> None:
    async with store.write() as conn:
        await vm_q.insert_vms(conn, [vm_row(f"v{i}") for i in range(25)])
    seen: list[str] = []
    after = None
    while True:
        async with store.read() as conn:
            rows = await vm_q.list_vms(conn, after_seq=after, limit=10)
        if not rows:
            break
        seen += [r.name for r in rows]
        after = rows[-1].seq
        async with store.write() as conn:  # rows created meanwhile appear at the end
            await vm_q.insert_vms(conn, [vm_row(f"late{after}")]) if len(seen) < 40 else None
    assert len(seen) == len(set(seen))
    assert {f"v{i}" for i in range(25)} <= set(seen)


async def test_tag_filter_and_names_taken(store: Store) -> None:
    a, b = vm_row("a"), vm_row("b")
    b["tags"] = ["x", "y"]
    async with store.write() as conn:
        await vm_q.insert_vms(conn, [a, b])
        assert await vm_q.names_taken(conn, ["a", "c"], "org-default") == {"a"}
        assert await vm_q.names_taken(conn, ["a", "c"], "org-other") == set()  # names are per organization
        rows = await vm_q.list_vms(conn, tag="y", limit=10)
    assert [r.name for r in rows] == ["b"]


async def test_names_are_unique_per_organization(store: Store) -> None:
    """The same name in two organizations is two VMs; twice in one is refused by the key
    itself (whatever a service checked before), on both backends."""
    from sqlalchemy.exc import IntegrityError

    async with store.write() as conn:
        await vm_q.insert_vms(conn, [vm_row("same"), {**vm_row("same"), "org_id": "org-b"}])
    with pytest.raises(IntegrityError):
        async with store.write() as conn:
            await vm_q.insert_vms(conn, [vm_row("same")])
    async with store.read() as conn:
        assert len(await vm_q.list_vms(conn, name="same", limit=10)) == 2


async def test_idempotency_key_is_stored_once(store: Store) -> None:
    row = {"caller": "c", "key": "k", "request_hash": "h", "status_code": 202, "headers": [], "body": "{}", "created_at": clock.now()}
    async with store.write() as conn:
        assert await idem_q.remember(conn, row) is True
        assert await idem_q.remember(conn, {**row, "body": "other"}) is False
        found = await idem_q.lookup(conn, "c", "k")
    assert found.body == "{}"


async def test_a_write_cancelled_mid_statement_raises_cancelled(store: Store) -> None:
    """Cancelling a task inside a write (a worker stopping) must cancel it, not turn into an
    error its loop would catch and go on from (which hung shutdowns)."""
    from sqlalchemy import text

    slow = "SELECT pg_sleep(5)" if store.dialect == "postgresql" else "SELECT 1"

    async def write() -> None:
        async with store.write() as conn:
            await conn.execute(text(slow))
            await asyncio.sleep(5)

    task = asyncio.create_task(write())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with store.write() as conn:  # the store is fine afterwards
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1


async def test_a_database_out_of_reach_is_told_apart_from_a_refused_statement(store: Store) -> None:
    """A cut connection or a server that refuses connections is StoreUnavailable (503 to a
    client; a task's run stops as interrupted, see tests/unit/core/test_engine.py), a statement
    the database refuses is not. (PostgreSQL only: SQLite is a file, never out of reach.)"""
    if store.dialect != "postgresql":
        pytest.skip("SQLite has no server to lose")
    with pytest.raises(StoreUnavailable):  # the server ends this session mid-transaction (a restart, a failover)
        async with store.write() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
    with pytest.raises(DBAPIError) as refused:
        async with store.write() as conn:
            await conn.execute(text("SELECT no_such_column FROM vms"))
    assert not isinstance(refused.value, StoreUnavailable)
    async with store.read() as conn:  # the pool replaced the cut connection
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    gone = Store(store.url.rsplit("@", 1)[0] + "@127.0.0.1:1/nowhere")
    gone._engine = create_async_engine(gone.url)  # opened, then the server went away
    for block in (gone.read, gone.write):
        with pytest.raises(StoreUnavailable):
            async with block():
                pass
    await gone.close()


async def test_quota_usage_counts_what_vms_hold(store: Store) -> None:
    """A VM counts against its organization's quota while placed on a node or waiting to be
    (provisioning); on no node otherwise it holds nothing: a failed create (error), and the
    same VM while it is deleted (it was counted again then, after its quota had gone to
    another VM: 9 vCPUs under a limit of 8 in the chaos soak, bench/chaos.py)."""
    async with store.write() as conn:
        await node_q.upsert_node(conn, node_row("n1"))
        rows = []
        for name, status, node in (("placed", "running", "n1"), ("waiting", "provisioning", None), ("failed", "error", None),
                                   ("failed-deleted", "deleting", None), ("deleted-placed", "deleting", "n1")):  # fmt: skip
            rows.append({**vm_row(name), "status": status, "node_id": node, "cpu": 1})
        await vm_q.insert_vms(conn, rows)
    async with store.read() as conn:
        usage = await t_q.org_usage(conn, "org-default")
    assert (usage.vms, usage.cpu) == (3, 3)  # placed, waiting, and the placed one being deleted
