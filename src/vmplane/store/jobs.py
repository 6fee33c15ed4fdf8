"""SQL for jobs, tasks and task logs: submission, claiming with leases, completion, cancel.

Fencing: each claim of a task increments its `attempts`, and that number is the fencing token
of the run that claimed it. Every write a run makes to its task (renewal, progress, its end,
handing it back) matches (task id, lease owner, attempt, state running), so a run whose lease
passed to another worker, or to a later attempt of the same process, changes nothing.
"""

from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Float, Integer, Row, String, and_, bindparam, func, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import JobState, TaskState, job_final_state, job_progress
from . import events as ev_q
from .coordination import TASKS_CHANNEL, notify
from .tables import backups, jobs, snapshots, task_logs, tasks, vms

FINAL_EVENT = {"succeeded": "job.completed", "partial": "job.completed", "failed": "job.failed", "cancelled": "job.cancelled"}


def job_data(job: Row[*tuple[Any, ...]]) -> dict[str, Any]:
    return {
        "id": job.id,
        "type": job.type,
        "state": job.state,
        "progress": job_progress(job.total, job.progress_sum),
        "total": job.total,
        "succeeded": job.n_succeeded,
        "failed": job.n_failed,
        "cancelled": job.n_cancelled,
        "createdBy": job.created_by,
    }


def task_data(task: Row[*tuple[Any, ...]], state: str | None = None, error: str | None = None) -> dict[str, Any]:
    return {
        "id": task.id,
        "jobId": task.job_id,
        "type": task.type,
        "resourceId": task.resource_id,
        "state": state or task.state,
        "error": error if error is not None else task.error,
    }


async def _progress_event(conn: AsyncConnection, job: Row[*tuple[Any, ...]], delta: int) -> None:
    """Announce job progress each time it crosses a tenth (not on every task)."""
    if job.total == 0 or delta <= 0:
        return
    new = job.progress_sum * 10 // (job.total * 100)
    old = (job.progress_sum - delta) * 10 // (job.total * 100)
    if new > old and job.state == JobState.RUNNING.value:
        await ev_q.emit(conn, "job.progress", job.id, job_data(job), job.org_id, job.team_id)

ACTIVE = (TaskState.QUEUED.value, TaskState.RUNNING.value)


async def insert_job(conn: AsyncConnection, job: dict[str, Any], task_rows: list[dict[str, Any]]) -> None:
    """Record a job and its tasks. Tasks already `failed` (refused at submission, with their
    `error`) get that error as their log line and their `task.failed` event; a job that
    is final from the start (every task refused) gets its final event too."""
    await conn.execute(insert(jobs), [job])
    if task_rows:
        await conn.execute(insert(tasks), task_rows)
    data = {"id": job["id"], "type": job["type"], "state": job["state"], "progress": 0, "total": job["total"],
            "succeeded": 0, "failed": 0, "cancelled": 0, "createdBy": job["created_by"]}  # fmt: skip
    await ev_q.emit(conn, "job.submitted", job["id"], data, job["org_id"], job.get("team_id"))
    n_failed = sum(1 for t in task_rows if t.get("state") == TaskState.FAILED.value)
    if n_failed:
        q = select(tasks).where(tasks.c.job_id == job["id"], tasks.c.state == TaskState.FAILED.value).order_by(tasks.c.seq)
        failed = (await conn.execute(q)).all()
        await append_logs(conn, [{"task_id": t.id, "ts": t.finished_at, "message": f"Error: {t.error}"} for t in failed])
        row = (await conn.execute(select(jobs).where(jobs.c.id == job["id"]))).one()
        final = [(FINAL_EVENT[row.state], row.id, job_data(row), row.org_id, row.team_id)] if row.state in FINAL_EVENT else []
        await ev_q.emit_many(conn, [("task.failed", t.resource_id, task_data(t), t.org_id, t.team_id) for t in failed] + final)
    if n_failed < len(task_rows):
        await notify(conn, TASKS_CHANNEL)  # idle replicas claim at once, not at their next poll


async def teams_of(conn: AsyncConnection, resource_ids: Collection[str], org_id: str) -> dict[str, str | None]:
    """The team of each of these resources that is a VM, a snapshot or a backup of
    organization `org_id` (None: the whole organization's); resources of other kinds, or of
    other organizations, are left out."""
    out: dict[str, str | None] = {}
    wanted = list(set(resource_ids))
    for table in (vms, snapshots, backups):
        if len(out) == len(wanted):
            break
        q = select(table.c.id, table.c.team_id).where(table.c.id.in_([r for r in wanted if r not in out]), table.c.org_id == org_id)
        out.update({r.id: r.team_id for r in (await conn.execute(q)).all()})
    return out


async def get_job(conn: AsyncConnection, job_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()


async def list_jobs(
    conn: AsyncConnection, *, state: str | None, type_: str | None, after_seq: int | None, limit: int, org_id: str | None = None,
    team_id: str | None = None,
) -> Sequence[Row[*tuple[Any, ...]]]:
    """`team_id`: only that team's jobs (a team-scoped caller's)."""
    q = select(jobs)
    if org_id is not None:
        q = q.where(jobs.c.org_id == org_id)
    if team_id is not None:
        q = q.where(jobs.c.team_id == team_id)
    if state:
        q = q.where(jobs.c.state == state)
    if type_:
        q = q.where(jobs.c.type == type_)
    if after_seq is not None:
        q = q.where(jobs.c.seq < after_seq)
    q = q.order_by(jobs.c.seq.desc()).limit(limit)
    return (await conn.execute(q)).all()


async def job_tasks(conn: AsyncConnection, job_id: str) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(tasks).where(tasks.c.job_id == job_id).order_by(tasks.c.seq))).all()


async def get_task(conn: AsyncConnection, job_id: str, task_id: str) -> Row[*tuple[Any, ...]] | None:
    q = select(tasks).where(tasks.c.id == task_id, tasks.c.job_id == job_id)
    return (await conn.execute(q)).first()


async def task_log(conn: AsyncConnection, task_id: str) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(task_logs.c.ts, task_logs.c.message).where(task_logs.c.task_id == task_id).order_by(task_logs.c.seq)
    return (await conn.execute(q)).all()


_APPEND_LOGS = insert(task_logs)


async def append_logs(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(_APPEND_LOGS, rows)


async def active_task_for(conn: AsyncConnection, resource_ids: Sequence[str]) -> set[str]:
    """Which of these resources have a queued or running task."""
    if not resource_ids:
        return set()
    q = select(tasks.c.resource_id).where(tasks.c.resource_id.in_(resource_ids), tasks.c.state.in_(ACTIVE))
    return {r[0] for r in (await conn.execute(q)).all()}


async def claim_tasks(
    conn: AsyncConnection,
    *,
    owner: str,
    limit: int,
    lease_until: float,
    now: float,
    postgres: bool,
    not_on: Collection[str] = (),
) -> Sequence[Row[*tuple[Any, ...]]]:
    """Mark up to `limit` queued tasks as running under `owner`'s lease and return them.

    A task is runnable only when no earlier task on the same resource is queued or running,
    so the operations on one VM happen in the order they were asked for. Tasks whose VM or
    snapshot is on a node in `not_on` (nodes another replica serves) are left for others;
    so is a create that names such a node.
    """
    t2 = tasks.alias("t2")
    earlier = (
        select(t2.c.seq)
        .where(t2.c.resource_id == tasks.c.resource_id, t2.c.state.in_(ACTIVE), t2.c.seq < tasks.c.seq)
        .exists()
    )
    candidates = select(tasks.c.seq).where(tasks.c.state == TaskState.QUEUED.value, ~earlier)
    if not_on:
        elsewhere = list(not_on)
        vm_elsewhere = (
            select(vms.c.id)
            .where(vms.c.id == tasks.c.resource_id, func.coalesce(vms.c.node_id, vms.c.spec["nodeId"].as_string()).in_(elsewhere))
            .exists()
        )
        snap_elsewhere = select(snapshots.c.id).where(snapshots.c.id == tasks.c.resource_id, snapshots.c.node_id.in_(elsewhere)).exists()
        candidates = candidates.where(~vm_elsewhere, ~snap_elsewhere)
    candidates = candidates.order_by(tasks.c.seq).limit(limit)
    if postgres:
        # Picked once, in a materialized CTE: as `seq IN (subquery)` PostgreSQL may rescan the
        # LIMITed subquery per row and claim far more than `limit` (measured: 50 for 8).
        picked = candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        which = tasks.c.seq == picked.c.seq
    else:
        which = tasks.c.seq.in_(candidates.scalar_subquery())
    stmt = (
        update(tasks)
        .where(which, tasks.c.state == TaskState.QUEUED.value)
        .values(
            state=TaskState.RUNNING.value,
            lease_owner=owner,
            lease_expires=lease_until,
            attempts=tasks.c.attempts + 1,
            started_at=func.coalesce(tasks.c.started_at, now),
        )
        .returning(*tasks.c)
    )
    claimed = sorted((await conn.execute(stmt)).all(), key=lambda r: r.seq)
    job_ids = sorted({r.job_id for r in claimed})
    if job_ids:
        started = (
            await conn.execute(
                update(jobs)
                .where(jobs.c.id.in_(job_ids), jobs.c.state == JobState.QUEUED.value)
                .values(state=JobState.RUNNING.value, started_at=now, updated_at=now)
                .returning(*jobs.c)
            )
        ).all()
        await ev_q.emit_many(
            conn,
            [("job.started", j.id, job_data(j), j.org_id, j.team_id) for j in started]
            + [("task.started", t.resource_id, task_data(t), t.org_id, t.team_id) for t in claimed],
        )
    return claimed


class LeaseRenewal(NamedTuple):
    cancel: set[str]
    """tasks (among those renewed) whose cancellation was asked"""
    lost: set[str]
    """tasks the caller no longer holds: another worker or a later attempt has them, or they ended"""


def _held(owner: str, leases: Mapping[str, int]) -> Any:
    """The rows of `leases` ({task id: attempt}) that `owner` still runs under that attempt."""
    return and_(
        tasks.c.id.in_(list(leases)),  # the primary key narrows first; the pairs then filter
        tuple_(tasks.c.id, tasks.c.attempts).in_(list(leases.items())),
        tasks.c.lease_owner == owner,
        tasks.c.state == TaskState.RUNNING.value,
    )


async def renew_leases(conn: AsyncConnection, *, owner: str, leases: Mapping[str, int], until: float) -> LeaseRenewal:
    """Extend `owner`'s leases on `leases` ({task id: attempt}) to `until`; reports which of
    them were asked to cancel and which were lost (a lapsed lease that nobody took yet is
    renewed: requeueing compares the expiry it saw, so it cannot take a lease renewed since)."""
    if not leases:
        return LeaseRenewal(set(), set())
    rows = (
        await conn.execute(
            update(tasks).where(_held(owner, leases)).values(lease_expires=until).returning(tasks.c.id, tasks.c.cancel_requested)
        )
    ).all()
    return LeaseRenewal({r.id for r in rows if r.cancel_requested}, set(leases) - {r.id for r in rows})


async def set_progress(
    conn: AsyncConnection, *, task_id: str, job_id: str, owner: str, attempt: int, old: int, new: int, now: float
) -> bool:
    """Record a running task's progress; False (and nothing written) if `owner`'s `attempt`
    no longer holds the task."""
    res = await conn.execute(
        update(tasks)
        .where(
            tasks.c.id == task_id,
            tasks.c.lease_owner == owner,
            tasks.c.attempts == attempt,
            tasks.c.state == TaskState.RUNNING.value,
        )
        .values(progress=new)
    )
    if res.rowcount != 1:
        return False
    job = (
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id)
            .values(progress_sum=jobs.c.progress_sum + (new - old), updated_at=now)
            .returning(*jobs.c)
        )
    ).one()
    await _progress_event(conn, job, new - old)
    return True


# The statements a task's end runs are built once, their values bound at execution: a bulk
# create ends thousands of tasks, and building each statement cost more than running it.
_COUNT_FINAL = {
    state: update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(
        {
            column: jobs.c[column] + bindparam("n", type_=Integer),
            "progress_sum": jobs.c.progress_sum + bindparam("delta", type_=Integer),
            "updated_at": bindparam("now", type_=Float),
        }
    )
    .returning(*jobs.c)
    for state, column in ((TaskState.SUCCEEDED, "n_succeeded"), (TaskState.FAILED, "n_failed"), (TaskState.CANCELLED, "n_cancelled"))
}
_JOB_ENDS = (
    update(jobs)
    .where(jobs.c.id == bindparam("job_id"))
    .values(state=bindparam("final", type_=String), finished_at=bindparam("now", type_=Float))
    .returning(*jobs.c)
)


async def _count_final(conn: AsyncConnection, job_id: str, state: TaskState, n: int, progress_delta: int, now: float) -> Row[*tuple[Any, ...]]:
    job = (await conn.execute(_COUNT_FINAL[state], {"job_id": job_id, "n": n, "delta": progress_delta, "now": now})).one()
    final = job_final_state(job.total, job.n_succeeded, job.n_failed, job.n_cancelled)
    if final is not None and job.state != final.value:
        job = (await conn.execute(_JOB_ENDS, {"job_id": job_id, "final": final.value, "now": now})).one()
        await ev_q.emit(conn, FINAL_EVENT[final.value], job.id, job_data(job), job.org_id, job.team_id)
    else:
        await _progress_event(conn, job, progress_delta)
    return job


async def finish_task(
    conn: AsyncConnection,
    *,
    task_id: str,
    job_id: str,
    owner: str,
    attempt: int,
    state: TaskState,
    error: str | None,
    old_progress: int,
    now: float,
) -> Row[*tuple[Any, ...]] | None:
    """Record a running task's end. Returns the job row, or None if `owner`'s `attempt` no
    longer holds the task (nothing is written then)."""
    ended = await finish_tasks(conn, owner=owner, ends=[TaskEnd(task_id, job_id, state, error, old_progress, attempt)], now=now)
    return ended.get(task_id)


class TaskEnd(NamedTuple):
    task_id: str
    job_id: str
    state: TaskState
    error: str | None
    old_progress: int
    attempt: int
    """the fencing token: the attempt that claimed the task (its `attempts` then)"""


_FINISH_TASK = (
    update(tasks)
    .where(
        tasks.c.id == bindparam("task_id"),
        tasks.c.lease_owner == bindparam("owner"),
        tasks.c.attempts == bindparam("attempt"),
        tasks.c.state == TaskState.RUNNING.value,
    )
    .values(
        state=bindparam("end", type_=String),
        error=bindparam("error", type_=String),
        progress=100,
        finished_at=bindparam("now", type_=Float),
        lease_owner=None,
        lease_expires=None,
    )
    .returning(*tasks.c)
)


async def finish_tasks(conn: AsyncConnection, *, owner: str, ends: Sequence[TaskEnd], now: float) -> dict[str, Row[*tuple[Any, ...]]]:
    """Record the ends of running tasks (of any jobs) in one transaction: {task id: its job
    row after} for those `owner` still held under the attempt each end names (the others
    are left as they are: a later attempt or another worker owns them).

    Each job's row is updated once for all its tasks here: under a bulk job's stream of
    ending tasks that row is the hottest in the store. Task rows are locked first (in id
    order, as lease renewals lock them), then job rows in id order: no deadlock.
    """
    counts: dict[tuple[str, TaskState], list[int]] = {}
    finished: dict[str, str] = {}
    for end in sorted(ends, key=lambda e: e.task_id):
        params = {"task_id": end.task_id, "owner": owner, "attempt": end.attempt, "end": end.state.value, "error": end.error, "now": now}
        task = (await conn.execute(_FINISH_TASK, params)).first()
        if task is None:
            continue
        await ev_q.emit(conn, f"task.{end.state.value}", task.resource_id, task_data(task), task.org_id, task.team_id)
        n_delta = counts.setdefault((end.job_id, end.state), [0, 0])
        n_delta[0] += 1
        n_delta[1] += 100 - end.old_progress
        finished[end.task_id] = end.job_id
    job_rows: dict[str, Row[*tuple[Any, ...]]] = {}
    for (job_id, state), (n, delta) in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value)):
        job_rows[job_id] = await _count_final(conn, job_id, state, n, delta, now)
    return {task_id: job_rows[job_id] for task_id, job_id in finished.items()}


async def cancel_job(conn: AsyncConnection, job_id: str, now: float) -> list[Row[*tuple[Any, ...]]]:
    """Cancel a job's queued tasks and flag its running ones; returns the tasks cancelled here.

    Task rows are locked before the job row, the order every other writer uses."""
    queued = (
        await conn.execute(
            update(tasks)
            .where(tasks.c.job_id == job_id, tasks.c.state == TaskState.QUEUED.value)
            .values(state=TaskState.CANCELLED.value, error="cancelled before it started", progress=100, finished_at=now)
            .returning(*tasks.c)
        )
    ).all()
    await conn.execute(
        update(tasks)
        .where(tasks.c.job_id == job_id, tasks.c.state == TaskState.RUNNING.value)
        .values(cancel_requested=True)
    )
    await conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=True, updated_at=now))
    if queued:
        await ev_q.emit_many(conn, [("task.cancelled", t.resource_id, task_data(t), t.org_id, t.team_id) for t in queued])
        await _count_final(conn, job_id, TaskState.CANCELLED, len(queued), 100 * len(queued), now)
    return list(queued)


async def expired_tasks(conn: AsyncConnection, *, now: float, any_owner_but: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    """Running tasks whose lease has run out (or, with `any_owner_but`, held by anyone else).
    On PostgreSQL they are locked here, in id order, the order every statement that updates
    several tasks locks them in (an index scan of `id IN (…)` visits the ids sorted;
    finish_tasks sorts its ends): a recovery taking them one by one in another order
    deadlocked with a replica renewing the same leases."""
    cond = tasks.c.lease_expires < now
    if any_owner_but is not None:
        cond = cond | (tasks.c.lease_owner != any_owner_but)
    q = select(tasks).where(tasks.c.state == TaskState.RUNNING.value, cond).order_by(tasks.c.id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return (await conn.execute(q)).all()


async def requeue_task(conn: AsyncConnection, task: Row[*tuple[Any, ...]], now: float, *, handed_off: bool = False) -> bool:
    """Put a running task back in the queue so a worker resumes it: an orphan (its lease ran
    out) or one its worker hands back. `task` is the row as the caller saw it: nothing happens
    unless the task is still that attempt under that owner with that expiry (a worker that
    renewed its lease meanwhile keeps it). `handed_off`: the worker gave it to another replica
    on purpose; that attempt does not count."""
    values: dict[str, Any] = {"state": TaskState.QUEUED.value, "lease_owner": None, "lease_expires": None, "progress": 0}
    if handed_off:
        values["attempts"] = tasks.c.attempts - 1
    res = await conn.execute(
        update(tasks)
        .where(
            tasks.c.id == task.id,
            tasks.c.state == TaskState.RUNNING.value,
            tasks.c.lease_owner == task.lease_owner,
            tasks.c.attempts == task.attempts,
            tasks.c.lease_expires == task.lease_expires,
        )
        .values(**values)
    )
    if res.rowcount != 1:
        return False
    await notify(conn, TASKS_CHANNEL)
    await conn.execute(
        update(jobs).where(jobs.c.id == task.job_id).values(progress_sum=jobs.c.progress_sum - task.progress, updated_at=now)
    )
    return True


async def count_by_state(conn: AsyncConnection) -> dict[str, int]:
    q = select(tasks.c.state, func.count()).group_by(tasks.c.state)
    return {r[0]: r[1] for r in (await conn.execute(q)).all()}
