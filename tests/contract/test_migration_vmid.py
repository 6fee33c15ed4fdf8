"""Migration 0023 (stable VMIDs) on SQLite and PostgreSQL with data in place: a store at 0022
whose newest VM was deleted (SQLite would hand its id to the next VM) is upgraded; the rows,
keys and indexes survive, no VMID or config version id is handed out twice afterwards, and the
usage spans get their VM's uuid and VMID (a fresh, unused VMID for each VM already deleted)."""

from typing import Any

import pytest
from sqlalchemy import delete, insert, inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from vmplane import clock
from vmplane.store import Store
from vmplane.store.tables import vm_configs, vm_usage, vms

from .test_migration_names import on_connection, upgrade_to, vm


def span(vm_id: str, start: float, end: float | None) -> dict[str, Any]:
    return {"vm_id": vm_id, "vm_name": vm_id[3:], "org_id": "org-a", "team_id": None, "instance_type": "small", "cpu": 1,
            "ram_mb": 1024, "disk_gb": 10, "cents_per_hour": 1.0, "start": start, "end": end}  # fmt: skip


OLD_USAGE = ("vm_id", "vm_name", "org_id", "team_id", "instance_type", "cpu", "ram_mb", "disk_gb", "cents_per_hour", "start", "end")


def seed(conn: Connection) -> None:
    """Three VMs; the newest (vm-c) deleted, as an earlier one (vm-z) was: only their spans remain."""
    conn.execute(insert(vms), [vm("vm-a", "alpha", "org-a"), vm("vm-b", "beta", "org-a"), vm("vm-c", "gamma", "org-a")])
    conn.execute(insert(vm_configs), [{"vm_id": v, "version": 1, "config": {}, "created_at": 0.0} for v in ("vm-a", "vm-c")])
    rows = [span("vm-a", 100.0, None), span("vm-c", 50.0, 60.0), span("vm-c", 60.0, 90.0), span("vm-z", 10.0, 20.0)]
    conn.execute(insert(vm_usage).values([{k: r[k] for k in OLD_USAGE} for r in rows]))  # the columns 0022 has
    conn.execute(delete(vms).where(vms.c.id == "vm-c"))
    conn.execute(delete(vm_configs).where(vm_configs.c.vm_id == "vm-c"))


@pytest.fixture
async def upgraded(empty_database_url: str) -> tuple[str, dict[str, int]]:
    await on_connection(empty_database_url, upgrade_to("0022"))
    await on_connection(empty_database_url, seed)
    before = await on_connection(empty_database_url, lambda conn: {r.id: r.seq for r in conn.execute(select(vms.c.id, vms.c.seq))})
    store = Store(empty_database_url)  # what a server does at start: upgrade to head
    await store.open()
    await store.close()
    return empty_database_url, before


def add_vm(id_: str, name: str) -> Any:
    def run(conn: Connection) -> int:
        seq: int = conn.execute(insert(vms).values(vm(id_, name, "org-a")).returning(vms.c.seq)).scalar_one()
        return seq

    return run


async def test_rows_keys_and_indexes_survive(upgraded: tuple[str, dict[str, int]]) -> None:
    url, before = upgraded

    def read(conn: Connection) -> Any:
        return (
            {r.id: r.seq for r in conn.execute(select(vms.c.id, vms.c.seq))},
            {i["name"] for i in inspect(conn).get_indexes("vms")},
            [r.vm_id for r in conn.execute(select(vm_configs))],
        )

    seqs, indexes, configs = await on_connection(url, read)
    assert seqs == before == {"vm-a": 1, "vm-b": 2}
    assert {"ix_vms_org_id", "ix_vms_node_id", "ix_vms_status", "ix_vms_team_id", "ix_vms_template_id", "ix_vms_snapshot_id"} <= indexes
    assert configs == ["vm-a"]
    for dup in (vm("vm-a", "other", "org-a"), vm("vm-x", "alpha", "org-a"), {**vm("vm-y", "fresh", "org-a"), "uuid": "vm-a-uuid"}):
        with pytest.raises(IntegrityError):  # the id, (org, name) and uuid keys hold
            await on_connection(url, lambda conn, dup=dup: conn.execute(insert(vms).values(dup)))


async def test_no_vmid_is_handed_out_twice(upgraded: tuple[str, dict[str, int]]) -> None:
    url, before = upgraded
    spans = await on_connection(url, lambda conn: {(r.vm_id, r.vm_uuid, r.vmid) for r in conn.execute(select(vm_usage))})
    ids = {vm_id: vmid for vm_id, _uuid, vmid in spans}
    assert ("vm-a", "vm-a-uuid", 1) in spans  # a live VM's spans: its uuid and VMID
    # deleted VMs: one fresh VMID each (both spans of vm-c share it), above every VMID in use, no uuid kept
    assert len({v for (i, _u, v) in spans if i == "vm-c"}) == 1 and {u for (i, u, _v) in spans if i != "vm-a"} == {None}
    assert ids["vm-c"] != ids["vm-z"] and min(ids["vm-c"], ids["vm-z"]) > 2
    # the next VM gets none of them (SQLite would have given it 3, the deleted vm-c's row)
    first = await on_connection(url, add_vm("vm-d", "delta"))
    assert first > max(ids.values())
    # delete the newest VM, make another: a new VMID again
    await on_connection(url, lambda conn: conn.execute(delete(vms).where(vms.c.id == "vm-d")))
    second = await on_connection(url, add_vm("vm-e", "epsilon"))
    assert second > first and before == {"vm-a": 1, "vm-b": 2}


async def test_config_version_ids_are_not_reused(upgraded: tuple[str, dict[str, int]]) -> None:
    url, _ = upgraded

    def add_config(vm_id: str) -> Any:
        def run(conn: Connection) -> int:
            q = insert(vm_configs).values(vm_id=vm_id, version=1, config={}, created_at=clock.now()).returning(vm_configs.c.seq)
            seq: int = conn.execute(q).scalar_one()
            return seq

        return run

    first = await on_connection(url, add_config("vm-b"))
    await on_connection(url, lambda conn: conn.execute(delete(vm_configs).where(vm_configs.c.vm_id == "vm-b")))
    assert await on_connection(url, add_config("vm-f")) > first
