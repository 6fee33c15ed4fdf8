"""SQL for small key/value facts about the installation (cluster id, creation time)."""

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import meta


async def get(conn: AsyncConnection, key: str) -> str | None:
    row = (await conn.execute(select(meta.c.value).where(meta.c.key == key))).first()
    return None if row is None else row[0]


async def ensure(conn: AsyncConnection, key: str, value: str) -> str:
    """The stored value for `key`, storing `value` first if there is none. Safe when several
    processes (replicas starting together) ensure the same key at once: the first one's
    value stands and every one reads it."""
    insert_once = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(insert_once(meta).values(key=key, value=value).on_conflict_do_nothing(index_elements=[meta.c.key]))
    current = await get(conn, key)
    assert current is not None
    return current


async def put(conn: AsyncConnection, key: str, value: str) -> None:
    if await get(conn, key) is None:
        await conn.execute(insert(meta), [{"key": key, "value": value}])
    else:
        await conn.execute(update(meta).where(meta.c.key == key).values(value=value))
