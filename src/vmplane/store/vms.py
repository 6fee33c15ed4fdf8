"""SQL for VMs and their tags."""

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, Select, bindparam, delete, false, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock
from ..domain import Vm
from ..domain.records import held
from ..event_types import vm_event_for
from . import events as ev_q
from . import nodes as node_q
from .tables import vm_tags, vms

if TYPE_CHECKING:
    from .db import Store


def _vm_data(row: Any) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "status": row.status, "nodeId": row.node_id, "error": row.error}


async def insert_vms(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    await conn.execute(insert(vms), rows)
    tag_rows = [{"vm_id": r["id"], "tag": t} for r in rows for t in r["tags"]]
    if tag_rows:
        await conn.execute(insert(vm_tags), tag_rows)
    await ev_q.emit_many(
        conn,
        [
            (
                "vm.created",
                r["id"],
                {"id": r["id"], "name": r["name"], "status": r["status"], "nodeId": None, "error": None},
                r["org_id"],
                r.get("team_id"),
            )
            for r in rows
        ],
    )


# The two reads clients make most are built once, with bound parameters: building a SELECT
# each time (columns, comparisons, its cache key) cost 3x what running it did (~115 µs of
# a single GET's ~650 µs, measured by bench/floor.py's profile).
_GET_VM = select(vms).where(or_(vms.c.id == bindparam("ref"), vms.c.uuid == bindparam("ref")))


async def get_vm(conn: AsyncConnection, ref: str) -> Vm | None:
    """A VM by native id or uuid."""
    result = await conn.execute(_GET_VM, {"ref": ref})
    keys = tuple(result.keys())
    row = result.first()
    return Vm.from_row(row, keys) if row is not None else None


async def find_vm(store: "Store", ref: str) -> Vm | None:
    """A VM by native id or uuid, read on its own (`get_vm` outside a transaction; on SQLite
    through the store's quick reads)."""
    if store.quick is not None:
        found = store.quick.records(_GET_VM, {"ref": ref}, Vm.from_row)
        return found[0] if found else None
    async with store.read() as conn:
        return await get_vm(conn, ref)


async def placement(conn: AsyncConnection, vm_id: str) -> Row[*tuple[Any, Any]] | None:
    """The VM's row as placement needs it (`node_id`: where it is placed, or None; `status`), locked until
    the transaction ends (PostgreSQL), so that two attempts of one create placing it at once are
    judged one after the other; None if the VM is gone."""
    q = select(vms.c.node_id, vms.c.status).where(vms.c.id == vm_id)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    return (await conn.execute(q)).first()


async def _records(conn: AsyncConnection, q: Any, params: dict[str, Any] | None = None) -> list[Vm]:
    """The VM records a query of whole `vms` rows returns."""
    result = await conn.execute(q, params)
    keys = tuple(result.keys())
    return [Vm.from_row(r, keys) for r in result.all()]


async def get_vms(conn: AsyncConnection, refs: Sequence[str]) -> list[Vm]:
    q = select(vms).where(or_(vms.c.id.in_(refs), vms.c.uuid.in_(refs)))
    return await _records(conn, q)


async def names_taken(conn: AsyncConnection, names: Sequence[str], org_id: str) -> set[str]:
    """Which of `names` organization `org_id` already has VMs by (names are unique per
    organization: another's are never reported)."""
    taken: set[str] = set()
    for i in range(0, len(names), 500):
        q = select(vms.c.name).where(vms.c.org_id == org_id, vms.c.name.in_(names[i : i + 500]))
        taken.update(r[0] for r in (await conn.execute(q)).all())
    return taken


@lru_cache(maxsize=128)
def _list_query(filters: tuple[str, ...]) -> Select[Any]:
    """The page query for the filters given (their values bound at execution): one per set."""
    q = select(vms)
    for f in filters:
        if f == "tag":
            q = q.where(vms.c.id.in_(select(vm_tags.c.vm_id).where(vm_tags.c.tag == bindparam("tag"))))
        elif f == "after_seq":
            q = q.where(vms.c.seq > bindparam("after_seq"))
        else:
            q = q.where(vms.c[f] == bindparam(f))
    return q.order_by(vms.c.seq).limit(bindparam("limit"))


async def list_vms(
    conn: AsyncConnection,
    *,
    node: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    name: str | None = None,
    after_seq: int | None = None,
    limit: int,
    org_id: str | None = None,
    team_id: str | None = None,
) -> list[Vm]:
    """VMs in creation order (a stable keyset order: new VMs land after every page token)."""
    q, params = _page(node=node, status=status, tag=tag, name=name, after_seq=after_seq, limit=limit, org_id=org_id, team_id=team_id)
    return await _records(conn, q, params)


async def find_vms(store: "Store", **filters: Any) -> list[Vm]:
    """`list_vms` outside a transaction (on SQLite through the store's quick reads)."""
    if store.quick is None:
        async with store.read() as conn:
            return await list_vms(conn, **filters)
    return list(store.quick.records(*_page(**filters), Vm.from_row))


def _page(
    *, node: str | None, status: str | None, tag: str | None, name: str | None, after_seq: int | None, limit: int,
    org_id: str | None, team_id: str | None,
) -> tuple[Select[Any], dict[str, Any]]:  # fmt: skip
    """The page query of `list_vms` and its parameters."""
    given = {
        "org_id": org_id,
        "team_id": team_id,
        "node_id": node or None,
        "status": status or None,
        "name": name or None,
        "tag": tag or None,
        "after_seq": after_seq,
    }
    params = {k: v for k, v in given.items() if v is not None}
    return _list_query(tuple(params)), {**params, "limit": limit}


async def vms_on_node(conn: AsyncConnection, node_id: str) -> list[Vm]:
    return await _records(conn, select(vms).where(vms.c.node_id == node_id))


async def vms_using_template(conn: AsyncConnection, template_id: str) -> int:
    q = select(vms.c.id).where(vms.c.template_id == template_id)
    return len((await conn.execute(q)).all())


async def set_vm(conn: AsyncConnection, vm_id: str, **values: Any) -> None:
    """Change a VM's record; a change of name, tags or resources is announced as `vm.updated`.
    Status changes go through `set_status`."""
    assert "status" not in values, "use set_status"
    row = await _update(conn, vm_id, values)
    if row is not None and values.keys() & {"name", "tags", "cpu", "ram_mb", "disk_gb"}:
        await ev_q.emit(
            conn,
            "vm.updated",
            vm_id,
            {**_vm_data(row), "resources": {"cpu": row.cpu, "ramMb": row.ram_mb, "diskGb": row.disk_gb}, "tags": row.tags},
            row.org_id,
            row.team_id,
        )


@lru_cache(maxsize=64)
def _update_statement(columns: tuple[str, ...], running_not_ready: bool = False) -> Any:
    """UPDATE of one VM's `columns` returning the row, their values bound at execution (as
    `v_<column>`): one statement per set of columns. A bulk create changes each VM's status
    twice, and building the statement each time cost more than running it."""
    q = update(vms).where(vms.c.id == bindparam("vm_id"))
    if running_not_ready:
        q = q.where(vms.c.status == "running", vms.c.guest_ready == false())
    return q.values({c: bindparam(f"v_{c}", type_=vms.c[c].type) for c in columns}).returning(*vms.c)


_HELD_BEFORE = select(vms.c.node_id, vms.c.cpu, vms.c.ram_mb, vms.c.disk_gb, vms.c.running_spec).where(vms.c.id == bindparam("vm_id"))


async def _update(conn: AsyncConnection, vm_id: str, values: dict[str, Any], running_not_ready: bool = False) -> Any:
    """Change one VM's row; when that changes what it holds on its node (`domain.held`: a new
    running shape recorded, say the old one of a VM shrunk while it ran, gone at its restart),
    its node's claims change by as much, in the same transaction."""
    before = (await conn.execute(_HELD_BEFORE, {"vm_id": vm_id})).first() if "running_spec" in values else None
    q = _update_statement(tuple(values), running_not_ready)
    row = (await conn.execute(q, {"vm_id": vm_id, **{f"v_{c}": v for c, v in values.items()}})).first()
    if before is not None and row is not None and before.node_id is not None and before.node_id == row.node_id:
        was = held(before.cpu, before.ram_mb, before.disk_gb, before.running_spec)
        now = held(row.cpu, row.ram_mb, row.disk_gb, row.running_spec)
        if was != now:
            dc, dr, dd = (w - n for w, n in zip(was, now, strict=True))
            await node_q.release(conn, row.node_id, dc, dr, dd, clock.now())
    return row


async def set_status(conn: AsyncConnection, vm_id: str, status: str, **values: Any) -> None:
    """Change a VM's status (and other fields) and announce it (`vm.running`, `vm.error`, …).
    A status other than `running` ends the guest's readiness: it is said again, once, after
    the next boot (`set_guest_ready`)."""
    if status != "running":
        values["guest_ready"] = False
    row = await _update(conn, vm_id, {"status": status, **values})
    if row is not None:
        await ev_q.emit(conn, vm_event_for(status), vm_id, _vm_data(row), row.org_id, row.team_id)


async def set_guest_ready(conn: AsyncConnection, vm_id: str, spec: dict[str, Any] | None, detail: str) -> bool:
    """Record that the guest of a running VM is ready (and its spec, when the guest's SSH host
    key changed it) and announce it (`vm.guest_ready`): once per boot, so False when the VM is
    no longer running or was ready already."""
    values: dict[str, Any] = {"guest_ready": True} | ({"spec": spec} if spec is not None else {})
    row = await _update(conn, vm_id, values, running_not_ready=True)
    if row is None:
        return False
    await ev_q.emit(conn, "vm.guest_ready", vm_id, {**_vm_data(row), "guestReady": True, "detail": detail}, row.org_id, row.team_id)
    return True


async def set_tags(conn: AsyncConnection, vm_id: str, tags: list[str]) -> None:
    await conn.execute(delete(vm_tags).where(vm_tags.c.vm_id == vm_id))
    if tags:
        await conn.execute(insert(vm_tags), [{"vm_id": vm_id, "tag": t} for t in tags])


async def delete_vm(conn: AsyncConnection, vm_id: str) -> None:
    await conn.execute(delete(vm_tags).where(vm_tags.c.vm_id == vm_id))
    row = (await conn.execute(delete(vms).where(vms.c.id == vm_id).returning(*vms.c))).first()
    if row is not None:
        await ev_q.emit(conn, "vm.deleted", vm_id, {**_vm_data(row), "status": "deleted"}, row.org_id, row.team_id)
