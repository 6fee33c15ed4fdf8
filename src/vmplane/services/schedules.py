"""Schedules: cron expressions that replay a native API request (one that makes a job) with
the scope of the credential that made the schedule (services/scopes.py: its user, team and
read-only flag; disabled, saying why, once that key is revoked or expires or the user
leaves), and the scheduler that fires them.

Exactly one run per due time, however many schedulers share the store: a scheduler runs a
due time only after moving `next_run` past it with a compare-and-set. After downtime there
is no burst of missed runs: the misfire policy runs the schedule once (`run_once`) or not at
all (`skip`), then carries on from the next time in the future. With several replicas only
the leader (see replicas.py) runs the scheduler; another takes over if it dies.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from sqlalchemy import Row

from .. import clock, cron, ids
from ..aio import wait_event
from ..auth import Principal
from ..domain import JobState
from ..errors import Conflict, InvalidRequest, NotFound, Reason
from ..store import events as ev_q
from ..store import jobs as job_q
from ..store import schedules as sch_q
from . import scopes
from .backups import KEEP_LAST, BackupSchedule, cron_of
from .process import Leadership
from .vms import get_visible_vm

if TYPE_CHECKING:
    from ..store import Store
    from .backups import BackupService
    from .tenancy import TenancyService

log = logging.getLogger("vmplane.schedules")

MISFIRE_GRACE = 60.0
"""A due time missed by more than this (the service was down) is a misfire."""
PATH_RE = re.compile(r"^/api/v1/[A-Za-z0-9/_.:-]+$")
METHODS = ("POST", "PUT", "PATCH", "DELETE")


def check_template(template: dict[str, Any]) -> dict[str, Any]:
    method = str(template.get("method", "")).upper()
    path = template.get("path")
    if method not in METHODS:
        raise InvalidRequest(f"jobTemplate.method must be one of {', '.join(METHODS)}", field="jobTemplate.method")
    if not isinstance(path, str) or not PATH_RE.match(path) or ".." in path or path.startswith(("/api/v1/schedules", "/api/v1/webhooks")):
        raise InvalidRequest("jobTemplate.path must be a native API path that makes a job, e.g. /api/v1/vms", field="jobTemplate.path")
    body = template.get("body")
    if body is not None and len(json.dumps(body)) > 256 * 1024:
        raise InvalidRequest("jobTemplate.body is larger than 256 KiB", field="jobTemplate.body")
    return {"method": method, "path": path, "body": body}


def _visible(row: Row[*tuple[Any, ...]], who: Principal) -> bool:
    """A schedule is its organization's, and a team-scoped credential's only if made with
    that team's scope."""
    return row.org_id == who.org_id and (who.team_id is None or row.team_id == who.team_id)


class Replay(Protocol):
    """How a schedule's request reaches the native API of this very process: as user
    `user_id` of `org_id`, with `scope` (services/scopes.Scope.header) and the request's
    Idempotency-Key. The composition root (app.py) wires it to the ASGI app."""

    async def __call__(
        self, method: str, path: str, body: Any, *, user_id: str, org_id: str, scope: str, idempotency_key: str
    ) -> httpx.Response: ...


class ScheduleService:
    def __init__(
        self, *, store: Store, leadership: Leadership, tenancy: TenancyService, backups: BackupService, replay: Replay, wake: asyncio.Event
    ) -> None:
        """`wake`: set to look at the timetable now (also by tenancy's sweeps, which disable
        schedules)."""
        self.store = store
        self.leadership = leadership
        self.tenancy = tenancy
        self.backups = backups
        self.replay = replay
        self._task: asyncio.Task[None] | None = None
        self._wake = wake

    # -- CRUD ----------------------------------------------------------------------------

    async def get(self, schedule_id: str, who: Principal) -> Row[*tuple[Any, ...]]:
        async with self.store.read() as conn:
            row = await sch_q.get_schedule(conn, schedule_id)
        if row is None or not _visible(row, who):
            raise NotFound(f"schedule {schedule_id} does not exist")
        return row

    async def list(self, who: Principal) -> Sequence[Row[*tuple[Any, ...]]]:
        async with self.store.read() as conn:
            return [s for s in await sch_q.list_schedules(conn) if _visible(s, who)]

    async def made_by(self, face: str, who: Principal) -> builtins.list[Row[*tuple[Any, ...]]]:
        """The schedules a face made (their `origin.face`), as `who` sees them."""
        return [s for s in await self.list(who) if (s.origin or {}).get("face") == face]

    async def by_origin(self, face: str, origin_id: str, who: Principal) -> Row[*tuple[Any, ...]]:
        """The schedule a face knows by its own id (`origin.id`, unique among the face's)."""
        for s in await self.made_by(face, who):
            if s.origin.get("id") == origin_id:
                return s
        raise NotFound(f"schedule {origin_id} not found")

    async def check_origin_free(self, face: str, origin_id: str, who: Principal) -> None:
        """Raise Conflict (name_taken) if the face has a schedule of that id already."""
        if any(s.origin.get("id") == origin_id for s in await self.made_by(face, who)):
            raise Conflict(f"schedule {origin_id} already exists", reason=Reason.NAME_TAKEN)

    async def create(
        self, *, name: str, schedule: str, timezone: str, enabled: bool, job_template: dict[str, Any], misfire_policy: str,
        who: Principal, backup_vm_id: str | None = None, keep_last: int | None = None, origin: dict[str, Any] | None = None,
    ) -> Row[*tuple[Any, ...]]:
        """The schedule runs with the scope of `who`'s credential (services/scopes.py); a
        read-only credential makes none. `origin`: what the face that makes it records (its
        own id, fields the core does not use)."""
        scopes.require_write(who, "schedules")
        cron.check(schedule, timezone)
        template = check_template(job_template)
        now = clock.now()
        row = {
            "id": ids.new_id("sch"), "org_id": who.org_id, "owner_id": who.user_id, "name": name, "schedule": schedule, "timezone": timezone, "enabled": enabled,
            "job_template": template, "misfire_policy": misfire_policy, "owner": who.user_name,
            "next_run": cron.next_after(schedule, timezone, now) if enabled else None, "last_run": None,
            "run_count": 0, "success_count": 0, "failure_count": 0, "created_at": now, "updated_at": now,
            "backup_vm_id": backup_vm_id, "keep_last": keep_last, "origin": origin, **scopes.of(who).columns(),
        }  # fmt: skip
        async with self.store.write() as conn:
            await self.tenancy.reserve(conn, who.org_id, schedules=1)
            await sch_q.insert_schedule(conn, row)
        self._wake.set()
        return await self.get(row["id"], who)

    async def update(self, schedule_id: str, who: Principal, **changes: Any) -> Row[*tuple[Any, ...]]:
        current = await self.get(schedule_id, who)
        values = {k: v for k, v in changes.items() if v is not None}
        if not values:
            raise InvalidRequest("give at least one field to change", field="body")
        expr = values.get("schedule", current.schedule)
        tz = values.get("timezone", current.timezone)
        cron.check(expr, tz)
        if "job_template" in values:
            values["job_template"] = check_template(values["job_template"])
        enabled = values.get("enabled", current.enabled)
        if enabled and current.disabled_reason is not None:
            raise Conflict(f"schedule {schedule_id} was disabled because {current.disabled_reason}; make a new one", field="enabled")
        now = clock.now()
        values["next_run"] = cron.next_after(expr, tz, now) if enabled else None
        async with self.store.write() as conn:
            await sch_q.set_schedule(conn, schedule_id, **values, updated_at=now)
        self._wake.set()
        return await self.get(schedule_id, who)

    async def delete(self, schedule_id: str, who: Principal) -> None:
        await self.get(schedule_id, who)
        async with self.store.write() as conn:
            await sch_q.delete_schedule(conn, schedule_id)

    async def stats(self, who: Principal) -> dict[str, int]:
        async with self.store.read() as conn:
            s = await sch_q.stats(conn, who.org_id, who.team_id)
        return {
            "totalSchedules": int(s.total), "enabledSchedules": int(s.enabled), "disabledSchedules": int(s.total - s.enabled),
            "totalRuns": int(s.runs), "successfulRuns": int(s.ok), "failedRuns": int(s.failed),
        }  # fmt: skip

    async def trigger(self, schedule_id: str, who: Principal) -> dict[str, Any]:
        """Run now, outside the timetable (next_run is unchanged)."""
        sch = await self.get(schedule_id, who)
        if sch.disabled_reason is not None:
            raise Conflict(f"schedule {schedule_id} was disabled because {sch.disabled_reason}", field="enabled")
        now = clock.now()
        async with self.store.write() as conn:
            await sch_q.set_schedule(conn, sch.id, last_run=now, run_count=sch.run_count + 1, updated_at=now)
        return await self._fire(sch, due_at=None, manual=True)

    # -- backup schedules (a schedule replaying POST /vms/{id}/backups, plus retention) -----

    async def backup_schedule(self, vm_ref: str, who: Principal) -> BackupSchedule:
        vm = await get_visible_vm(self.store, vm_ref, who)
        async with self.store.read() as conn:
            sch = await sch_q.backup_schedule(conn, vm.id)
        if sch is None:
            raise NotFound(f"VM {vm.id} has no backup schedule")
        return BackupSchedule.of(sch)

    async def put_backup_schedule(
        self, vm_ref: str, who: Principal, *, frequency: str, hour: int, day_of_week: int | None, day_of_month: int | None, keep_last: int = KEEP_LAST
    ) -> BackupSchedule:
        vm = await get_visible_vm(self.store, vm_ref, who)
        self.backups.check_capable(vm)
        if frequency == "weekly" and day_of_week is None:
            raise InvalidRequest("weekly schedules need dayOfWeek (0 = Sunday … 6)", field="day_of_week")
        if frequency == "monthly" and day_of_month is None:
            raise InvalidRequest("monthly schedules need dayOfMonth (1-28)", field="day_of_month")
        expr = cron_of(frequency, hour, day_of_week, day_of_month)
        template = {"method": "POST", "path": f"/api/v1/vms/{vm.id}/backups", "body": {"notes": f"scheduled ({frequency})"}}
        async with self.store.read() as conn:
            existing = await sch_q.backup_schedule(conn, vm.id)
        if existing is not None:
            await self.delete(existing.id, who)
        row = await self.create(
            name=f"backup-{vm.name}", schedule=expr, timezone="UTC", enabled=True, job_template=template,
            misfire_policy="run_once", who=who, backup_vm_id=vm.id, keep_last=keep_last,
        )  # fmt: skip
        return BackupSchedule.of(row)

    async def delete_backup_schedule(self, vm_ref: str, who: Principal) -> None:
        sch = await self.backup_schedule(vm_ref, who)
        await self.delete(sch.id, who)

    # -- the scheduler -------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Look at the timetable now (a schedule changed, or this replica became the leader)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                if self.leadership.leader:  # one scheduler at a time across replicas
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler tick failed")
            async with self.store.read() as conn:
                nxt = await sch_q.next_due_time(conn)
            wait = 1.0 if nxt is None else min(1.0, max(0.01, nxt - clock.now()))
            self._wake.clear()
            await wait_event(self._wake, wait)

    async def tick(self) -> None:
        now = clock.now()
        async with self.store.read() as conn:
            due = await sch_q.due(conn, now)
        for sch in due:
            late = now - sch.next_run > MISFIRE_GRACE
            run = not late or sch.misfire_policy == "run_once"
            new_next = cron.next_after(sch.schedule, sch.timezone, now)
            extra = {"last_run": now, "run_count": sch.run_count + 1} if run else {}
            async with self.store.write() as conn:
                won = await sch_q.advance(conn, sch.id, sch.next_run, new_next, updated_at=now, **extra)
            if not won:
                continue  # another scheduler took this due time
            if run:
                await self._fire(sch, due_at=sch.next_run, manual=False)
            else:
                log.warning("schedule %s missed %s while vmplane was down; skipped (misfire policy)", sch.id, clock.rfc3339(sch.next_run))
        await self._follow_runs()

    async def _fire(self, sch: Row[*tuple[Any, ...]], *, due_at: float | None, manual: bool) -> dict[str, Any]:
        now = clock.now()
        scope = scopes.of_row(sch)
        try:
            await scopes.acting(self.store, scope)  # checked at each run, besides the sweeps
            ended = None
        except scopes.ScopeEnded as exc:
            ended = exc.message
        async with self.store.write() as conn:
            run_seq = await sch_q.add_run(conn, {"schedule_id": sch.id, "due_at": due_at, "triggered_at": now, "manual": manual, "state": "pending"})
            if ended is not None:
                error: str | None = f"not run: the schedule is disabled because {ended}"
                await sch_q.set_run(conn, run_seq, state="failed", error=error)
                await sch_q.count_run(conn, sch.id, False, error, now)
                await scopes.disable(conn, "schedule", sch, ended)
                return {"scheduleId": sch.id, "jobId": None, "error": error}
            await ev_q.emit(conn, "schedule.triggered", sch.id, {"id": sch.id, "name": sch.name, "manual": manual, "dueAt": clock.rfc3339(due_at)}, sch.org_id, sch.team_id)
        t = sch.job_template
        key = f"schedule:{sch.id}:{due_at if due_at is not None else f'manual-{run_seq}'}"
        try:
            r = await self.replay(
                t["method"], t["path"], t.get("body"), user_id=sch.owner_id, org_id=sch.org_id, scope=scope.header(), idempotency_key=key
            )
            answer = r.json() if r.content else {}
            job_id = answer.get("jobId") if r.status_code == 202 else None
            error = None if job_id else f"{t['method']} {t['path']} answered {r.status_code}: {answer.get('error', r.text[:200])}"
        except Exception as exc:  # a replay must never take the scheduler down
            log.exception("schedule %s: replaying its request failed", sch.id)
            job_id, error = None, f"replaying the request failed: {exc}"
        async with self.store.write() as conn:
            if job_id:
                await sch_q.set_run(conn, run_seq, job_id=job_id, state="running")
                await sch_q.set_schedule(conn, sch.id, last_job_id=job_id)
            else:
                await sch_q.set_run(conn, run_seq, state="failed", error=error)
                await sch_q.count_run(conn, sch.id, False, error, clock.now())
                await ev_q.emit(conn, "schedule.failed", sch.id, {"id": sch.id, "name": sch.name, "error": error}, sch.org_id, sch.team_id)
        return {"scheduleId": sch.id, "jobId": job_id, "error": error}

    async def _retain(self, schedule_id: str) -> None:
        """After a successful run of a VM's backup schedule, delete its oldest backups beyond keepLast."""
        async with self.store.read() as conn:
            sch = await sch_q.get_schedule(conn, schedule_id)
        if sch is None or sch.backup_vm_id is None or not sch.keep_last:
            return
        try:
            who = await scopes.acting(self.store, scopes.of_row(sch))
            await self.backups.prune(sch.backup_vm_id, sch.keep_last, who)
        except Exception:  # retention must never stop the scheduler; the next run retries
            log.exception("schedule %s: retention failed", schedule_id)

    async def _follow_runs(self) -> None:
        """Close runs whose job has ended, counting successes and failures."""
        async with self.store.read() as conn:
            open_runs = [r for r in await sch_q.open_runs(conn) if r.job_id]
            jobs = {r.job_id: await job_q.get_job(conn, r.job_id) for r in open_runs}
        for run in open_runs:
            job = jobs.get(run.job_id)
            if job is None or job.state not in (JobState.SUCCEEDED, JobState.PARTIAL, JobState.FAILED, JobState.CANCELLED):
                continue
            ok = job.state == JobState.SUCCEEDED
            error = None if ok else f"job {job.id} ended {job.state}"
            if ok:
                await self._retain(run.schedule_id)
            async with self.store.write() as conn:
                sch = await sch_q.get_schedule(conn, run.schedule_id)
                await sch_q.set_run(conn, run.seq, state="succeeded" if ok else "failed", error=error)
                if sch is not None:
                    await sch_q.count_run(conn, sch.id, ok, error, clock.now())
                    data = {"id": sch.id, "name": sch.name, "jobId": job.id, "jobState": job.state}
                    await ev_q.emit(conn, "schedule.completed" if ok else "schedule.failed", sch.id, data if ok else {**data, "error": error}, sch.org_id, sch.team_id)
