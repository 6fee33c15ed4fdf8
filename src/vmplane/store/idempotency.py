"""SQL for remembered responses to POSTs that carried an Idempotency-Key."""

from typing import Any

from sqlalchemy import Row, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import idempotency_keys


async def lookup(conn: AsyncConnection, caller: str, key: str) -> Row | None:
    q = select(idempotency_keys).where(idempotency_keys.c.caller == caller, idempotency_keys.c.key == key)
    return (await conn.execute(q)).first()


async def remember(conn: AsyncConnection, row: dict[str, Any]) -> bool:
    """Store a response; False if another request stored one for this key first."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(idempotency_keys), [row])
    except IntegrityError:
        return False
    return True


async def forget_older_than(conn: AsyncConnection, before: float) -> None:
    await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before))


async def forget(conn: AsyncConnection, caller: str, key: str) -> None:
    await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.caller == caller, idempotency_keys.c.key == key))
