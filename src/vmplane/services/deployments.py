"""Deployments: a named desired state `{name, replicas, config}` and the reconciler that keeps it.

Replicas are VMs named `<name>-<i>` (i from 1) in the deployment's organization (names are
unique per organization: another organization's VMs never take or block a number), made from the deployment's config (see
services/vmconfig.py) and marked as the deployment's in their spec. Each pass of the
reconciler, for every deployment:
- a replica whose node is offline or gone is *lost*: it is not counted, and a new replica
  takes its place (placement only picks online nodes, so elsewhere); when its node comes
  back it counts again and the surplus is removed as in a scale-down;
- a replica that died (`stopped` or `error`, nothing running on it) is deleted, and
  recreated under its name once the delete has finished;
- with fewer live replicas than desired, new ones are created at the lowest free numbers;
  with more, the highest-numbered are deleted first.
Every action is an event `deployment.reconciled` {deployment, action, replica, reason, jobId}.
The reconciler acts with the scope of the credential that made the deployment (its user, team
and read-only flag; services/scopes.py), and not at all once that key is revoked or expires or
its user leaves: the deployment is then disabled, saying why (`disabledReason`, an event).
`readyReplicas` counts replicas that are `running`. With several replicas of vmplane on one
PostgreSQL only the leader (replicas.py) reconciles; everything it needs is in the store, so
a restart or a new leader carries on where the last pass stopped.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from .. import clock, ids
from ..aio import wait_event
from ..auth import Principal
from ..domain import NodeStatus, Vm, VmStatus
from ..errors import Conflict, InvalidRequest, NotFound, Reason, VmplaneError
from ..store import deployments as dep_q
from ..store import events as ev_q
from ..store import nodes as node_q
from . import scopes, vmconfig
from .process import Leadership
from .vms import check_name

if TYPE_CHECKING:
    from ..store import Store
    from .templates import TemplateService
    from .vmconfig import VmConfigService
    from .vms import VmService

log = logging.getLogger("vmplane.deployments")

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,46}[a-z0-9])?$")
MAX_REPLICAS = 100
DEAD = (VmStatus.STOPPED.value, VmStatus.ERROR.value)
RETRY_SECONDS = 10.0
REFUSED_QUIET_SECONDS = 60.0
"""the same refusal (say, no room on any node) is announced once a minute, not every pass"""


@dataclass(frozen=True)
class Replica:
    index: int
    vm: Vm
    lost: bool
    """its node is offline or gone"""
    work: frozenset[str]
    """types of the tasks queued or running on it (vm-create, vm-delete, ...)"""

    @property
    def going(self) -> bool:
        """on its way out: being deleted, or a delete is queued"""
        return self.vm.status == VmStatus.DELETING or "vm-delete" in self.work


def check_replicas(value: Any, where: str = "replicas") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_REPLICAS:
        raise InvalidRequest(f"{where} must be an integer from 0 to {MAX_REPLICAS}", field=where)
    return value


class DeploymentService:
    def __init__(
        self, *, store: Store, vms: VmService, templates: TemplateService, vm_configs: VmConfigService, leadership: Leadership, ready: Callable[[], bool]
    ) -> None:
        """`leadership`: whether this replica leads (the leader alone reconciles); `ready()`: this
        process has started."""
        self.store = store
        self.vms = vms
        self.templates = templates
        self.vm_configs = vm_configs
        self.leadership = leadership
        self.ready = ready
        self.interval = 1.0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._refused: dict[tuple[str, str, str], tuple[str, float]] = {}
        """(deployment, action, replica) -> the core's last refusal and when it was announced"""
        self._acted: dict[str, float] = {}
        """VM id -> when a dead replica's delete was last asked for (a failing delete is
        retried every RETRY_SECONDS, not every pass)"""

    # -- CRUD ----------------------------------------------------------------------------

    async def get(self, name: str, who: Principal) -> Row[*tuple[Any, ...]]:
        async with self.store.read() as conn:
            row = await dep_q.get_deployment(conn, name, who.org_id)
        if row is None or row.org_id != who.org_id or (who.team_id is not None and row.team_id != who.team_id):
            raise NotFound(f"deployment {name} does not exist")
        return row

    async def list(self, who: Principal) -> Sequence[Row[*tuple[Any, ...]]]:
        async with self.store.read() as conn:
            rows = await dep_q.list_deployments(conn, who.org_id)
        return [r for r in rows if who.team_id is None or r.team_id == who.team_id]

    async def create(self, name: Any, replicas: Any, config: Any, who: Principal) -> Row[*tuple[Any, ...]]:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise InvalidRequest(
                "name must be 1-48 lower-case letters, digits and '-', not starting or ending with '-' (replicas are <name>-<i>)",
                field="name",
            )
        scopes.require_write(who, "deployments")
        count = check_replicas(replicas)
        config = vmconfig.check({} if config is None else config)
        vmconfig.resources_of(config)
        now = clock.now()
        row = {
            "id": ids.new_id("dep"), "name": name, "org_id": who.org_id, "replicas": count, "config": config, "created_at": now,
            "updated_at": now, **scopes.of(who).columns(),
        }  # fmt: skip
        try:
            async with self.store.write() as conn:
                if await dep_q.get_deployment(conn, name, who.org_id) is not None:  # names are per organization
                    raise Conflict(f"a deployment named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
                await dep_q.insert_deployment(conn, row)
                await ev_q.emit(conn, "deployment.created", row["id"], _data(row), who.org_id, who.team_id)
        except IntegrityError:
            raise Conflict(f"a deployment named {name!r} was created at the same time", field="name") from None
        self.wake()
        return await self.get(name, who)

    async def update(self, name: str, who: Principal, *, replicas: Any = None, config_patch: Any = None) -> Row[*tuple[Any, ...]]:
        """Scale, and/or merge-patch the config (new replicas are made from the new config;
        existing ones keep theirs)."""
        dep = await self.get(name, who)
        values: dict[str, Any] = {}
        if replicas is not None:
            values["replicas"] = check_replicas(replicas)
        if config_patch is not None:
            if not isinstance(config_patch, dict):
                raise InvalidRequest("config must be an object (a merge patch)", field="config")
            values["config"] = vmconfig.check(vmconfig.merge_patch(dep.config, config_patch))
        if not values:
            raise InvalidRequest("give replicas and/or config", field="body")
        values["updated_at"] = clock.now()
        async with self.store.write() as conn:
            await dep_q.set_deployment(conn, dep.id, **values)
            data = {**_data(dep._mapping), **{k: v for k, v in values.items() if k in ("replicas", "config")}}
            await ev_q.emit(conn, "deployment.updated", dep.id, data, dep.org_id, dep.team_id)
        self.wake()
        return await self.get(name, who)

    async def delete(self, name: str, who: Principal) -> str | None:
        """Forget the deployment and delete its replicas (one job; None if it had none)."""
        dep = await self.get(name, who)
        replicas = await self.replicas(dep)
        async with self.store.write() as conn:
            await dep_q.delete_deployment(conn, dep.id)
            await ev_q.emit(conn, "deployment.deleted", dep.id, _data(dep._mapping), dep.org_id, dep.team_id)
        refs = [r.vm.id for r in replicas if r.vm.status != VmStatus.DELETING]
        if not refs:
            return None
        return await self.vms.delete(refs, who)

    # -- replicas ------------------------------------------------------------------------

    async def replicas(self, dep: Row[*tuple[Any, ...]]) -> builtins.list[Replica]:
        pattern = re.compile(re.escape(dep.name) + r"-([1-9][0-9]{0,3})$")
        async with self.store.read() as conn:
            rows = [
                (int(m.group(1)), r) for r in await dep_q.vms_named_like(conn, dep.name + "-", dep.org_id)
                if (m := pattern.match(r.name)) and r.spec.deployment == dep.id
            ]  # fmt: skip
            work = await dep_q.active_work(conn, [r.id for _, r in rows])
            nodes = {n.id: n for n in await node_q.list_nodes(conn)} if rows else {}
        out = []
        for index, r in rows:
            node = nodes.get(r.node_id) if r.node_id else None
            lost = r.node_id is not None and (node is None or node.status != NodeStatus.ONLINE.value)
            out.append(Replica(index, r, lost, frozenset(work.get(r.id, ()))))
        return sorted(out, key=lambda x: x.index)

    async def ready_count(self, dep: Row[*tuple[Any, ...]]) -> int:
        return sum(1 for r in await self.replicas(dep) if r.vm.status == VmStatus.RUNNING and not r.lost)

    # -- the reconciler ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="deployments")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        passes = 0
        while True:
            try:
                if self.ready() and self.leadership.leader:  # one reconciler across replicas
                    await self.reconcile_all()
                    passes += 1
                    if passes % 60 == 1:  # now and then: the config history of deleted VMs goes
                        await self.vm_configs.forget_deleted()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling deployments failed")
            self._wake.clear()
            await wait_event(self._wake, self.interval)

    async def reconcile_all(self) -> None:
        async with self.store.read() as conn:
            deps = await dep_q.list_deployments(conn)
        for dep in deps:
            try:
                await self.reconcile(dep)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling deployment %s failed", dep.name)

    async def reconcile(self, dep: Row[*tuple[Any, ...]]) -> None:
        """One pass over one deployment (see the module's docstring)."""
        if dep.disabled_reason is not None:
            return
        try:
            who = await scopes.acting(self.store, scopes.of_row(dep))
        except scopes.ScopeEnded as exc:
            async with self.store.write() as conn:
                await scopes.disable(conn, "deployment", dep, exc.message)
            return
        replicas = await self.replicas(dep)
        # every replica not lost holds its number, even on its way out: a replica that died is
        # recreated under its own name once its delete has finished
        live = [r for r in replicas if not r.lost]
        for r in live:
            if r.vm.status in DEAD and not r.work and clock.now() - self._acted.get(r.vm.id, 0.0) > RETRY_SECONDS:
                self._acted[r.vm.id] = clock.now()
                reason = r.vm.error or f"the replica is {r.vm.status}"
                await self._act(dep, who, "replace", r.vm.name, reason, partial(self.vms.delete, [r.vm.id], who))
        staying = [r for r in live if not r.going and not (r.vm.status in DEAD and not r.work)]
        surplus = len(staying) - dep.replicas
        for r in sorted(staying, key=lambda x: -x.index)[: max(0, surplus)]:
            if r.work:  # being created or changed: removed once that is done
                continue
            await self._act(dep, who, "delete", r.vm.name, f"scaled to {dep.replicas}", partial(self.vms.delete, [r.vm.id], who))
        # replicas on their way out hold their numbers until they are gone
        missing = dep.replicas - len(live)
        if missing <= 0:
            return
        lost = {r.vm.name for r in replicas if r.lost}
        taken = {r.index for r in replicas}
        async with self.store.read() as conn:
            others = {r.name for r in await dep_q.vms_named_like(conn, dep.name + "-", dep.org_id)}  # its organization's names only
        template = await self.templates.default_id(who)
        index = 0
        while missing > 0 and index < 10_000:
            index += 1
            name = f"{dep.name}-{index}"
            if index in taken or name in others:
                continue
            check_name(name)
            reason = "replacing " + ", ".join(sorted(lost)) + " (node offline)" if lost else f"{len(live)} of {dep.replicas} replicas"
            spec = vmconfig.new_vm(name, dep.config, template)
            spec = replace(spec, extra={**spec.extra, "deployment": dep.id}, team=dep.team_id)  # the team of the credential that made it

            async def create(spec: Any = spec) -> str:
                job_id, vm_ids = await self.vms.create([spec], who, check_capacity=True)
                await self.vm_configs.record(vm_ids, dep.config)
                return job_id

            if not await self._act(dep, who, "create", name, reason, create):
                return  # no room, or refused: the next pass tries again
            missing -= 1

    async def _act(
        self, dep: Row[*tuple[Any, ...]], who: Principal, action: str, replica: str, reason: str, do: Callable[[], Awaitable[str]]
    ) -> bool:
        try:
            job_id = await do()
        except VmplaneError as exc:  # no room, over quota, a name taken meanwhile...: the next pass tries again
            key = (dep.id, action, replica)
            last = self._refused.get(key)
            if last is None or last[0] != exc.message or clock.now() - last[1] > REFUSED_QUIET_SECONDS:
                self._refused[key] = (exc.message, clock.now())
                await self._event(dep, action, replica, reason, None, exc.message)
                log.warning("deployment %s: cannot %s %s: %s", dep.name, action, replica, exc.message)
            return False
        self._refused.pop((dep.id, action, replica), None)
        await self._event(dep, action, replica, reason, job_id, None)
        log.info("deployment %s: %s %s (%s), job %s", dep.name, action, replica, reason, job_id)
        return True

    async def _event(self, dep: Row[*tuple[Any, ...]], action: str, replica: str, reason: str, job_id: str | None, error: str | None) -> None:
        data = {"deployment": dep.name, "id": dep.id, "action": action, "replica": replica, "reason": reason, "jobId": job_id}
        if error is not None:
            data["error"] = error
        async with self.store.write() as conn:
            await ev_q.emit(conn, "deployment.reconciled", dep.id, data, dep.org_id, dep.team_id)


def _data(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "name": row["name"], "replicas": row["replicas"]}
