"""SQL for remembered responses to POSTs that carried an Idempotency-Key."""

from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import idempotency_keys


async def lookup(conn: AsyncConnection, caller: str, key: str) -> Row[*tuple[Any, ...]] | None:
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


async def complete(conn: AsyncConnection, caller: str, key: str, *, status_code: int, headers: list[Any], body: str) -> None:
    """Fill in the response of a key reserved (with status 0) while its request ran."""
    await conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.caller == caller, idempotency_keys.c.key == key)
        .values(status_code=status_code, headers=headers, body=body)
    )


async def forget_older_than(conn: AsyncConnection, before: float) -> None:
    await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.created_at < before))


async def forget(conn: AsyncConnection, caller: str, key: str) -> None:
    await conn.execute(delete(idempotency_keys).where(idempotency_keys.c.caller == caller, idempotency_keys.c.key == key))
