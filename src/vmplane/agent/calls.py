"""The order of the changing calls this node took, per resource: stale calls are refused.

The control plane's runs of tasks send each changing call with its order (`CallOrder`: the
task's seq, the run's attempt, the call's number in the run; header `wire.ORDER_HEADER`). Calls
on one resource are made in that order, but they can reach the node out of it: a request a
slow network held past its run's lease lands after the calls of the run that took the task
over, and a create landing after the VM's delete would leave a VM no one knows of. So the
node keeps, per resource, the greatest order it took, and refuses a call with a smaller one
(`Superseded`). The marks outlive what they are about (a deleted VM's mark is its tombstone)
and survive restarts (a SQLite file in the data dir, written before the call is carried
out); they are dropped a day after their last call, far beyond any request's time in flight.

Calls with an order on one resource run one at a time (the check, the mark and the call),
so a stale call that passed the check just before a newer one arrived is carried out before
it, not beside it. A call without an order (one not made by a run of a task) is neither
checked nor marked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ..drivers import remote_wire as wire
from ..drivers.base import CallOrder
from ..errors import Superseded

log = logging.getLogger("vmplane.agent")

KEEP_SECONDS = 86400.0
"""how long a resource's mark is kept after its last call"""


class CallLedger:
    """The greatest call order taken per resource, in `path` (opened on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._marks: dict[str, tuple[int, int, int]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # survives the process's death (kill -9), which is what is asked
            db.execute("CREATE TABLE IF NOT EXISTS marks (resource TEXT PRIMARY KEY, seq INTEGER, attempt INTEGER, call INTEGER, at REAL)")
            db.execute("DELETE FROM marks WHERE at < ?", (time.time() - KEEP_SECONDS,))
            self._marks = {r: (s, a, c) for r, s, a, c in db.execute("SELECT resource, seq, attempt, call FROM marks")}
            self._db = db
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def mark(self, resource: str) -> tuple[int, int, int] | None:
        """The greatest order taken on `resource` as (seq, attempt, call), if any."""
        self._open()
        return self._marks.get(resource)

    def _take(self, order: CallOrder) -> None:
        """Refuse `order` if older than the resource's mark; otherwise make it the mark."""
        db = self._open()
        key = (order.seq, order.attempt, order.call)
        mark = self._marks.get(order.resource)
        if mark is not None and key < mark:
            seq, attempt, call = mark
            taken = CallOrder(seq, attempt, call, order.resource)
            message = f"{order.resource}: this call ({order}) is older than one this node already took ({taken}); refused as stale"
            log.warning("%s", message)
            raise Superseded(message, resource=order.resource)
        if key != mark:
            db.execute(
                "INSERT INTO marks VALUES (?, ?, ?, ?, ?) ON CONFLICT(resource) DO UPDATE SET "
                "seq=excluded.seq, attempt=excluded.attempt, call=excluded.call, at=excluded.at",
                (order.resource, *key, time.time()),
            )
            self._marks[order.resource] = key

    @contextlib.asynccontextmanager
    async def taking(self, headers: Mapping[str, Any], *resources: str) -> AsyncIterator[None]:
        """Run the body as the call `headers` describe, on `resources` (the ids the call acts
        on): when its order is about one of them, the call waits for that resource's earlier
        calls, then is refused if stale or marked as the newest, before the body runs."""
        raw = headers.get(wire.ORDER_HEADER)
        order = wire.order_from_wire(raw) if raw else None
        if order is None or order.resource not in resources:
            yield
            return
        key = order.resource
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                self._take(order)
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                self._locks.pop(key, None)
