"""Jobs as users see them: list, details with tasks, a task with its log, cancel. A
team-scoped credential sees (and cancels) only its team's jobs and tasks.

Faces whose contract answers with an operation's outcome rather than a job wait for it here:
`wait` returns a `JobOutcome` (the job as the bounded wait left it, with its first task error),
and `finish` is the common case of waiting and raising that error when the job failed."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from ..auth import Principal
from ..domain import JOB_FINAL, JobState
from ..errors import DriverError, InvalidRequest, InvalidState, NotFound
from ..store import jobs as job_q
from ..store import metrics as metrics_q
from . import pages

if TYPE_CHECKING:
    from ..events.bus import EventBus
    from ..jobs.engine import JobEngine
    from ..store import Store


def _visible(row: Row[*tuple[Any, ...]], who: Principal) -> bool:
    """A job or task of another organization, or of another team for a team-scoped
    credential, does not exist as far as the caller can tell (404)."""
    return row.org_id == who.org_id and (who.team_id is None or row.team_id == who.team_id)


UNSUCCESSFUL = frozenset({JobState.FAILED, JobState.PARTIAL, JobState.CANCELLED})
"""the ends of a job in which some of its work was not done"""


@dataclass(frozen=True)
class JobOutcome:
    """A job as a bounded wait left it: ended, or still going when the wait ran out."""

    job: Row[*tuple[Any, ...]]
    tasks: Sequence[Row[*tuple[Any, ...]]]

    @property
    def state(self) -> JobState:
        return JobState(self.job.state)

    @property
    def ended(self) -> bool:
        return self.state in JOB_FINAL

    @property
    def failed(self) -> bool:
        """Every task failed (a job with some tasks done is `partial`, not failed)."""
        return self.state == JobState.FAILED

    @property
    def unsuccessful(self) -> bool:
        """It ended failed, partial or cancelled."""
        return self.state in UNSUCCESSFUL

    def error(self, default: str) -> str:
        """The first error among the job's tasks (in their order), else `default`."""
        return next((t.error for t in self.tasks if t.error), default)

    def raise_if_failed(self, what: str) -> None:
        """DriverError "`what` failed: <first task error>" when the job failed."""
        if self.failed:
            raise DriverError(f"{what} failed: {self.error('the job failed')}")


class JobService:
    def __init__(self, *, store: Store, engine: JobEngine, events: EventBus) -> None:
        self.store = store
        self.engine = engine
        self.events = events

    async def get(self, job_id: str, who: Principal) -> tuple[Row[*tuple[Any, ...]], Sequence[Row[*tuple[Any, ...]]]]:
        async with self.store.read() as conn:
            job = await job_q.get_job(conn, job_id)
            if job is None or not _visible(job, who):
                raise NotFound(f"job {job_id} does not exist")
            tasks = await job_q.job_tasks(conn, job_id)
        return job, tasks

    async def get_task(self, job_id: str, task_id: str, who: Principal) -> tuple[Row[*tuple[Any, ...]], Sequence[Row[*tuple[Any, ...]]]]:
        async with self.store.read() as conn:
            task = await job_q.get_task(conn, job_id, task_id)
            if task is None or not _visible(task, who):
                raise NotFound(f"task {task_id} of job {job_id} does not exist")
            log = await job_q.task_log(conn, task_id)
        return task, log

    async def list(
        self, who: Principal, *, state: str | None, type_: str | None, limit: int, page_token: str | None
    ) -> tuple[Sequence[Row[*tuple[Any, ...]]], str | None]:
        if state is not None and state not in JobState.__members__.values():
            raise InvalidRequest(f"state {state!r} is not one of {', '.join(JobState)}", field="state")
        after = pages.decode("jobs", page_token)
        async with self.store.read() as conn:
            rows = await job_q.list_jobs(conn, state=state, type_=type_, after_seq=after, limit=limit + 1, org_id=who.org_id, team_id=who.team_id)
        token = pages.encode("jobs", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token

    async def counts(self, who: Principal, type_: str) -> dict[str, int]:
        """How many of the organization's jobs of `type_` are in each state."""
        async with self.store.read() as conn:
            by = await metrics_q.jobs_by_type_state(conn, who.org_id, who.team_id)
        return {state: n for (t, state), n in by.items() if t == type_}

    async def wait(self, job_id: str, timeout: float) -> JobOutcome:
        """The job and its tasks once it has ended, or as they are after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        async with self.events.subscribe(types=("job.completed", "job.failed", "job.cancelled"), resource=job_id) as sub:
            while True:
                async with self.store.read() as conn:
                    job = await job_q.get_job(conn, job_id)
                    if job is None:
                        raise NotFound(f"job {job_id} does not exist")
                    left = deadline - time.monotonic()
                    if JobState(job.state) in JOB_FINAL or left <= 0:
                        return JobOutcome(job, await job_q.job_tasks(conn, job_id))
                await sub.get(timeout=min(left, 1.0))

    async def finish(self, job_id: str, timeout: float, what: str) -> JobOutcome:
        """Wait (bounded) for a job; DriverError "`what` failed: <first task error>" if it
        failed. A job still going when the wait runs out, partial or cancelled is returned."""
        outcome = await self.wait(job_id, timeout)
        outcome.raise_if_failed(what)
        return outcome

    async def cancel(self, job_id: str, who: Principal) -> None:
        job, _ = await self.get(job_id, who)
        if JobState(job.state) in JOB_FINAL:
            raise InvalidState(f"job {job_id} already ended ({job.state})", current=job.state)
        await self.engine.cancel(job_id)


