"""SQL for templates."""

from typing import Any, Sequence

from sqlalchemy import Row, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import templates


async def insert_template(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(templates), [row])


async def get_template(conn: AsyncConnection, ref: str) -> Row | None:
    """A template by id or by name."""
    q = select(templates).where(or_(templates.c.id == ref, templates.c.name == ref))
    return (await conn.execute(q)).first()


async def list_templates(conn: AsyncConnection, *, after_seq: int | None, limit: int, org_id: str | None = None) -> Sequence[Row]:
    """Templates shared with everyone, plus `org_id`'s own."""
    q = select(templates)
    if org_id is not None:
        q = q.where(or_(templates.c.org_id.is_(None), templates.c.org_id == org_id))
    if after_seq is not None:
        q = q.where(templates.c.seq > after_seq)
    return (await conn.execute(q.order_by(templates.c.seq).limit(limit))).all()


async def set_template(conn: AsyncConnection, template_id: str, **values: Any) -> None:
    await conn.execute(update(templates).where(templates.c.id == template_id).values(**values))


async def delete_template(conn: AsyncConnection, template_id: str) -> None:
    await conn.execute(delete(templates).where(templates.c.id == template_id))
