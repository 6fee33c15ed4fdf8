"""SQL for the event log. `emit` writes inside the caller's transaction, so an event is
committed with the change it describes or not at all."""

import json
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Row, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from .coordination import EVENTS_CHANNEL
from .tables import events

_EVENT_ORDER_LOCK = 7_420_002
EVENTS_FLAG = "vmplane.events"  # events queued on a transaction by `emit`, in its connection's info


async def emit(
    conn: AsyncConnection, type_: str, resource: str | None, data: dict[str, Any], org_id: str | None, team_id: str | None = None
) -> None:
    """Queue an event about `resource`, seen by `org_id` only (None: by every organization),
    and within it by its credentials of the whole organization and of team `team_id` only
    (None: by the whole organization's only)."""
    await emit_many(conn, [(type_, resource, data, org_id, team_id)])


async def emit_many(conn: AsyncConnection, items: Sequence[tuple[str, str | None, dict[str, Any], str | None, str | None]]) -> None:
    """Queue events (type, resource, data, org, team) on the transaction; `flush` writes
    them just before it commits."""
    if items:
        now = clock.now()
        conn.info.setdefault(EVENTS_FLAG, []).extend(
            {"type": t, "ts": now, "resource": r, "data": d, "org_id": o, "team_id": tm} for t, r, d, o, tm in items
        )


async def flush(conn: AsyncConnection) -> bool:
    """Write the transaction's queued events, as its last statements. True if there were any.

    On PostgreSQL sequence values are not handed out in commit order; the advisory lock taken
    here makes event-writing transactions commit in `seq` order, so a reader resuming after
    event N can never miss one below N that commits later. Taking it last, when the
    transaction has every row lock it needs, means it can never be part of a deadlock.
    """
    rows = conn.info.pop(EVENTS_FLAG, None)
    if not rows:
        return False
    if conn.dialect.name == "postgresql":
        # One statement: the lock, the NOTIFY (every replica's bus wakes at commit) and the
        # rows. Every event-writing transaction waits for this lock, so it is held for as
        # short a time as can be: from this statement to the commit.
        await conn.execute(
            _PG_INSERT,
            {
                "type": [r["type"] for r in rows],
                "ts": [r["ts"] for r in rows],
                "resource": [r["resource"] for r in rows],
                "org_id": [r["org_id"] for r in rows],
                "team_id": [r["team_id"] for r in rows],
                "data": [json.dumps(r["data"]) for r in rows],
            },
        )
    else:
        await conn.execute(_INSERT, rows)
    return True


_INSERT = insert(events)
_PG_INSERT = text(
    f"WITH ordered AS MATERIALIZED (SELECT pg_advisory_xact_lock({_EVENT_ORDER_LOCK}), pg_notify('{EVENTS_CHANNEL}', ''))"
    " INSERT INTO events (type, ts, resource, org_id, team_id, data)"
    " SELECT t, ts, r, o, tm, d::json FROM ordered,"
    " unnest(CAST(:type AS text[]), CAST(:ts AS float8[]), CAST(:resource AS text[]), CAST(:org_id AS text[]),"
    " CAST(:team_id AS text[]), CAST(:data AS text[]))"
    " AS u(t, ts, r, o, tm, d)"
)


async def after(
    conn: AsyncConnection, seq: int, *, until: int | None = None, limit: int = 1000, types: Sequence[str] | None = None
) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(events).where(events.c.seq > seq)
    if until is not None:
        q = q.where(events.c.seq <= until)
    if types:
        q = q.where(events.c.type.in_(types))
    return (await conn.execute(q.order_by(events.c.seq).limit(limit))).all()


async def last_seq(conn: AsyncConnection) -> int:
    return cast(int, (await conn.execute(select(func.coalesce(func.max(events.c.seq), 0)))).scalar_one())


async def prune(conn: AsyncConnection, *, before: float, keep_last: int) -> int:
    """Delete events older than `before`, and any beyond the newest `keep_last`."""
    top = await last_seq(conn)
    res = await conn.execute(delete(events).where((events.c.ts < before) | (events.c.seq <= top - keep_last)))
    return res.rowcount
