"""Job engine: persisted jobs, tasks claimed with leases, heartbeats, crash recovery, cancel.

Life of a task: `queued` → claimed by a worker (lease) → handler `run(ctx)` → `succeeded`,
`failed` or `cancelled`. A worker renews its leases while it works; a task whose lease runs
out (its worker died) goes back to the queue and is resumed by running the handler again,
which is why handlers are idempotent. After `max_task_attempts` the task fails instead.

Each claim is a new attempt, and its number is the run's fencing token: the store takes the
run's progress, its end or its hand-back only while (task, owner, attempt, running) still
holds, and the run's driver calls first check that it does (`fencing`). A worker that finds it
lost a lease (renewal reports it, or a fenced call or write is refused) stops that run at once,
without its rollback and without recording an end: the task belongs to its new holder.
"""

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..aio import wait_event
from ..auth import Principal, origin
from ..config import Settings
from ..domain import JobState, TaskState, job_final_state
from ..drivers.base import CallOrder
from ..errors import VmplaneError
from ..store import Store, StoreUnavailable
from ..store import jobs as q
from .deps import HandlerDeps
from .fencing import LeaseLost, current

log = logging.getLogger("vmplane.jobs")


class _Refused(Exception):
    """The store refused ends whose runs deferred changes (their leases were lost)."""

    def __init__(self, task_ids: frozenset[str]) -> None:
        self.task_ids = task_ids


class HandOff(Exception):
    """Raised by a handler whose task must run in another replica (the one serving the node
    the work landed on): the task goes back to the queue, and this attempt does not count."""


class TaskContext:
    """What a handler sees: its task, progress and log reporting, and the collaborators it
    works with (`deps`)."""

    def __init__(self, engine: "JobEngine", row: Row[Any], deps: HandlerDeps) -> None:
        self._engine = engine
        self.task_id: str = row.id
        self.job_id: str = row.job_id
        self.type: str = row.type
        self.resource_id: str = row.resource_id
        self.payload: dict[str, Any] = dict(row.payload or {})
        self.attempt: int = row.attempts
        self.seq: int = row.seq
        self._calls = 0
        self.progress_value: int = row.progress
        self.persisted_progress: int = row.progress
        self.cancel_requested = False
        self.lost = False
        """this run lost its lease (to another worker or a later attempt): it may not act"""
        self.ended = False
        """the run is over (its end or hand-back is being recorded)"""
        self.sure_until = 0.0
        """monotonic time until which the lease is surely held, as far as renewals know"""
        self._logs: list[dict[str, Any]] = []
        self._persisted_at = clock.now()
        self.deferred: list[Callable[[AsyncConnection], Awaitable[None]]] = []
        self.deps = deps

    @property
    def resumed(self) -> bool:
        """True when an earlier attempt was interrupted (the handler must pick up from there)."""
        return self.attempt > 1

    async def fence(self) -> None:
        """Return if this run still holds its task's lease, else raise LeaseLost. Free while
        the last renewal is recent; otherwise one store round trip, which renews the lease."""
        if self.lost:
            raise LeaseLost(f"task {self.task_id}: attempt {self.attempt} lost its lease")
        if self.ended or time.monotonic() < self.sure_until:
            return
        await self._engine.confirm_lease(self)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A store transaction that commits only while this run holds its task: its first
        statement renews the lease (LeaseLost, and nothing written, when another attempt or
        worker has the task), and the task's row stays locked until the commit, so the task
        cannot be taken over in between. For the writes a stale run must never repeat after
        its successor: claims moved or released (a delete's release done twice left a node's
        claims short of what it held, and the node over its capacity: the chaos soak)."""
        async with self._engine.store.write() as conn:
            await self._engine.hold(self, conn)
            yield conn

    def next_call(self) -> CallOrder:
        self._calls += 1
        return CallOrder(self.seq, self.attempt, self._calls, self.resource_id)

    def log(self, message: str) -> None:
        """Add a line to the task's log (written with the next progress report or at the end)."""
        self._logs.append({"task_id": self.task_id, "ts": clock.now(), "message": message})

    async def progress(self, percent: int, message: str | None = None) -> None:
        """Report progress (0–100); the job's progress is the mean of its tasks'.

        Progress and log lines reach the store at most once a second per task (and at the
        end), so quick tasks cost no extra writes and long ones still show movement.
        """
        if message:
            self.log(message)
        self.progress_value = max(self.progress_value, min(99, int(percent)))
        now = clock.now()
        if now - self._persisted_at < self._engine.PROGRESS_INTERVAL:
            return
        self._persisted_at = now
        logs, self._logs = self._logs, []
        async with self._engine.store.write() as conn:
            await q.append_logs(conn, logs)
            if self.progress_value != self.persisted_progress:
                ok = await q.set_progress(
                    conn,
                    task_id=self.task_id,
                    job_id=self.job_id,
                    owner=self._engine.owner,
                    attempt=self.attempt,
                    old=self.persisted_progress,
                    new=self.progress_value,
                    now=now,
                )
                if not ok:
                    self._engine._lose(self, None)
                    raise LeaseLost(f"task {self.task_id}: attempt {self.attempt} lost its lease")
                self.persisted_progress = self.progress_value

    def defer(self, write: Callable[[AsyncConnection], Awaitable[None]]) -> None:
        """Run `write(conn)` in the transaction that records the task's success (one commit
        for the handler's last change and the task's end)."""
        self.deferred.append(write)

    def take_logs(self) -> list[dict[str, Any]]:
        logs, self._logs = self._logs, []
        return logs


class Handler(Protocol):
    """One operation. `run` must be idempotent: after a crash it runs again from the start."""

    async def run(self, ctx: TaskContext) -> None: ...

    async def rollback(self, ctx: TaskContext, error: str, cancelled: bool) -> None:
        """Undo what a failed or cancelled `run` left half-done."""

    async def discard(self, conn: AsyncConnection, task: Row[Any]) -> None:
        """The task was cancelled before it started (inside the cancel transaction)."""


class JobEngine:
    PROGRESS_INTERVAL = 1.0
    END_BATCH = 64
    SURE_FRACTION = 2 / 3
    """A lease renewed at monotonic time t is taken as surely held until t + this fraction of
    `lease_seconds`: the rest covers clock skew between replicas and a call under way. Renewals
    come every third of a lease, so a busy worker's fences normally cost no round trip."""

    def __init__(self, store: Store, settings: Settings, handlers: dict[str, Handler]) -> None:
        """Jobs can be submitted and cancelled from here on; tasks run once `start(deps)`."""
        self.store = store
        self.settings = settings
        self.handlers = handlers
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{ids.new_id('w')}"
        self._wakeup = asyncio.Event()
        self._running: dict[str, tuple[asyncio.Task[None], TaskContext]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = False
        self._ending: list[tuple[TaskContext, TaskState, str | None, list[dict[str, Any]], asyncio.Future[None]]] = []
        self._writing_ends = False
        self.not_here: Callable[[], Collection[str]] = lambda: ()
        """Nodes whose tasks this process must not claim (another replica serves them)."""

    # -- submission --------------------------------------------------------------------

    async def submit(
        self,
        conn: AsyncConnection,
        job_type: str,
        who: Principal,
        items: list[tuple[str, dict[str, Any]]],
        task_type: str | None = None,
        refused: Mapping[str, str] | None = None,
    ) -> str:
        """Persist a job with one task per (resource_id, payload), inside the caller's transaction.

        `refused`: {resource_id: error} of items the service judged at submission (a bulk
        delete naming a resource the caller cannot see; a power action in the wrong state,
        for faces whose contract answers a refusal with a task that fails): their tasks are
        recorded failed with that error and never run, so the job ends `partial`, or
        `failed` at once when every task is refused. A refused task of a team-scoped caller
        is in the caller's team, never that of a resource the id may name elsewhere.

        Call `wakeup()` once the transaction has committed.
        """
        now = clock.now()
        came_from = origin(who)
        job_id = ids.new_id("job")
        refused = refused or {}
        # each task carries the team of the VM, snapshot or backup of the caller's
        # organization it acts on (other resources: the caller's team); the job, its tasks'
        # team when they share one
        found = await q.teams_of(conn, [r for r, _ in items], who.org_id)
        teams = [found[r] if r in found and (r not in refused or who.team_id is None) else who.team_id for r, _ in items]
        job_team = teams[0] if teams and len(set(teams)) == 1 else (who.team_id if not teams else None)
        n_refused = sum(1 for r, _ in items if r in refused)
        final = job_final_state(len(items), 0, n_refused, 0) if n_refused else None
        job = {
            "id": job_id,
            "type": job_type,
            "state": (final or JobState.QUEUED).value,
            "org_id": who.org_id,
            "team_id": job_team,
            "created_by": who.user_name,
            "total": len(items),
            "n_succeeded": 0,
            "n_failed": n_refused,
            "n_cancelled": 0,
            "progress_sum": 100 * n_refused,
            "cancel_requested": False,
            "created_at": now,
            "updated_at": now,
            "started_at": now if final else None,
            "finished_at": now if final else None,
            "origin": came_from or None,
        }
        rows = [
            {
                "id": ids.new_id("task"),
                "job_id": job_id,
                "org_id": who.org_id,
                "team_id": team,
                "type": task_type or job_type,
                "resource_id": resource_id,
                "payload": payload,
                "attempts": 0,
                "cancel_requested": False,
                "created_at": now,
                # every row has the same keys (one executemany)
                **(
                    {"state": TaskState.FAILED.value, "progress": 100, "error": refused[resource_id], "started_at": now, "finished_at": now}
                    if resource_id in refused
                    else {"state": TaskState.QUEUED.value, "progress": 0, "error": None, "started_at": None, "finished_at": None}
                ),
            }
            for (resource_id, payload), team in zip(items, teams)
        ]
        await q.insert_job(conn, job, rows)
        return job_id

    def wakeup(self) -> None:
        self._wakeup.set()

    async def cancel(self, job_id: str) -> None:
        """Cancel queued tasks now; ask running ones (here or on another worker) to stop."""
        async with self.store.write() as conn:
            cancelled = await q.cancel_job(conn, job_id, clock.now())
            for task in cancelled:
                await self.handlers[task.type].discard(conn, task)
        for task_id, (atask, ctx) in list(self._running.items()):
            if ctx.job_id == job_id:
                ctx.cancel_requested = True
                atask.cancel()

    # -- running -----------------------------------------------------------------------

    async def start(self, deps: HandlerDeps) -> None:
        """Run tasks, with `deps` for their handlers (the services that queue the work exist
        before the engine runs any of it, and handlers call some of them)."""
        await self.recover(startup=True)
        self._loops = [
            asyncio.create_task(self._claim_loop(deps), name="jobs-claim"),
            asyncio.create_task(self._lease_loop(), name="jobs-lease"),
        ]

    async def stop(self) -> None:
        """Stop claiming; interrupt running tasks and hand them back to the queue."""
        self._stopping = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        running = list(self._running.values())
        for atask, _ in running:
            atask.cancel()
        await asyncio.gather(*(t for t, _ in running), return_exceptions=True)

    async def recover(self, startup: bool = False) -> None:
        """Requeue tasks whose worker is gone. On SQLite (one process) every running task at
        start-up is an orphan; on PostgreSQL only those whose lease ran out."""
        now = clock.now()
        async with self.store.write() as conn:
            other = self.owner if startup and self.store.dialect == "sqlite" else None
            orphans = await q.expired_tasks(conn, now=now, any_owner_but=other)
            # A task this worker is still running is not an orphan, even if a busy loop let its
            # lease lapse: requeueing it would run it twice.
            running = {task_id: ctx.attempt for task_id, (_, ctx) in self._running.items()}
            mine = [t for t in orphans if t.lease_owner == self.owner and running.get(t.id) == t.attempts]
            if mine:
                until = now + self.settings.lease_seconds
                await q.renew_leases(conn, owner=self.owner, leases={t.id: t.attempts for t in mine}, until=until)
            requeued = [t for t in orphans if t not in mine and await q.requeue_task(conn, t, now)]
        if requeued:
            log.warning("requeued %d interrupted task(s): %s", len(requeued), ", ".join(t.id for t in requeued[:10]))
            self.wakeup()

    async def _claim_loop(self, deps: HandlerDeps) -> None:
        batch = max(1, self.settings.job_concurrency // 8)
        while not self._stopping:
            free = self.settings.job_concurrency - len(self._running)
            claimed: list[Row[Any]] = []
            # Claim in batches: one claim per finished task would cost a transaction each.
            if free >= batch or (free > 0 and len(self._running) < batch):
                try:
                    now, mono = clock.now(), time.monotonic()
                    async with self.store.write() as conn:
                        claimed = list(
                            await q.claim_tasks(
                                conn,
                                owner=self.owner,
                                limit=free,
                                lease_until=now + self.settings.lease_seconds,
                                now=now,
                                postgres=self.store.dialect == "postgresql",
                                not_on=self.not_here(),
                            )
                        )
                except Exception:  # the store may be briefly unavailable; try again shortly
                    log.exception("claiming tasks failed")
                    await asyncio.sleep(1)
                    continue
                for row in claimed:
                    ctx = TaskContext(self, row, deps)
                    ctx.sure_until = mono + self.settings.lease_seconds * self.SURE_FRACTION
                    stale = self._running.get(row.id)
                    if stale is not None:  # an earlier attempt of ours stalled and lost the task
                        self._lose(stale[1], stale[0])
                    atask = asyncio.create_task(self._execute(ctx), name=f"task {row.id}")
                    self._running[row.id] = (atask, ctx)
            if claimed and len(claimed) == free:
                continue  # there may be more
            self._wakeup.clear()
            await wait_event(self._wakeup, 0.5)

    async def _lease_loop(self) -> None:
        interval = max(0.05, self.settings.lease_seconds / 3)
        while not self._stopping:
            await asyncio.sleep(interval)
            try:
                leases = {task_id: ctx.attempt for task_id, (_, ctx) in self._running.items()}
                now, mono = clock.now(), time.monotonic()
                async with self.store.write() as conn:
                    renewal = await q.renew_leases(conn, owner=self.owner, leases=leases, until=now + self.settings.lease_seconds)
                for task_id, attempt in leases.items():
                    entry = self._running.get(task_id)
                    if entry is None or entry[1].attempt != attempt:
                        continue
                    atask, ctx = entry
                    if task_id in renewal.lost:
                        if not ctx.ended:  # an ended run's lease is gone because its end was recorded
                            self._lose(ctx, atask)
                        continue
                    ctx.sure_until = max(ctx.sure_until, mono + self.settings.lease_seconds * self.SURE_FRACTION)
                    if task_id in renewal.cancel and not ctx.cancel_requested:
                        ctx.cancel_requested = True
                        atask.cancel()
                await self.recover()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("renewing leases failed")

    def _lose(self, ctx: TaskContext, atask: "asyncio.Task[None] | None") -> None:
        """This run lost its task's lease: stop it now (no rollback, no end recorded)."""
        if not ctx.lost:
            ctx.lost = True
            log.warning(
                "task %s (%s): attempt %d lost its lease (another worker or a later attempt holds the task); stopping it",
                ctx.task_id, ctx.type, ctx.attempt,
            )  # fmt: skip
        if atask is not None and not atask.done():
            atask.cancel()

    async def hold(self, ctx: TaskContext, conn: AsyncConnection) -> None:
        """In `conn`'s transaction: renew `ctx`'s lease, which locks its task's row until the
        transaction ends; LeaseLost if the run no longer holds it."""
        if ctx.lost:
            raise LeaseLost(f"task {ctx.task_id}: attempt {ctx.attempt} lost its lease")
        mono = time.monotonic()
        renewal = await q.renew_leases(conn, owner=self.owner, leases={ctx.task_id: ctx.attempt}, until=clock.now() + self.settings.lease_seconds)
        if renewal.lost:
            self._lose(ctx, None)  # the caller is the run itself: LeaseLost stops it
            raise LeaseLost(f"task {ctx.task_id}: attempt {ctx.attempt} lost its lease")
        ctx.sure_until = max(ctx.sure_until, mono + self.settings.lease_seconds * self.SURE_FRACTION)

    async def confirm_lease(self, ctx: TaskContext) -> None:
        """Ask the store whether `ctx`'s run still holds its lease (renewing it if so); raise
        LeaseLost if not."""
        async with self.store.write() as conn:
            await self.hold(ctx, conn)

    async def _execute(self, ctx: TaskContext) -> None:
        handler = self.handlers[ctx.type]
        current.set(ctx)  # drivers from the registry are fenced by this run (this asyncio task only)
        state, error = TaskState.SUCCEEDED, None
        try:
            try:
                try:
                    if ctx.attempt > self.settings.max_task_attempts:
                        raise VmplaneError(f"interrupted {ctx.attempt - 1} times; giving up")
                    if ctx.resumed:
                        ctx.log(f"resuming after an interruption (attempt {ctx.attempt})")
                    await handler.run(ctx)
                except HandOff as exc:
                    ctx.log(f"handed over to another replica: {exc}")
                    ctx.ended = True
                    await asyncio.shield(self._release(ctx, handed_off=True))
                    return
                except asyncio.CancelledError:
                    if ctx.lost:
                        raise LeaseLost() from None
                    if not ctx.cancel_requested:
                        raise  # the engine is stopping: leave the task for another worker
                    state, error = TaskState.CANCELLED, "cancelled"
                    ctx.log("cancelled while running")
                    await asyncio.shield(self._rollback(handler, ctx, error, True))
                except StoreUnavailable as exc:
                    # Not the task's failure: the store is out of reach (a PostgreSQL restart),
                    # so neither an end nor a rollback could be recorded, and undoing on a node
                    # what the run did there would leave the store describing work that is gone.
                    # Stop as an interrupted run: the lease runs out and a later attempt resumes
                    # (handlers are idempotent).
                    log.warning("task %s: attempt %d stopped, the store is out of reach: %s", ctx.task_id, ctx.attempt, exc.message)
                    raise LeaseLost() from exc
                except Exception as exc:
                    if ctx.lost:
                        raise LeaseLost() from exc
                    # A run that failed after losing its lease, before it heard so, must not roll
                    # back: the task is its new holder's, and the rollback's writes would undo the
                    # holder's work (a stale create's rollback unplaced a VM the next attempt had
                    # made: it was left on its node, orphaned; found by the chaos soak).
                    try:
                        await self.confirm_lease(ctx)
                    except StoreUnavailable as gone:
                        raise LeaseLost() from gone
                    state = TaskState.FAILED
                    if isinstance(exc, VmplaneError):
                        error = exc.message
                    else:
                        log.exception("task %s (%s) failed unexpectedly", ctx.task_id, ctx.type)
                        error = f"internal error: {exc!r}"
                    ctx.log(f"Error: {error}")
                    await asyncio.shield(self._rollback(handler, ctx, error, False))
                else:
                    ctx.log("Done")
                if ctx.lost:
                    raise LeaseLost()
                ctx.ended = True
                try:
                    await asyncio.shield(self._finish(ctx, state, error))
                except StoreUnavailable as exc:  # the end is not recorded: a later attempt redoes the (idempotent) run
                    log.warning(
                        "task %s: attempt %d could not record its end, the store is out of reach: %s", ctx.task_id, ctx.attempt, exc.message
                    )
                    raise LeaseLost() from exc
            except LeaseLost:
                # The task is its new holder's: this run undoes nothing and records no end.
                self._lose(ctx, None)
                log.warning("task %s: attempt %d stopped; nothing of it was recorded", ctx.task_id, ctx.attempt)
        except asyncio.CancelledError:
            if self._stopping and not ctx.lost:
                await asyncio.shield(self._release(ctx))
            elif not ctx.lost:
                raise
        finally:
            entry = self._running.get(ctx.task_id)
            if entry is not None and entry[1] is ctx:  # not a later attempt of the same task
                del self._running[ctx.task_id]
            self.wakeup()

    async def _rollback(self, handler: Handler, ctx: TaskContext, error: str, cancelled: bool) -> None:
        try:
            await handler.rollback(ctx, error, cancelled)
        except StoreUnavailable as exc:
            # A clean-up the store cannot record is not done: the run stops as an interrupted
            # one, with no end, and a later attempt fails and cleans up again. Ending the task
            # here left a failed create's VM placed on a node that never had it, holding its
            # claim (found by the chaos soak, bench/chaos.py).
            log.warning("task %s: attempt %d stopped in its clean-up, the store is out of reach: %s", ctx.task_id, ctx.attempt, exc.message)
            raise LeaseLost() from exc
        except Exception:
            log.exception("rollback of task %s failed", ctx.task_id)
            ctx.log("Error: rollback failed; see the server log")

    async def _finish(self, ctx: TaskContext, state: TaskState, error: str | None) -> None:
        """Record the task's end. Ends are committed in groups: while one transaction writes,
        the tasks ending meanwhile queue up and the next one writes them all (one update of
        each job's row, one commit), instead of a transaction each contending for that row."""
        done = asyncio.get_running_loop().create_future()
        self._ending.append((ctx, state, error, ctx.take_logs(), done))
        if not self._writing_ends:
            self._writing_ends = True
            try:
                while self._ending:
                    batch, self._ending = self._ending[: self.END_BATCH], self._ending[self.END_BATCH :]
                    await self._write_ends(batch)
            finally:
                self._writing_ends = False
        await done

    async def _write_ends(
        self,
        batch: list[tuple[TaskContext, TaskState, str | None, list[dict[str, Any]], "asyncio.Future[None]"]],
        refused: frozenset[str] = frozenset(),
    ) -> None:
        now = clock.now()
        try:
            async with self.store.write() as conn:
                await q.append_logs(conn, [line for _, _, _, logs, _ in batch for line in logs])
                for ctx, state, _, _, _ in batch:
                    if state == TaskState.SUCCEEDED and ctx.task_id not in refused:
                        for write in ctx.deferred:
                            await write(conn)
                ended = await q.finish_tasks(
                    conn,
                    owner=self.owner,
                    ends=[
                        q.TaskEnd(ctx.task_id, ctx.job_id, state, error, ctx.persisted_progress, ctx.attempt)
                        for ctx, state, error, _, _ in batch
                    ],
                    now=now,
                )
                # A run's deferred changes count only with its end: if the store refused the end
                # (the run lost its lease), undo this transaction and write the batch again
                # without them. Rare, so the usual batch costs no extra statement.
                undo = {c.task_id for c, st, *_ in batch if st == TaskState.SUCCEEDED and c.deferred and c.task_id not in ended}
                if undo - refused:
                    raise _Refused(frozenset(undo | refused))
        except _Refused as again:
            await self._write_ends(batch, again.task_ids)
            return
        except Exception as exc:
            if len(batch) > 1:  # one task's last write failed: write each alone, so only it fails
                for item in batch:
                    await self._write_ends([item])
            elif not batch[0][4].done():
                batch[0][4].set_exception(exc)
            return
        for ctx, _, _, _, done in batch:
            if ctx.task_id not in ended:
                log.warning("task %s: attempt %d finished after its lease passed on; its end was not recorded", ctx.task_id, ctx.attempt)
            if not done.done():
                done.set_result(None)

    async def _release(self, ctx: TaskContext, handed_off: bool = False) -> None:
        """Hand a task back to the queue (at shutdown, or for another replica to run)."""
        async with self.store.write() as conn:
            await q.append_logs(conn, ctx.take_logs())
            row = await q.get_task(conn, ctx.job_id, ctx.task_id)
            if row is not None and row.lease_owner == self.owner and row.attempts == ctx.attempt:
                await q.requeue_task(conn, row, clock.now(), handed_off=handed_off)

    def running_resources(self) -> dict[str, str]:
        """{task id: resource id} of the tasks this process is running now."""
        return {task_id: ctx.resource_id for task_id, (_, ctx) in self._running.items()}

    @property
    def running_count(self) -> int:
        return len(self._running)
