"""SQL for node agents: join tokens, node credentials, heartbeats, offline nodes, cordons."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import NodeStatus, VmStatus
from . import vms as vm_q
from .tables import node_tokens, nodes, vms

REMOTE = "remote"


# -- join tokens -------------------------------------------------------------------------------


async def insert_token(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(node_tokens), [row])


async def list_tokens(conn: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(node_tokens).order_by(node_tokens.c.seq.desc()))).all()


async def get_token(conn: AsyncConnection, token_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(node_tokens).where(node_tokens.c.id == token_id))).first()


async def token_by_digest(conn: AsyncConnection, digest: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(node_tokens).where(node_tokens.c.digest == digest))).first()


async def spend_token(conn: AsyncConnection, token_id: str, now: float) -> bool:
    """Count one use of a token if it is still good (not revoked, not expired, a one-time token
    not used yet): atomic, so a one-time token joins one node even when two try at once."""
    t = node_tokens.c
    res = await conn.execute(
        update(node_tokens)
        .where(t.id == token_id, t.revoked_at.is_(None), (t.expires_at.is_(None)) | (t.expires_at > now), (~t.one_time) | (t.uses == 0))
        .values(uses=t.uses + 1, last_used_at=now)
    )
    return res.rowcount == 1


async def revoke_token(conn: AsyncConnection, token_id: str, now: float) -> bool:
    res = await conn.execute(update(node_tokens).where(node_tokens.c.id == token_id, node_tokens.c.revoked_at.is_(None)).values(revoked_at=now))
    return res.rowcount == 1


# -- remote nodes --------------------------------------------------------------------------------


async def remote_nodes(conn: AsyncConnection) -> Sequence[Row[*tuple[Any, ...]]]:
    return (await conn.execute(select(nodes).where(nodes.c.driver == REMOTE).order_by(nodes.c.seq))).all()


async def node_by_credential(conn: AsyncConnection, digest: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(nodes).where(nodes.c.credential_digest == digest))).first()


async def set_node(conn: AsyncConnection, node_id: str, **values: Any) -> None:
    await conn.execute(update(nodes).where(nodes.c.id == node_id).values(**values))


async def heartbeat(conn: AsyncConnection, node_id: str, now: float) -> bool:
    """Record a heartbeat; True if the node was offline and is online again."""
    back = await conn.execute(
        update(nodes).where(nodes.c.id == node_id, nodes.c.status == NodeStatus.OFFLINE.value, nodes.c.credential_digest.is_not(None))
        .values(status=NodeStatus.ONLINE.value, heartbeat_at=now, updated_at=now)
    )  # fmt: skip
    if back.rowcount == 1:
        return True
    await conn.execute(update(nodes).where(nodes.c.id == node_id).values(heartbeat_at=now))
    return False


async def mark_offline(conn: AsyncConnection, node_id: str, silent_since: float | None, now: float) -> bool:
    """Mark a remote node offline if it is online (and, with `silent_since`, has not sent a
    heartbeat since then): one replica wins when several look at once."""
    cond = [nodes.c.id == node_id, nodes.c.status == NodeStatus.ONLINE.value]
    if silent_since is not None:
        cond.append(nodes.c.heartbeat_at < silent_since)
    res = await conn.execute(update(nodes).where(*cond).values(status=NodeStatus.OFFLINE.value, updated_at=now))
    return res.rowcount == 1


UNKNOWABLE = (VmStatus.PROVISIONING.value, VmStatus.DELETING.value, VmStatus.ERROR.value, VmStatus.UNKNOWN.value)
"""VMs on a lost node that keep their status: not there yet, on their way out, or already
showing a problem."""


async def vms_unknown(conn: AsyncConnection, node_id: str, now: float) -> list[str]:
    """Every VM on the node whose state nobody can know now becomes `unknown`."""
    ids = [r[0] for r in (await conn.execute(select(vms.c.id).where(vms.c.node_id == node_id, vms.c.status.not_in(UNKNOWABLE)))).all()]
    for vm_id in ids:
        await vm_q.set_status(conn, vm_id, VmStatus.UNKNOWN.value, updated_at=now)
    return ids
