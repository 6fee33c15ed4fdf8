"""This process among the control-plane replicas that share one PostgreSQL store: whether it
leads the singletons (the cron scheduler, housekeeping), and which local nodes it serves.

A local node (a sim or qemu driver built from this process's settings) lives in a data dir,
its *home*: the sim keeps its VMs in `<data-dir>/sim/`, qemu its disks and sockets in
`<data-dir>/qemu/`. Replicas started on the same data dir share its nodes; each node is
served by one of them at a time, the holder of the node's session advisory lock, and they
split the nodes evenly. When a replica dies, PostgreSQL drops its session and its locks, and
the others take its nodes over (reloading their state from the data dir) and finish their
tasks once the dead replica's leases run out. Replicas on different data dirs get different
node ids, so two homes never pass for one node.

A replica claims only tasks it can run: none on a node another replica serves. Nodes it
has no lock on (remote ones, reachable from every replica) are never excluded.

On SQLite one process owns the store: it leads and serves all its nodes, with no locks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from . import ids
from .aio import wait_event
from .drivers.base import HypervisorDriver
from .drivers.registry import NodeRegistry
from .errors import NotFound
from .jobs.fencing import fenced
from .store import meta as meta_q
from .store.coordination import HOME_NS, NODE_NS, SCHEDULER_KEY, SINGLETON_NS, Coordinator, lock_key
from .store.tables import nodes, vms

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from .config import Settings
    from .store import Store

log = logging.getLogger("vmplane.replicas")

HOME_FILE = "node-home"
LOCAL_NODES_KEY = "local_nodes"
"""meta: {"homes": {home: [node ids in order]}}: which data dir each local node lives in."""


def home_of(data_dir: Path) -> str:
    """The identity of a data dir's nodes, made once and kept in the data dir (it moves with it)."""
    path = data_dir / HOME_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    home = ids.new_id("home")
    tmp = path.with_name(f".{HOME_FILE}.{os.getpid()}")
    tmp.write_text(home + "\n")
    try:
        path.hardlink_to(tmp)  # first writer wins if two replicas start on a new data dir at once
    except FileExistsError:
        pass
    tmp.unlink()
    return path.read_text().strip()


async def assign_node_ids(conn: AsyncConnection, home: str, wanted: list[str]) -> list[str]:
    """The ids of `home`'s local nodes, `wanted` (node-1..N) unless another home has them.

    Stable: a home gets the same ids on every start. Call under the start-up lock.
    """
    doc = json.loads(await meta_q.get(conn, LOCAL_NODES_KEY) or '{"homes": {}}')
    homes: dict[str, list[str]] = doc["homes"]
    mine = homes.setdefault(home, [])
    taken = {n for h, ns in homes.items() if h != home for n in ns}
    changed = False
    for want in wanted[len(mine) :]:
        node_id, j = want, len(wanted)
        while node_id in taken or node_id in mine:
            j += 1
            node_id = f"node-{j}"
        mine.append(node_id)
        changed = True
    if changed:
        await meta_q.put(conn, LOCAL_NODES_KEY, json.dumps(doc))
    return mine[: len(wanted)]


class ServedRegistry(NodeRegistry):
    """The node registry as handlers see it: a local node is there only while this process
    serves it (holds its lock and has its driver open). Other nodes are unaffected. Inside a
    job handler the drivers come fenced (`jobs.fencing`): they act only while the handler's
    run still holds its task's lease."""

    def __init__(self, replicas: Replicas) -> None:
        super().__init__()
        self._replicas = replicas

    def driver(self, node_id: str) -> HypervisorDriver:
        if not self._replicas.serves(node_id):
            raise NotFound(f"node {node_id} is served by another replica, not by this process")
        return fenced(super().driver(node_id))

    def items(self) -> list[tuple[str, HypervisorDriver]]:
        return [(n, fenced(d)) for n, d in super().items() if self._replicas.runs_here(n)]

    def __contains__(self, node_id: str) -> bool:
        return super().__contains__(node_id) and self._replicas.serves(node_id)


@dataclass(frozen=True)
class ReplicaHooks:
    """What coordination sets off in the rest of the process (the composition root,
    runtime.Runtime, gives them at start: the job engine and the scheduler exist by then)."""

    serve_node: Callable[[str, HypervisorDriver], Awaitable[None]]
    """record a node this process now serves, and reconcile its VMs with its driver"""
    work_ready: Callable[[], None]
    """tasks of a node just served may be claimed (the job engine's wakeup)"""
    leading: Callable[[], None]
    """this replica became the leader (the scheduler looks at its timetable)"""
    running_resources: Callable[[], dict[str, str]]
    """{task id: resource id} of the tasks this process runs now"""


class Replicas:
    def __init__(self, store: Store, settings: Settings, coordinator: Coordinator | None) -> None:
        self.store = store
        self.settings = settings
        self._hooks: ReplicaHooks | None = None
        self.coord = coordinator
        self.home = ""
        self.local: dict[str, HypervisorDriver] = {}
        """local nodes this process can serve (when it holds their lock), in order"""
        self.serving: set[str] = set()
        """local nodes this process serves now: lock held, driver open"""
        self.draining: dict[str, set[str]] = {}
        """local nodes being handed to another replica -> tasks to wait for"""
        self.elsewhere: frozenset[str] = frozenset()
        """nodes another replica holds the lock of (as of the last look)"""
        self.leader = coordinator is None
        self._opened: set[str] = set()
        self._home_generation = -1
        self._change = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if coordinator is not None:
            coordinator.on_lost.append(self._lost)
            coordinator.on_connected.append(self._wake.set)

    # -- what this process may do ---------------------------------------------------------

    def serves(self, node_id: str) -> bool:
        """This process has a working driver for the node: a local one whose lock it holds,
        or a node no replica holds a lock of (remote nodes)."""
        if node_id in self.local:
            return node_id in self.serving
        return node_id not in self.elsewhere

    def runs_here(self, node_id: str) -> bool:
        """New work on the node belongs to this process (it serves it and is not handing it over)."""
        return self.serves(node_id) and node_id not in self.draining

    def not_here(self) -> set[str]:
        """Nodes whose tasks this process must leave alone: served by another replica, or
        local ones it does not serve (yet) or is handing over."""
        if self.coord is None:
            return set()
        return set(self.elsewhere) | {n for n in self.local if n not in self.serving} | set(self.draining)

    def placement_scope(self) -> tuple[set[str], set[str]]:
        """(nodes not to place VMs on, the smaller set to avoid when nothing else fits). The
        difference is the nodes another replica serves: a VM placed there has its create
        handed over to that replica."""
        avoid = self.not_here()
        return avoid, avoid - self.elsewhere

    # -- life ------------------------------------------------------------------------------

    @property
    def hooks(self) -> ReplicaHooks:
        assert self._hooks is not None, "Replicas.start gives the hooks"
        return self._hooks

    async def start(self, local: list[tuple[str, HypervisorDriver]], home: str, hooks: ReplicaHooks) -> None:
        """Serve this process's share of its local nodes (all of them on SQLite)."""
        self._hooks = hooks
        self.home = home
        self.local = dict(local)
        if self.coord is None:
            for node_id in self.local:
                await self._bring_up(node_id)
            return
        await self.tick()
        self._task = asyncio.create_task(self._run(), name="replicas")

    async def stop_looking(self) -> None:
        """No more looking at the other replicas: this process keeps what it holds until it
        closes its session, and takes nothing more."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def stop(self) -> None:
        """Close the drivers of the nodes this process serves (their locks go with the session)."""
        await self.stop_looking()
        for node_id in list(self._opened):
            await self._close(node_id)
        self.serving.clear()

    async def _run(self) -> None:
        period = self.settings.coordination_seconds
        while True:
            await wait_event(self._wake, period)
            self._wake.clear()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("replica coordination failed (will retry): %s", exc)

    def _lost(self) -> None:
        """The session and all its locks are gone: stop leading and serving at once."""
        if self.serving or self.leader:
            log.error("no longer leading or serving nodes %s until the session is back", ", ".join(sorted(self.serving)) or "-")
        self.leader = False
        self.serving.clear()
        self.draining.clear()
        self.elsewhere = frozenset()
        self._home_generation = -1
        self._wake.set()

    async def tick(self) -> None:
        """One look at the other replicas: lead if nobody does, take or give back nodes."""
        coord = self.coord
        if coord is None or not coord.connected:
            return
        async with self._change:
            if self._home_generation != coord.generation:
                await coord.try_lock(HOME_NS, lock_key(self.home), shared=True)
                self._home_generation = coord.generation
            if not self.leader and await coord.try_lock(SINGLETON_NS, SCHEDULER_KEY):
                self.leader = True
                log.warning("this replica now runs the cron scheduler and housekeeping")
                self.hooks.leading()
            held = await coord.holders(NODE_NS)
            async with self.store.read() as conn:
                known = {r[0] for r in (await conn.execute(select(nodes.c.id))).all()} | set(self.local)
            mine = self.serving | set(self.draining)
            self.elsewhere = frozenset(n for n in known if lock_key(n) in held and n not in mine)
            replicas = max(1, (await coord.holders(HOME_NS)).get(lock_key(self.home), 1))
            share = math.ceil(len(self.local) / replicas)
            active = [n for n in self.local if n in self.serving and n not in self.draining]
            if len(active) < share:
                for node_id in self.local:
                    if len(active) >= share:
                        break
                    if node_id not in self.serving and node_id not in self.elsewhere and await self._acquire(node_id):
                        active.append(node_id)
            elif len(active) > share:
                running = set(self.hooks.running_resources())
                for node_id in active[share:]:
                    log.info("handing node %s over to another replica (%d replicas share %d nodes)", node_id, replicas, len(self.local))
                    self.draining[node_id] = running
            for node_id in list(self.draining):
                if await self._drained(node_id):
                    await self._release(node_id)

    async def _acquire(self, node_id: str) -> bool:
        assert self.coord is not None
        if not await self.coord.try_lock(NODE_NS, lock_key(node_id)):
            return False
        try:
            await self._bring_up(node_id)
        except Exception:
            log.exception("cannot serve node %s", node_id)
            await self.coord.unlock(NODE_NS, lock_key(node_id))
            return False
        log.warning("serving node %s", node_id)
        return True

    async def _bring_up(self, node_id: str) -> None:
        """Open the node's driver (reloading its state), register it, reconcile its VMs."""
        driver = self.local[node_id]
        if node_id in self._opened:
            await self._close(node_id)
        await driver.open()
        self._opened.add(node_id)
        await self.hooks.serve_node(node_id, driver)
        self.serving.add(node_id)
        self.hooks.work_ready()

    async def _drained(self, node_id: str) -> bool:
        """Every task this process was running when the handover began has ended, or its VM
        is on another node (so it cannot touch this one)."""
        running = self.hooks.running_resources()
        waiting = {task: res for task, res in running.items() if task in self.draining[node_id]}
        if not waiting:
            return True
        async with self.store.read() as conn:
            rows = (await conn.execute(select(vms.c.id, vms.c.node_id).where(vms.c.id.in_(list(waiting.values()))))).all()
        elsewhere = {r.id for r in rows if r.node_id is not None and r.node_id != node_id}
        return all(res in elsewhere for res in waiting.values())

    async def _release(self, node_id: str) -> None:
        assert self.coord is not None
        self.serving.discard(node_id)
        self.draining.pop(node_id, None)
        await self._close(node_id)
        await self.coord.unlock(NODE_NS, lock_key(node_id))
        log.warning("handed node %s over", node_id)

    async def _close(self, node_id: str) -> None:
        self._opened.discard(node_id)
        try:
            await self.local[node_id].close()
        except Exception:
            log.exception("closing the driver of node %s failed", node_id)
