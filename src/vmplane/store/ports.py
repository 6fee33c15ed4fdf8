"""SQL for moving a VM's reserved forwarded port to another one (a start found it taken).

The reservations themselves are rows of `host_ports` (store.guest: `reserve_ports` at create,
`reserve_port` for the SSH forward, `release_ports` at delete); their primary key (scope,
port, protocol) makes each host port one VM's, stopped or running."""

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .guest import PORT_SCOPE
from .tables import host_ports


async def ports_of(conn: AsyncConnection, vm_id: str) -> set[tuple[int, str]]:
    """The (port, protocol) a VM holds."""
    rows = (await conn.execute(select(host_ports.c.port, host_ports.c.protocol).where(host_ports.c.vm_id == vm_id))).all()
    return {(r.port, r.protocol) for r in rows}


async def move_port(conn: AsyncConnection, vm_id: str, protocol: str, old: int, new: int) -> bool:
    """Give the VM host port `new` in place of `old` (same protocol), in the caller's
    transaction. False, with nothing changed, when another VM holds `new`."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(host_ports), [{"node_scope": PORT_SCOPE, "port": new, "protocol": protocol, "vm_id": vm_id}])
    except IntegrityError:
        return False
    await conn.execute(
        delete(host_ports).where(
            host_ports.c.node_scope == PORT_SCOPE, host_ports.c.port == old, host_ports.c.protocol == protocol, host_ports.c.vm_id == vm_id
        )
    )
    return True
