"""SQL for imports."""

from typing import Any, Sequence

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import imports


async def insert_import(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(imports), [row])


async def get_import(conn: AsyncConnection, import_id: str) -> Row | None:
    return (await conn.execute(select(imports).where(imports.c.id == import_id))).first()


async def import_of_job(conn: AsyncConnection, job_id: str) -> Row | None:
    return (await conn.execute(select(imports).where(imports.c.job_id == job_id))).first()


async def list_imports(conn: AsyncConnection, org_id: str, *, after_seq: int | None, limit: int) -> Sequence[Row]:
    q = select(imports).where(imports.c.org_id == org_id)
    if after_seq is not None:
        q = q.where(imports.c.seq > after_seq)
    return (await conn.execute(q.order_by(imports.c.seq).limit(limit))).all()


async def set_import(conn: AsyncConnection, import_id: str, **values: Any) -> None:
    await conn.execute(update(imports).where(imports.c.id == import_id).values(**values))


async def delete_import(conn: AsyncConnection, import_id: str) -> None:
    await conn.execute(delete(imports).where(imports.c.id == import_id))
