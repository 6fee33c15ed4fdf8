"""SQL for nodes and the resource claims they hold."""

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Float, Integer, Row, bindparam, func, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import NodeStatus
from ..domain.records import held
from .tables import nodes, vms


async def upsert_node(conn: AsyncConnection, row: dict[str, Any]) -> None:
    """Register a node or refresh its capacity; its claims are kept."""
    existing = (await conn.execute(select(nodes.c.id).where(nodes.c.id == row["id"]))).first()
    if existing is None:
        await conn.execute(insert(nodes), [{**row, "cpu_used": 0, "ram_mb_used": 0, "disk_gb_used": 0}])
    else:
        values = {k: v for k, v in row.items() if k not in ("id", "created_at")}
        await conn.execute(update(nodes).where(nodes.c.id == row["id"]).values(**values))


async def get_node(conn: AsyncConnection, node_id: str) -> Row[*tuple[Any, ...]] | None:
    return (await conn.execute(select(nodes).where(nodes.c.id == node_id))).first()


async def list_nodes(conn: AsyncConnection, *, after_seq: int | None = None, limit: int | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
    q = select(nodes)
    if after_seq is not None:
        q = q.where(nodes.c.seq > after_seq)
    q = q.order_by(nodes.c.seq)
    if limit is not None:
        q = q.limit(limit)
    return (await conn.execute(q)).all()


async def set_status(conn: AsyncConnection, node_id: str, status: NodeStatus, now: float) -> None:
    await conn.execute(update(nodes).where(nodes.c.id == node_id).values(status=status.value, updated_at=now))


async def beat(conn: AsyncConnection, node_ids: Sequence[str], now: float) -> None:
    """A heartbeat of nodes this process serves itself (local drivers): one statement for all."""
    if node_ids:
        await conn.execute(update(nodes).where(nodes.c.id.in_(list(node_ids))).values(heartbeat_at=now))


async def set_cordoned(conn: AsyncConnection, node_id: str, cordoned: bool, now: float) -> None:
    await conn.execute(update(nodes).where(nodes.c.id == node_id).values(cordoned=cordoned, updated_at=now))


def _claim_statement(new_vm: bool) -> Any:
    """The claim's UPDATE, its figures bound at execution (a bulk create claims once per VM:
    building the statement each time cost more than running it)."""
    return (
        update(nodes)
        .where(
            nodes.c.id == bindparam("node_id"),
            nodes.c.status == NodeStatus.ONLINE.value,
            nodes.c.cordoned.is_(False) if new_vm else true(),
            nodes.c.cpu_used + bindparam("cpu", type_=Integer) <= nodes.c.cpu_total * bindparam("rc", type_=Float),
            nodes.c.ram_mb_used + bindparam("ram_mb", type_=Integer) <= nodes.c.ram_mb_total * bindparam("rr", type_=Float),
            nodes.c.disk_gb_used + bindparam("disk_gb", type_=Integer) <= nodes.c.disk_gb_total * bindparam("rd", type_=Float),
        )
        .values(
            cpu_used=nodes.c.cpu_used + bindparam("cpu", type_=Integer),
            ram_mb_used=nodes.c.ram_mb_used + bindparam("ram_mb", type_=Integer),
            disk_gb_used=nodes.c.disk_gb_used + bindparam("disk_gb", type_=Integer),
            updated_at=bindparam("now", type_=Float),
        )
    )


_CLAIM = {new_vm: _claim_statement(new_vm) for new_vm in (True, False)}


async def claim(
    conn: AsyncConnection,
    node_id: str,
    cpu: int,
    ram_mb: int,
    disk_gb: int,
    ratios: tuple[float, float, float],
    now: float,
    *,
    new_vm: bool = True,
) -> bool:
    """Atomically add a claim to a node if it stays within capacity × overcommit (and, for a
    new VM, if the node is not cordoned)."""
    rc, rr, rd = ratios
    params = {
        "node_id": node_id,
        "cpu": cpu,
        "ram_mb": ram_mb,
        "disk_gb": disk_gb,
        "rc": float(rc),
        "rr": float(rr),
        "rd": float(rd),
        "now": now,
    }
    res = await conn.execute(_CLAIM[new_vm], params)
    return res.rowcount == 1


async def release(conn: AsyncConnection, node_id: str, cpu: int, ram_mb: int, disk_gb: int, now: float) -> None:
    await conn.execute(
        update(nodes)
        .where(nodes.c.id == node_id)
        .values(
            cpu_used=nodes.c.cpu_used - cpu,
            ram_mb_used=nodes.c.ram_mb_used - ram_mb,
            disk_gb_used=nodes.c.disk_gb_used - disk_gb,
            updated_at=now,
        )
    )


async def recompute_usage(conn: AsyncConnection, now: float) -> None:
    """Set every node's `*_used` to the sum of what the VMs placed on it hold (`domain.held`).

    On PostgreSQL the node rows are locked first: claims in flight on other replicas commit
    before the sums are read (each statement sees what is committed when it starts), and
    new ones wait, so no claim is counted twice or lost.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(select(nodes.c.id).order_by(nodes.c.id).with_for_update())
    sums: dict[str, list[int]] = {}
    placed = select(vms.c.node_id, vms.c.cpu, vms.c.ram_mb, vms.c.disk_gb, vms.c.running_spec).where(vms.c.node_id.is_not(None))
    for r in (await conn.execute(placed)).all():
        total = sums.setdefault(r.node_id, [0, 0, 0])
        for i, v in enumerate(held(r.cpu, r.ram_mb, r.disk_gb, r.running_spec)):
            total[i] += v
    for node in (await conn.execute(select(nodes.c.id, nodes.c.cpu_used, nodes.c.ram_mb_used, nodes.c.disk_gb_used))).all():
        want = tuple(sums.get(node.id, (0, 0, 0)))
        if want != (node.cpu_used, node.ram_mb_used, node.disk_gb_used):
            await conn.execute(
                update(nodes)
                .where(nodes.c.id == node.id)
                .values(cpu_used=want[0], ram_mb_used=want[1], disk_gb_used=want[2], updated_at=now)
            )


async def cluster_totals(conn: AsyncConnection) -> Row[*tuple[Any, ...]]:
    q = select(
        func.coalesce(func.sum(nodes.c.cpu_total), 0).label("cpu_total"),
        func.coalesce(func.sum(nodes.c.cpu_used), 0).label("cpu_used"),
        func.coalesce(func.sum(nodes.c.ram_mb_total), 0).label("ram_mb_total"),
        func.coalesce(func.sum(nodes.c.ram_mb_used), 0).label("ram_mb_used"),
        func.coalesce(func.sum(nodes.c.disk_gb_total), 0).label("disk_gb_total"),
        func.coalesce(func.sum(nodes.c.disk_gb_used), 0).label("disk_gb_used"),
        func.count().label("count"),
    )
    return (await conn.execute(q)).one()


def agent_urls_of(store: Any) -> Callable[[], Awaitable[list[tuple[str, str]]]]:
    """Where the node agents are, read from `store` at each call: (node id, advertised URL)
    of each node run by an agent (outbound.Outbound keeps requests away from them)."""

    async def agent_urls() -> list[tuple[str, str]]:
        async with store.read() as conn:
            rows = (
                await conn.execute(select(nodes.c.id, nodes.c.agent_url).where(nodes.c.agent_url.is_not(None)).order_by(nodes.c.seq))
            ).all()
        return [(r.id, r.agent_url) for r in rows if r.agent_url]

    return agent_urls
