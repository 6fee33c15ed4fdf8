"""SQL for what reaches into guests: forwarded host ports and one-time console tokens."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import console_tokens, host_ports

PORT_SCOPE = "host"
"""Forwarded ports bind on the node's loopback; until VMs span hosts' own loopbacks
(scale-out), one scope keeps them unique across the installation."""


async def reserve_ports(conn: AsyncConnection, vm_id: str, ports: Sequence[tuple[int, str]]) -> int | None:
    """Reserve host ports for a VM; returns the first port already taken (nothing reserved)."""
    for port, proto in ports:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(host_ports), [{"node_scope": PORT_SCOPE, "port": port, "protocol": proto, "vm_id": vm_id}])
        except IntegrityError:
            await conn.execute(delete(host_ports).where(host_ports.c.vm_id == vm_id))
            return port
    return None


async def reserve_port(conn: AsyncConnection, vm_id: str, port: int, proto: str) -> bool:
    """Reserve one more host port for a VM; False if another VM holds it (nothing changes)."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(host_ports), [{"node_scope": PORT_SCOPE, "port": port, "protocol": proto, "vm_id": vm_id}])
    except IntegrityError:
        return False
    return True


async def taken_ports(conn: AsyncConnection) -> set[tuple[int, str]]:
    return {(r.port, r.protocol) for r in (await conn.execute(select(host_ports))).all()}


async def release_ports(conn: AsyncConnection, vm_id: str) -> None:
    await conn.execute(delete(host_ports).where(host_ports.c.vm_id == vm_id))


async def add_console_token(conn: AsyncConnection, token_hash: str, vm_id: str, expires_at: float, now: float, holder: str | None = None) -> None:
    await conn.execute(delete(console_tokens).where(console_tokens.c.expires_at < now))
    await conn.execute(insert(console_tokens), [{"token_hash": token_hash, "vm_id": vm_id, "expires_at": expires_at, "used": False, "holder": holder}])


async def use_console_token(conn: AsyncConnection, token_hash: str, vm_id: str, now: float) -> Row[*tuple[Any, ...]] | None:
    """Spend a token: its row once, if it is for this VM and not expired; None otherwise."""
    res = await conn.execute(
        update(console_tokens)
        .where(
            console_tokens.c.token_hash == token_hash,
            console_tokens.c.vm_id == vm_id,
            console_tokens.c.used.is_(False),
            console_tokens.c.expires_at >= now,
        )
        .values(used=True)
    )
    if res.rowcount != 1:
        return None
    return (await conn.execute(select(console_tokens).where(console_tokens.c.token_hash == token_hash))).first()
