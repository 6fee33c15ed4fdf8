"""Migration 0021 with data in place, on SQLite and PostgreSQL: tasks, jobs and events get the
team of what they act on; webhooks their owner from `created_by`; schedules and deployments
the empty scope of those made before (they act as their owner's membership)."""

from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from vmplane.store.db import MIGRATIONS

ROWS = [
    "INSERT INTO users (id, name, created_at) VALUES ('usr-1', 'wile', 0)",
    "INSERT INTO memberships (org_id, user_id, role, created_at) VALUES ('org-a', 'usr-1', 'owner', 0)",
    "INSERT INTO vms (id, uuid, name, org_id, team_id, status, cpu, ram_mb, disk_gb, tags, spec, created_at, updated_at)"
    " VALUES ('vm-red', 'u1', 'red-1', 'org-a', 'team-red', 'running', 1, 256, 1, '[]', '{}', 0, 0),"
    " ('vm-none', 'u2', 'none-1', 'org-a', NULL, 'running', 1, 256, 1, '[]', '{}', 0, 0)",
    "INSERT INTO jobs (id, type, state, org_id, created_by, total, n_succeeded, n_failed, n_cancelled, progress_sum,"
    " cancel_requested, created_at, updated_at) VALUES"
    " ('job-red', 'vm-stop', 'succeeded', 'org-a', 'wile', 1, 1, 0, 0, 100, false, 0, 0),"
    " ('job-mixed', 'vm-stop', 'succeeded', 'org-a', 'wile', 2, 2, 0, 0, 200, false, 0, 0)",
    "INSERT INTO tasks (id, job_id, org_id, type, resource_id, state, progress, payload, attempts, cancel_requested, created_at) VALUES"
    " ('task-1', 'job-red', 'org-a', 'vm-stop', 'vm-red', 'succeeded', 100, '{}', 1, false, 0),"
    " ('task-2', 'job-mixed', 'org-a', 'vm-stop', 'vm-red', 'succeeded', 100, '{}', 1, false, 0),"
    " ('task-3', 'job-mixed', 'org-a', 'vm-stop', 'vm-none', 'succeeded', 100, '{}', 1, false, 0)",
    "INSERT INTO events (type, ts, resource, org_id, data) VALUES ('vm.stopped', 0, 'vm-red', 'org-a', '{}'),"
    " ('job.completed', 0, 'job-red', 'org-a', '{}'), ('job.completed', 0, 'job-mixed', 'org-a', '{}')",
    "INSERT INTO webhooks (id, org_id, url, events, enabled, timeout_sec, retry_count, headers, secret, created_by, created_at, updated_at, format)"
    " VALUES ('whk-1', 'org-a', 'http://127.0.0.1:1/', '[\"*\"]', true, 5, 1, '{}', 'whsec_x', 'wile', 0, 0, 'vmplane')",
]


def _upgrade(conn: Connection, to: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, to)


def _migrate_with_data(conn: Connection) -> dict[str, Any]:
    _upgrade(conn, "0019")
    for sql in ROWS:
        conn.execute(text(sql))
    _upgrade(conn, "0021")
    return {
        "tasks": dict(conn.execute(text("SELECT id, team_id FROM tasks")).all()),
        "jobs": dict(conn.execute(text("SELECT id, team_id FROM jobs")).all()),
        "events": [tuple(r) for r in conn.execute(text("SELECT resource, team_id FROM events ORDER BY seq")).all()],
        "hook": tuple(conn.execute(text("SELECT owner_id, credential, team_id, read_only, disabled_reason FROM webhooks")).one()),
    }


async def test_0021_fills_in_teams_and_owners(empty_database_url: str) -> None:
    if empty_database_url.startswith("sqlite"):  # as the store runs it: on sqlite3
        engine = create_engine("sqlite+pysqlite://" + empty_database_url.split("://", 1)[1])
        with engine.begin() as sync_conn:
            got = _migrate_with_data(sync_conn)
        engine.dispose()
    else:
        async_engine = create_async_engine(empty_database_url)
        async with async_engine.begin() as conn:
            got = await conn.run_sync(_migrate_with_data)
        await async_engine.dispose()
    assert got["tasks"] == {"task-1": "team-red", "task-2": "team-red", "task-3": None}
    assert got["jobs"] == {"job-red": "team-red", "job-mixed": None}  # tasks of two teams: the organization's
    assert got["events"] == [("vm-red", "team-red"), ("job-red", "team-red"), ("job-mixed", None)]
    assert got["hook"] == ("usr-1", None, None, False, None)
