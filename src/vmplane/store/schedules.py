"""SQL for schedules and their runs."""

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Row, case, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import schedule_runs as runs
from .tables import schedules


async def insert_schedule(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(schedules), [row])


async def get_schedule(conn: AsyncConnection, schedule_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(schedules).where(schedules.c.id == schedule_id))).first()


async def backup_schedule(conn: AsyncConnection, vm_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(schedules).where(schedules.c.backup_vm_id == vm_id))).first()


async def list_schedules(conn: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(schedules).order_by(schedules.c.seq))).all()


async def set_schedule(conn: AsyncConnection, schedule_id: str, **values: Any) -> None:
    await conn.execute(update(schedules).where(schedules.c.id == schedule_id).values(**values))


async def delete_schedule(conn: AsyncConnection, schedule_id: str) -> None:
    await conn.execute(delete(runs).where(runs.c.schedule_id == schedule_id))
    await conn.execute(delete(schedules).where(schedules.c.id == schedule_id))


async def due(conn: AsyncConnection, now: float) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(schedules).where(schedules.c.enabled.is_(True), schedules.c.next_run <= now).order_by(schedules.c.next_run)
    return (await conn.execute(q)).all()


async def next_due_time(conn: AsyncConnection) -> float | None:
    q = select(func.min(schedules.c.next_run)).where(schedules.c.enabled.is_(True))
    return cast(float | None, (await conn.execute(q)).scalar())


async def advance(conn: AsyncConnection, schedule_id: str, expected_next: float, new_next: float, **values: Any) -> bool:
    """Move a due schedule to its next time if nobody else did (compare-and-set): the one
    caller that gets True runs this due time, whatever the number of schedulers."""
    res = await conn.execute(
        update(schedules)
        .where(schedules.c.id == schedule_id, schedules.c.next_run == expected_next, schedules.c.enabled.is_(True))
        .values(next_run=new_next, **values)
    )
    return res.rowcount == 1


async def add_run(conn: AsyncConnection, row: dict[str, Any]) -> int:
    res = await conn.execute(insert(runs).returning(runs.c.seq), [row])
    return cast(int, res.scalar_one())


async def set_run(conn: AsyncConnection, seq: int, **values: Any) -> None:
    await conn.execute(update(runs).where(runs.c.seq == seq).values(**values))


async def open_runs(conn: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(runs).where(runs.c.state.in_(["pending", "running"])))).all()


async def count_run(conn: AsyncConnection, schedule_id: str, ok: bool, error: str | None, now: float) -> None:
    column = schedules.c.success_count if ok else schedules.c.failure_count
    await conn.execute(
        update(schedules).where(schedules.c.id == schedule_id).values({column.name: column + 1, "last_error": error, "updated_at": now})
    )


async def stats(conn: AsyncConnection, org_id: str, team_id: str | None = None) -> Row[*tuple[Any, ...]]:
    """Counts of an organization's schedules (of one team's with `team_id`) and their runs."""
    q = select(
        func.count().label("total"),
        func.coalesce(func.sum(case((schedules.c.enabled.is_(True), 1), else_=0)), 0).label("enabled"),
        func.coalesce(func.sum(schedules.c.run_count), 0).label("runs"),
        func.coalesce(func.sum(schedules.c.success_count), 0).label("ok"),
        func.coalesce(func.sum(schedules.c.failure_count), 0).label("failed"),
    ).where(schedules.c.org_id == org_id)
    if team_id is not None:
        q = q.where(schedules.c.team_id == team_id)
    return (await conn.execute(q)).one()

