"""Migration 0022 (names per organization) on SQLite and PostgreSQL with data in place: a
store at 0021 (the revision before it) with rows in every table it changes is upgraded; the rows survive, the same name
then fits in two organizations (and the shared namespace) but not twice in one, and plugin
template references become ids of the plugin owner's template with the manifest's checksum."""

from collections.abc import Callable
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Column, Integer, create_engine, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from vmplane import clock
from vmplane.store import Store
from vmplane.store.db import MIGRATIONS
from vmplane.store.tables import deployments, networks, plugins, templates, vms

SHA_GOOD = "sha256:" + "a" * 64


async def on_connection(url: str, fn: Callable[[Connection], Any]) -> Any:
    """Run `fn` on a synchronous connection to the database at `url`, in one transaction."""
    if url.startswith("sqlite"):
        engine = create_engine("sqlite+pysqlite://" + url.split("://", 1)[1])
        try:
            with engine.begin() as conn:
                return fn(conn)
        finally:
            engine.dispose()
    aengine = create_async_engine(url)
    try:
        async with aengine.begin() as aconn:
            return await aconn.run_sync(fn)
    finally:
        await aengine.dispose()


def upgrade_to(revision: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)

    return run


def tpl(id_: str, name: str, org_id: str | None, checksum: str | None = SHA_GOOD) -> dict[str, Any]:
    now = clock.now()
    return {"id": id_, "name": name, "org_id": org_id, "os": "linux", "node_id": None, "source_url": "file:///x", "status": "ready",
            "format": "raw", "size_mb": 1, "image_path": None, "checksum": checksum, "boot": None, "error": None,
            "created_at": now, "updated_at": now}  # fmt: skip


def plugin(name: str, org_id: str | None, template_id: str | None) -> dict[str, Any]:
    now = clock.now()
    manifest = {"name": name, "rootfs": {"url": "file:///x", "checksum": SHA_GOOD}}
    return {"name": name, "runtime": name, "version": "1", "org_id": org_id, "enabled": True, "manifest": manifest,
            "template_id": template_id, "created_at": now, "updated_at": now}  # fmt: skip


def vm(id_: str, name: str, org_id: str) -> dict[str, Any]:
    now = clock.now()
    return {"id": id_, "uuid": id_ + "-uuid", "name": name, "org_id": org_id, "status": "running", "cpu": 1, "ram_mb": 64,
            "disk_gb": 1, "tags": [], "spec": {}, "created_at": now, "updated_at": now}  # fmt: skip


def seed(conn: Connection) -> None:
    now = clock.now()
    conn.execute(insert(vms), [vm("vm-a1", "shared-name", "org-a"), vm("vm-b1", "other", "org-b")])
    conn.execute(insert(templates), [
        tpl("tpl-shared", "tiny-linux", None),
        tpl("tpl-a", "golden", "org-a"),
        tpl("tpl-squat", "plugin-rootfs-0123456789abcdef", "org-b"),  # a tenant's, under the name a plugin used
        tpl("tpl-op", "op-image", None),  # the operators' own copy with the right checksum
        tpl("tpl-wrongsum", "wrong", "org-c", checksum="sha256:" + "b" * 64),
    ])  # fmt: skip
    conn.execute(insert(networks), [
        {"id": "net-user", "name": "user", "org_id": None, "type": "user", "subnet": "10.0.2.0/24", "gateway": "10.0.2.2",
         "ipv6_prefix": None, "bridge": None, "created_at": now},
        {"id": "net-a", "name": "lan", "org_id": "org-a", "type": "bridge", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1",
         "ipv6_prefix": None, "bridge": "vmbra", "created_at": now},
    ])  # fmt: skip
    conn.execute(insert(deployments), [{"id": "dep-a", "name": "web", "org_id": "org-a", "team_id": None, "owner_id": "usr-a",
                                        "replicas": 1, "config": {}, "created_at": now, "updated_at": now}])  # fmt: skip
    conn.execute(insert(plugins), [
        plugin("byname", "org-a", "golden"),  # a reference by name: becomes org-a's template's id
        plugin("squatted", None, "tpl-squat"),  # a shared plugin on a tenant's template: the operators' matching one
        plugin("wrongsum", "org-c", "tpl-wrongsum"),  # its owner's, another checksum: nothing better, stays (refused at use)
        plugin("fine", None, "tpl-shared"),
    ])  # fmt: skip


@pytest.fixture
async def upgraded(empty_database_url: str) -> str:
    await on_connection(empty_database_url, upgrade_to("0021"))
    await on_connection(empty_database_url, seed)
    store = Store(empty_database_url)  # what a server does at start: upgrade to head
    await store.open()
    await store.close()
    return empty_database_url


async def test_rows_survive_and_plugin_references_become_owned_ids(upgraded: str) -> None:
    def read(conn: Connection) -> Any:
        return (
            {r.id: r.name for r in conn.execute(select(vms))},
            {r.id for r in conn.execute(select(templates))},
            {r.id for r in conn.execute(select(networks))},
            {r.name for r in conn.execute(select(deployments))},
            {r.name: r.template_id for r in conn.execute(select(plugins))},
        )

    vm_names, tpl_ids, net_ids, dep_names, plugin_tpl = await on_connection(upgraded, read)
    assert vm_names == {"vm-a1": "shared-name", "vm-b1": "other"}
    assert tpl_ids == {"tpl-shared", "tpl-a", "tpl-squat", "tpl-op", "tpl-wrongsum"}
    assert net_ids == {"net-user", "net-a"} and dep_names == {"web"}
    assert plugin_tpl == {"byname": "tpl-a", "squatted": "tpl-shared", "wrongsum": "tpl-wrongsum", "fine": "tpl-shared"}


@pytest.mark.parametrize(
    "table,row,twin",
    [
        (vms, vm("vm-b2", "shared-name", "org-b"), vm("vm-a2", "shared-name", "org-a")),
        (templates, tpl("tpl-b", "golden", "org-b"), tpl("tpl-a2", "golden", "org-a")),
        (templates, tpl("tpl-b2", "tiny-linux", "org-b"), tpl("tpl-shared2", "tiny-linux", None)),
        (networks, {"id": "net-b", "name": "lan", "org_id": "org-b", "type": "bridge", "subnet": "10.9.1.0/24", "gateway": "10.9.1.1",
                    "ipv6_prefix": None, "bridge": "vmbrb", "created_at": 0.0},
                   {"id": "net-user2", "name": "user", "org_id": None, "type": "user", "subnet": "10.0.3.0/24", "gateway": "10.0.3.2",
                    "ipv6_prefix": None, "bridge": None, "created_at": 0.0}),
        (deployments, {"id": "dep-b", "name": "web", "org_id": "org-b", "team_id": None, "owner_id": "usr-b", "replicas": 1,
                       "config": {}, "created_at": 0.0, "updated_at": 0.0},
                      {"id": "dep-a2", "name": "web", "org_id": "org-a", "team_id": None, "owner_id": "usr-a", "replicas": 1,
                       "config": {}, "created_at": 0.0, "updated_at": 0.0}),
        (plugins, plugin("fine", "org-b", None), plugin("fine", None, None)),
    ],
    ids=["vms", "templates", "templates-shared", "networks-shared", "deployments", "plugins-shared"],
)  # fmt: skip
async def test_a_name_is_unique_per_namespace_only(upgraded: str, table: Any, row: dict[str, Any], twin: dict[str, Any]) -> None:
    """`row` takes, in another organization, a name the seed holds: it fits; `twin` takes it
    again in the same namespace (an organization, or the shared one): the key refuses it."""
    await on_connection(upgraded, lambda conn: conn.execute(insert(table), [row]))
    with pytest.raises(IntegrityError):
        await on_connection(upgraded, lambda conn: conn.execute(insert(table), [twin]))


async def test_the_keys_survive_a_later_batch_migration(upgraded: str) -> None:
    """A later migration that rebuilds these tables (SQLite's batch mode copies a table from
    its reflection) keeps the shared namespace's keys: they are partial indexes, which
    reflection keeps, not expression indexes, which it would silently drop."""
    def rebuild(conn: Connection) -> None:
        ops = Operations(MigrationContext.configure(conn, opts={"render_as_batch": conn.dialect.name == "sqlite"}))
        for table in ("templates", "networks", "plugins"):
            with ops.batch_alter_table(table, recreate="always" if conn.dialect.name == "sqlite" else "auto") as batch:
                batch.add_column(Column("later", Integer, nullable=True))

    await on_connection(upgraded, rebuild)
    for table, twin in ((templates, tpl("tpl-shared3", "tiny-linux", None)), (plugins, plugin("fine", None, None)),
                        (templates, tpl("tpl-a3", "golden", "org-a"))):  # fmt: skip
        with pytest.raises(IntegrityError):
            await on_connection(upgraded, lambda conn, table=table, twin=twin: conn.execute(insert(table), [twin]))
