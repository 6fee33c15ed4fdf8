"""Event and audit ids are cursors (SSE `Last-Event-ID`, the webhook delivery cursor, `/audit`
paging): retention that empties a log must not let the next row take an id already handed
out. On a fresh store (both backends) and on a SQLite store upgraded from 0023 whose log had
been emptied, with the webhook cursor above every row left."""

from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from vmplane import clock
from vmplane.store import Store
from vmplane.store import events as ev_q
from vmplane.store import tenancy as tenancy_q
from vmplane.store.tables import audit_log, events, meta

from .test_migration_names import on_connection, upgrade_to


def audit_row() -> dict[str, Any]:
    return {"ts": clock.now(), "org_id": "org-a", "actor": "user-a", "method": "GET", "route": "/api/v1/vms",
            "path": "/api/v1/vms", "status": 200, "outcome": "success"}  # fmt: skip


async def emit_one(store: Store) -> int:
    async with store.write() as conn:
        await ev_q.emit(conn, "vm.created", "vm-a", {}, "org-a")
    async with store.read() as conn:
        return await ev_q.last_seq(conn)


async def test_an_emptied_log_hands_out_no_id_twice(database_url: str) -> None:
    store = Store(database_url)
    await store.open()
    try:
        first = [await emit_one(store) for _ in range(3)]
        async with store.write() as conn:
            audit_first = await tenancy_q.add_audit_row(conn, audit_row())
            assert await ev_q.prune(conn, before=clock.now() + 60, keep_last=1000) == 3  # retention empties both logs
            assert await tenancy_q.prune_audit(conn, clock.now() + 60) == 1
        assert await emit_one(store) > max(first)  # SQLite without AUTOINCREMENT: 1 again
        async with store.write() as conn:
            assert await tenancy_q.add_audit_row(conn, audit_row()) > audit_first
    finally:
        await store.close()


async def test_upgrade_keeps_ids_above_the_webhook_cursor(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/vmplane.db"

    def seed(conn: Connection) -> None:
        conn.execute(insert(events), [{"type": "vm.created", "ts": 1.0, "resource": f"vm-{i}", "data": {}, "org_id": "org-a"} for i in range(5)])
        conn.execute(events.delete().where(events.c.seq <= 3))  # retention took the first three
        conn.execute(insert(meta).values(key="webhooks_cursor", value="9"))  # a log emptied once before: the cursor is ahead

    await on_connection(url, upgrade_to("0023"))
    await on_connection(url, seed)
    store = Store(url)
    await store.open()  # upgrades to head
    try:
        async with store.read() as conn:
            kept = [r.seq for r in await ev_q.after(conn, 0)]
        assert kept == [4, 5]
        assert await emit_one(store) == 10  # past the cursor, so the webhook deliverer sees it
        rows = await on_connection(url, lambda conn: conn.execute(select(audit_log.c.seq)).all())
        assert rows == []
    finally:
        await store.close()
