"""SQL for imports. Reads give each import its job's team (`job_team`): an import is seen by
the whole organization's credentials and its team's."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import imports, jobs

_WITH_TEAM = select(imports, jobs.c.team_id.label("job_team")).outerjoin(jobs, jobs.c.id == imports.c.job_id)


async def insert_import(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(imports), [row])


async def get_import(conn: AsyncConnection, import_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(_WITH_TEAM.where(imports.c.id == import_id))).first()


async def import_of_job(conn: AsyncConnection, job_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(_WITH_TEAM.where(imports.c.job_id == job_id))).first()


async def list_imports(conn: AsyncConnection, org_id: str, *, after_seq: int | None, limit: int, team_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    q = _WITH_TEAM.where(imports.c.org_id == org_id)
    if team_id is not None:
        q = q.where(jobs.c.team_id == team_id)
    if after_seq is not None:
        q = q.where(imports.c.seq > after_seq)
    return (await conn.execute(q.order_by(imports.c.seq).limit(limit))).all()


async def set_import(conn: AsyncConnection, import_id: str, **values: Any) -> None:
    await conn.execute(update(imports).where(imports.c.id == import_id).values(**values))


async def delete_import(conn: AsyncConnection, import_id: str) -> None:
    await conn.execute(delete(imports).where(imports.c.id == import_id))
