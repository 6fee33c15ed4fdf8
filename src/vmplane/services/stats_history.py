"""Stats history: a sampler that records what the stats path says, and the history it reads.

Every `stats_sample_seconds` (default 10 s) the sampler asks each running VM's driver for its
stats (`HypervisorDriver.stats_vm`, the figures `GET /vms/{id}/stats` shows) and reads each
node's claimed vCPUs and RAM (and, for a node on this host, the host's measured CPU and
memory use); it writes the tick's samples in one transaction of one batched INSERT per table
(store/stats.py), and prunes samples older than `stats_retention_seconds` in the same
transaction (a range delete on an index: cheap on SQLite and PostgreSQL).

Where replicas share a PostgreSQL store, each samples the local nodes it serves (only it has
their drivers open) and the leader also samples the nodes no replica holds a lock of (remote
ones, which every replica could reach) and prunes; so a VM is sampled once per tick.

The cost of a tick is O(running VMs on nodes whose driver measures VMs): one indexed query
for them, one stats call each (at most `CONCURRENCY` at once), one INSERT. Nodes whose driver
measures nothing (`sim`) cost no query for their VMs.

The VM list shows each running VM's latest sample. On SQLite this process is the only writer,
so the last tick's samples are kept in memory and a list page costs no query (a query per
page, however small, is a quarter of the list's throughput at bench/core.py's load: the
SQLite store runs on the event loop); where replicas share PostgreSQL, others write too, so
a page asks the store (one indexed query).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from .. import clock
from ..domain import Vm, VmStatus
from ..errors import InvalidRequest
from ..hoststats import CpuMeter, mem_percent
from ..store import stats as stats_q
from ..store.tables import nodes, vms
from .process import Leadership
from .vms import get_visible_vm

if TYPE_CHECKING:
    from sqlalchemy import Row

    from ..auth import Principal
    from ..config import Settings
    from ..drivers.base import HypervisorDriver, VmStats
    from ..drivers.registry import NodeRegistry
    from ..store import Store

log = logging.getLogger("vmplane.stats")

CONCURRENCY = 32
"""stats calls in flight at once per tick"""
LATEST_WINDOW = 3
"""a VM's latest sample counts as current for this many sampling periods"""


class StatsHistory:
    def __init__(self, *, store: Store, settings: Settings, registry: NodeRegistry, leadership: Leadership) -> None:
        self.store = store
        self.settings = settings
        self.registry = registry
        self.leadership = leadership
        self.period = settings.stats_sample_seconds
        self.retention = settings.stats_retention_seconds
        self._host_cpu = CpuMeter()
        self._task: asyncio.Task[None] | None = None
        self._shared = not settings.resolved_database_url().startswith("sqlite")
        """other processes may write samples (replicas on PostgreSQL)"""
        self._latest: dict[str, Any] = {}
        """on SQLite: the last tick's sample of each VM it sampled (what `latest` answers)"""
        self.last_tick: dict[str, float] = {}
        """what the last tick did: vms, nodes (samples written), seconds (its duration)"""

    # -- the sampler ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.period > 0:
            self._task = asyncio.create_task(self._run(), name="stats-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording stats samples failed (will retry)")
            await asyncio.sleep(max(0.0, self.period - (loop.time() - began)))

    def _mine(self) -> list[tuple[str, HypervisorDriver]]:
        """The nodes this process samples: the local ones it serves; the others (remote
        nodes, reachable from every replica) only while it leads."""
        leader = self.leadership.leader
        return [(n, d) for n, d in self.registry.items() if d.capabilities.local or leader]

    async def tick(self) -> None:
        """One round of samples, written in one transaction (with the prune, on the leader)."""
        t0 = asyncio.get_running_loop().time()
        now = clock.now()
        mine = dict(self._mine())
        measured = [n for n, d in mine.items() if d.capabilities.stats]
        async with self.store.read() as conn:
            node_rows = (await conn.execute(select(nodes).where(nodes.c.id.in_(list(mine))))).all() if mine else []
            running = (
                (await conn.execute(select(vms.c.id, vms.c.node_id).where(vms.c.status == VmStatus.RUNNING.value, vms.c.node_id.in_(measured))))
                .all()
                if measured
                else []
            )
        vm_rows = await self._vm_samples(running, mine, now)
        node_samples = [await self._node_sample(r, mine[r.id], now) for r in node_rows]
        async with self.store.write() as conn:
            await stats_q.add_samples(conn, vm_rows, node_samples)
            if self.leadership.leader:
                await stats_q.prune(conn, now - self.retention)
        self._latest = {r["vm_id"]: SimpleNamespace(**r) for r in vm_rows}
        self.last_tick = {"vms": len(vm_rows), "nodes": len(node_samples), "seconds": asyncio.get_running_loop().time() - t0}

    async def _vm_samples(self, running: Sequence[Any], drivers: dict[str, HypervisorDriver], now: float) -> list[dict[str, Any]]:
        gate = asyncio.Semaphore(CONCURRENCY)
        timeout = max(1.0, min(self.period, 10.0))

        async def one(vm_id: str, node_id: str) -> dict[str, Any] | None:
            async with gate:
                try:
                    s = await asyncio.wait_for(drivers[node_id].stats_vm(vm_id), timeout)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # stopped meanwhile, its node gone: no sample this tick
                    log.debug("no stats of %s this tick: %s", vm_id, exc)
                    return None
            return sample_row(vm_id, node_id, now, s)

        got = await asyncio.gather(*(one(r.id, r.node_id) for r in running))
        return [r for r in got if r is not None]

    async def _node_sample(self, row: Row[Any], driver: HypervisorDriver, now: float) -> dict[str, Any]:
        here = driver.capabilities.local and driver.capabilities.real_vms  # the node is this host
        host_cpu = host_mem = None
        if here:
            try:
                host_cpu, host_mem = await self._host_cpu.percent(), mem_percent()
            except OSError as exc:
                log.debug("no host figures: %s", exc)
        return {
            "node_id": row.id, "at": now, "cpu_used": row.cpu_used, "cpu_total": row.cpu_total,
            "ram_mb_used": row.ram_mb_used, "ram_mb_total": row.ram_mb_total,
            "host_cpu_percent": host_cpu, "host_memory_percent": host_mem,
        }  # fmt: skip

    # -- reading -------------------------------------------------------------------------------

    def _since(self, since: float | None, now: float) -> float:
        oldest = now - self.retention
        if since is None:
            return now - 3600.0
        if since > now + 60:
            raise InvalidRequest("since is in the future", field="since")
        return max(since, oldest)

    async def vm_history(self, ref: str, who: Principal, since: float | None) -> tuple[Vm, list[dict[str, Any]]]:
        """The VM's samples from `since` (default: the last hour), oldest first, with the disk
        and network rates (bytes/s) between each sample and the one before it."""
        vm = await get_visible_vm(self.store, ref, who)
        start = self._since(since, clock.now())
        async with self.store.read() as conn:
            rows = await stats_q.vm_history(conn, vm.id, start)
        return vm, with_rates(rows, start)

    async def node_history(self, node_id: str, since: float | None) -> list[Row[Any]]:
        async with self.store.read() as conn:
            return await stats_q.node_history(conn, node_id, self._since(since, clock.now()))

    async def latest(self, vm_ids: list[str]) -> dict[str, Any]:
        """The current sample of each of `vm_ids` (those sampled in the last few periods)."""
        if self.period <= 0 or not vm_ids:
            return {}
        if not self._shared:
            since = clock.now() - LATEST_WINDOW * self.period
            return {i: s for i in vm_ids if (s := self._latest.get(i)) is not None and s.at >= since}
        async with self.store.read() as conn:
            return await stats_q.latest_of(conn, vm_ids, clock.now() - LATEST_WINDOW * self.period)


def sample_row(vm_id: str, node_id: str, now: float, s: VmStats) -> dict[str, Any]:
    """A sample as stored: what the stats path returned (its memory source, when it says one)."""
    source = getattr(s, "memory_source", None)
    return {
        "vm_id": vm_id, "node_id": node_id, "at": now, "cpu_percent": float(s.cpu_percent), "memory_mb": int(s.memory_mb),
        "memory_total_mb": int(s.memory_total_mb), "memory_source": str(source)[:16] if source else None,
        "disk_read_bytes": int(s.disk_read_bytes), "disk_write_bytes": int(s.disk_write_bytes),
        "net_rx_bytes": int(s.net_rx_bytes), "net_tx_bytes": int(s.net_tx_bytes),
    }  # fmt: skip


RATES = (("disk_read_bytes", "diskReadBps"), ("disk_write_bytes", "diskWriteBps"), ("net_rx_bytes", "netRxBps"), ("net_tx_bytes", "netTxBps"))


def with_rates(rows: list[Row[Any]], since: float) -> list[dict[str, Any]]:
    """Samples from `since` on, each with the per-second rates of its counters since the sample
    before (None for the first of a run: no sample before, or the counters went back, as
    they do when the VM's process restarts)."""
    out: list[dict[str, Any]] = []
    prev: Row[Any] | None = None
    for r in rows:
        if r.at >= since:
            item: dict[str, Any] = {
                "at": clock.rfc3339_ms(r.at), "cpuPercent": round(r.cpu_percent, 1), "memoryMb": r.memory_mb,
                "memoryTotalMb": r.memory_total_mb, "memorySource": r.memory_source,
            }  # fmt: skip
            dt = r.at - prev.at if prev is not None else 0.0
            for col, key in RATES:
                delta = getattr(r, col) - getattr(prev, col) if prev is not None else -1
                item[key] = round(delta / dt, 1) if dt > 0 and delta >= 0 else None
            out.append(item)
        prev = r
    return out
