"""PostgreSQL as the replicas' coordination engine: one dedicated session per process for
LISTEN/NOTIFY and session-level advisory locks (the scheduler's leadership, node ownership).

A session lock lives as long as the connection that took it: when a process dies, PostgreSQL
closes its session and drops its locks, which is how the other replicas learn that they may
take over. The session is watched (a round trip every second); when it is lost, everything
that depended on its locks is told at once (`on_lost`), then it reconnects.

    coord = Coordinator(url)
    coord.listen(EVENTS_CHANNEL, bus.poke)
    await coord.open()
    if await coord.try_lock(LEADER_NS, SCHEDULER_KEY): ...
"""

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("vmplane.coordination")

EVENTS_CHANNEL = "vmplane_events"
"""NOTIFYed by every transaction that writes events (payload: nothing; readers go by seq)."""
TASKS_CHANNEL = "vmplane_tasks"
"""NOTIFYed when tasks are queued (new, requeued or handed to another replica)."""

# Session advisory locks, in the two-key form (namespace, key).
SINGLETON_NS = 7421
SCHEDULER_KEY = 1
"""Held by the replica that runs the cron scheduler and housekeeping."""
STARTUP_KEY = 2
"""Held while a replica bootstraps the store and registers its nodes (one at a time)."""
NODE_NS = 7422
"""(NODE_NS, lock_key(node_id)): held by the replica serving that local node."""
HOME_NS = 7423
"""(HOME_NS, lock_key(home)) taken *shared* by every live replica of a data dir: counting its
holders tells how many replicas share that data dir's nodes."""


def lock_key(name: str) -> int:
    """A stable signed 32-bit advisory lock key for a name."""
    n = zlib.crc32(name.encode())
    return n - 2**32 if n >= 2**31 else n


async def notify(conn: AsyncConnection, channel: str) -> None:
    """NOTIFY `channel` when `conn`'s transaction commits (nothing on SQLite, where one
    process owns the store). PostgreSQL folds repeats within a transaction into one."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text(f"NOTIFY {channel}"))


class Coordinator:
    WATCH_SECONDS = 1.0

    def __init__(self, url: str) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._conn: Any = None
        self._op = asyncio.Lock()  # asyncpg runs one statement at a time per connection
        self._listeners: dict[str, list[Callable[[], None]]] = {}
        self.on_lost: list[Callable[[], None]] = []
        """Called when the session is lost: every lock it held is gone."""
        self.on_connected: list[Callable[[], None]] = []
        """Called after each (re)connection, listeners in place (catch up on what was missed)."""
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self.generation = 0
        """Counts sessions: a lock taken in an earlier generation is gone."""

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def listen(self, channel: str, callback: Callable[[], None]) -> None:
        """Call `callback()` on every NOTIFY of `channel` (register before `open`)."""
        self._listeners.setdefault(channel, []).append(callback)

    async def open(self) -> None:
        await self._connect()
        self._watch = asyncio.create_task(self._watchdog(), name="coordination")

    async def close(self) -> None:
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        if self._conn is not None:
            try:
                await asyncio.wait_for(self._conn.close(), 5)
            except Exception:
                self._conn.terminate()
            self._conn = None

    async def _connect(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self._dsn, timeout=10, server_settings={"application_name": "vmplane-coordination"})
        for channel, callbacks in self._listeners.items():
            for cb in callbacks:
                await conn.add_listener(channel, lambda *_a, cb=cb: cb())
        conn.add_termination_listener(lambda _c: self._lost())
        self._conn = conn
        self.generation += 1
        for cb in self.on_connected:
            cb()

    def _lost(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        if not conn.is_closed():
            conn.terminate()
        if not self._closing:
            log.error("lost the coordination session with PostgreSQL: its locks are gone")
            for cb in self.on_lost:
                cb()

    async def _watchdog(self) -> None:
        delay = 0.2
        while True:
            await asyncio.sleep(self.WATCH_SECONDS)
            if self.connected:
                try:
                    await self.fetchval("SELECT 1", timeout=5)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("coordination session check failed: %s", exc)
                    self._lost()
            try:
                await self._connect()
                log.warning("coordination session with PostgreSQL restored")
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot reconnect the coordination session: %s", exc)
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)

    async def fetchval(self, sql: str, *args: Any, timeout: float = 10) -> Any:
        async with self._op:
            if self._conn is None:
                raise ConnectionError("no coordination session")
            return await self._conn.fetchval(sql, *args, timeout=timeout)

    async def fetch(self, sql: str, *args: Any, timeout: float = 10) -> list[Any]:
        async with self._op:
            if self._conn is None:
                raise ConnectionError("no coordination session")
            return list(await self._conn.fetch(sql, *args, timeout=timeout))

    async def try_lock(self, ns: int, key: int, *, shared: bool = False) -> bool:
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        return bool(await self.fetchval(f"SELECT {fn}($1::int, $2::int)", ns, key))

    async def unlock(self, ns: int, key: int, *, shared: bool = False) -> None:
        fn = "pg_advisory_unlock_shared" if shared else "pg_advisory_unlock"
        await self.fetchval(f"SELECT {fn}($1::int, $2::int)", ns, key)

    @asynccontextmanager
    async def locked(self, ns: int, key: int, *, timeout: float = 120) -> AsyncIterator[None]:
        """Hold an exclusive session lock for the block, waiting (by polling, so that the
        session stays free for others) until it is free."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await self.try_lock(ns, key):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"advisory lock ({ns}, {key}) still held by another replica after {timeout:.0f} s")
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            if self.connected:
                await self.unlock(ns, key)

    async def holders(self, ns: int) -> dict[int, int]:
        """{key: number of sessions holding it} for the advisory locks of namespace `ns` in
        this database (key as given to the lock functions, signed)."""
        rows = await self.fetch(
            "SELECT objid::bigint AS k, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = $1::int::oid AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY objid",
            ns,
        )
        return {(r["k"] - 2**32 if r["k"] >= 2**31 else r["k"]): r["n"] for r in rows}

    async def my_locks(self, ns: int) -> set[int]:
        """Keys of namespace `ns` this session holds."""
        rows = await self.fetch(
            "SELECT objid::bigint AS k FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = $1::int::oid"
            " AND objsubid = 2 AND pid = pg_backend_pid()",
            ns,
        )
        return {r["k"] - 2**32 if r["k"] >= 2**31 else r["k"] for r in rows}
