"""SQL for webhooks and their delivery outbox."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import webhook_deliveries as dlv
from .tables import webhooks


async def insert_webhook(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(webhooks), [row])


async def get_webhook(conn: AsyncConnection, webhook_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()


async def list_webhooks(conn: AsyncConnection, *, enabled_only: bool = False) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(webhooks)
    if enabled_only:
        q = q.where(webhooks.c.enabled.is_(True))
    return (await conn.execute(q.order_by(webhooks.c.seq))).all()


async def set_webhook(conn: AsyncConnection, webhook_id: str, **values: Any) -> None:
    await conn.execute(update(webhooks).where(webhooks.c.id == webhook_id).values(**values))


async def delete_webhook(conn: AsyncConnection, webhook_id: str) -> None:
    await conn.execute(delete(dlv).where(dlv.c.webhook_id == webhook_id))
    await conn.execute(delete(webhooks).where(webhooks.c.id == webhook_id))


async def enqueue(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    if rows:
        await conn.execute(insert(dlv), rows)


async def claim_due(conn: AsyncConnection, *, owner: str, now: float, lease_until: float, limit: int, postgres: bool) -> Sequence[Row[*tuple[Any, ...]]]:
    """Take up to `limit` deliveries that are due (pending, or whose worker's lease ran out)
    and first in line: no delivery of the same webhook and resource for an earlier event is
    still pending or in flight, so a receiver gets each resource's events in their order (one
    being retried holds back the later ones of its resource, and only those)."""
    prior = dlv.alias("prior")
    earlier_open = (
        select(prior.c.seq)
        .where(
            prior.c.webhook_id == dlv.c.webhook_id,
            prior.c.resource == dlv.c.resource,
            prior.c.event_seq < dlv.c.event_seq,
            prior.c.status.in_(("pending", "delivering")),
        )
        .exists()
    )
    due = (
        select(dlv.c.seq)
        .where(
            (((dlv.c.status == "pending") & (dlv.c.next_attempt_at <= now)) | ((dlv.c.status == "delivering") & (dlv.c.lease_expires < now)))
            & ~earlier_open
        )
        .order_by(dlv.c.next_attempt_at)
        .limit(limit)
    )
    if postgres:
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(dlv)
        .where(dlv.c.seq.in_(due.scalar_subquery()))
        .values(status="delivering", lease_owner=owner, lease_expires=lease_until, updated_at=now)
        .returning(*dlv.c)
    )
    return (await conn.execute(stmt)).all()


async def record_attempt(conn: AsyncConnection, delivery_id: str, owner: str, **values: Any) -> bool:
    res = await conn.execute(
        update(dlv)
        .where(dlv.c.id == delivery_id, dlv.c.lease_owner == owner, dlv.c.status == "delivering")
        .values(lease_owner=None, lease_expires=None, **values)
    )
    return res.rowcount == 1


async def deliveries(conn: AsyncConnection, webhook_id: str, *, after_seq: int | None, limit: int) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(dlv).where(dlv.c.webhook_id == webhook_id)
    if after_seq is not None:
        q = q.where(dlv.c.seq < after_seq)
    return (await conn.execute(q.order_by(dlv.c.seq.desc()).limit(limit))).all()
