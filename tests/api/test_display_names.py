"""Display names: free text a face's client gave as a VM's name, kept beside the VM's name (a
DNS label) and shown by the faces whose names allow more; the core derives the VM's name from
it, unique in the organization, under the unique index (not a check-then-insert). On the native
API (`displayName`), and on Blue Lobster's paths (names with `_`, 64 characters)."""

import asyncio
from typing import Any

import httpx
import pytest

from vmplane.auth import Principal, Role
from vmplane.domain.names import candidate, derive_name, derived_from
from vmplane.store import vms as vm_q

from ..cli.test_cli import cli
from ..support import Server, new_pg_database
from .test_bluelobster import bl, call, launch  # noqa: F401  (bl: the Blue Lobster fixture)

OWNER = Principal(org_id="org-default", user_id="test", user_name="test", role=Role.OWNER)


def test_derived_names_are_valid_names() -> None:
    cases = {
        "my web": "my-web",
        "my_vm": "my-vm",
        "web-1": "web-1",
        "a--b": "a--b",  # a valid name stays as it is
        "  --Café: au lait!-- ": "Cafe-au-lait",
        "日本": "vm",
        "!!!": "vm",
        "x" * 64: "x" * 63,
        "a" * 62 + " b": "a" * 62,  # cut at 63, then trimmed of '-'
    }
    for display, name in cases.items():
        assert derive_name(display) == name, display
    assert [candidate("web", n) for n in (1, 2, 10)] == ["web", "web-2", "web-10"]
    assert candidate("x" * 63, 2) == "x" * 61 + "-2" and candidate("x" * 60 + "-yz", 12) == "x" * 60 + "-12"
    assert derived_from("web-3", "web") and derived_from("web", "web") and not derived_from("web-1", "web") and not derived_from("webs", "web")


async def test_native_display_name_on_create_patch_and_every_vm(server: Server) -> None:
    c = server.client
    r = await c.post("/api/v1/vms", json={"displayName": "my web", "start": False})
    assert r.status_code == 202, r.text
    (spaced,) = r.json()["vmIds"]
    await server.wait_job(r.json()["jobId"])
    vm = (await c.get(f"/api/v1/vms/{spaced}")).json()
    assert (vm["name"], vm["displayName"]) == ("my-web", "my web")
    r = await c.post("/api/v1/vms", json=[{"name": "db-1", "start": False}, {"name": "x", "displayName": "X (prod)", "start": False}])
    db, x = r.json()["vmIds"]
    await server.wait_job(r.json()["jobId"])
    r = await c.post("/api/v1/vms", json=[{"displayName": "my web", "start": False}] * 3)
    await server.wait_job(r.json()["jobId"])
    items = (await c.get("/api/v1/vms")).json()["items"]
    assert [(v["name"], v["displayName"]) for v in items] == [
        ("my-web", "my web"), ("db-1", "db-1"), ("x", "X (prod)"), ("my-web-2", "my web"), ("my-web-3", "my web"), ("my-web-4", "my web"),
    ]  # fmt: skip

    r = await c.patch(f"/api/v1/vms/{db}", json={"displayName": "Database: primary"})
    assert r.status_code == 202
    await server.wait_job(r.json()["jobId"])
    vm = (await c.get(f"/api/v1/vms/{db}")).json()
    assert (vm["name"], vm["displayName"]) == ("db-1", "Database: primary")  # a label: the name stays
    r = await c.patch(f"/api/v1/vms/{x}", json={"name": "x-renamed"})  # a new name alone is shown as it is
    await server.wait_job(r.json()["jobId"])
    vm = (await c.get(f"/api/v1/vms/{x}")).json()
    assert (vm["name"], vm["displayName"]) == ("x-renamed", "x-renamed")

    for body, field in (
        ({}, "name"),
        ({"displayName": "tab\there"}, "displayName"),
        ({"displayName": "x" * 65}, "displayName"),
        ({"displayName": ""}, "displayName"),
        ({"displayName": "ok", "tags": ["no spaces"]}, "tags[0]"),
        ({"displayName": "ok", "sshKeys": ["nope"]}, "sshKeys[0]"),
        ([{"name": "ok"}, {"displayName": "\u2028"}], "[1].displayName"),
    ):
        r = await c.post("/api/v1/vms", json=body)
        assert r.status_code == 400 and r.json()["details"]["field"] == field, (body, r.text)
    r = await c.patch(f"/api/v1/vms/{db}", json={"displayName": "bell\a"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "displayName"
    assert (await c.get(f"/api/v1/vms/{db}")).json()["displayName"] == "Database: primary"
    assert len((await c.get("/api/v1/vms")).json()["items"]) == 6


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_concurrent_creates_of_one_display_name_get_distinct_names(server_factory: Any, backend: str) -> None:
    kw = {"database_url": await new_pg_database()} if backend == "postgresql" else {}
    server = await server_factory(**kw)
    results = await asyncio.gather(*(server.client.post("/api/v1/vms", json={"displayName": "my web", "start": False}) for _ in range(12)))
    assert [r.status_code for r in results] == [202] * 12, [r.text for r in results]
    items = (await server.client.get("/api/v1/vms")).json()["items"]
    assert sorted(v["name"] for v in items) == sorted(["my-web"] + [f"my-web-{i}" for i in range(2, 13)])
    assert {v["displayName"] for v in items} == {"my web"}


async def test_a_name_taken_between_the_look_and_the_insert_is_picked_again(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The look at taken names is only a guess: the unique index decides. A look that misses
    a VM created meanwhile (here: the first look answers "nothing taken") makes the insert
    fail in its savepoint, and the names are picked again; nothing else of the create repeats."""
    c = server.client
    r = await c.post("/api/v1/vms", json=[{"name": "my-web", "start": False}, {"name": "db", "start": False}])
    first, db = r.json()["vmIds"]
    await server.wait_job(r.json()["jobId"])
    real = vm_q.names_taken
    stale = [1]  # the next look misses what is there

    async def names_taken(conn: Any, names: Any, org_id: str) -> set[str]:
        if stale[0] and "my-web" in names:
            stale[0] -= 1
            return set()
        return await real(conn, names, org_id)

    monkeypatch.setattr(vm_q, "names_taken", names_taken)
    r = await c.post("/api/v1/vms", json={"displayName": "my web", "start": False})
    assert r.status_code == 202, r.text
    (second,) = r.json()["vmIds"]
    await server.wait_job(r.json()["jobId"])
    assert (await c.get(f"/api/v1/vms/{second}")).json()["name"] == "my-web-2"
    assert len((await c.get("/api/v1/vms")).json()["items"]) == 3 and stale == [0]
    stale[0] = 1  # a rename's look too
    row = await server.rt.vms.rename(db, None, OWNER, display_name="my web")
    assert stale == [0] and row.name == "my-web-3" and row.display_name == "my web"
    assert (await c.get(f"/api/v1/vms/{first}")).json()["name"] == "my-web"


async def test_blue_lobster_names_with_underscores_and_64_characters(bl: tuple[Server, httpx.AsyncClient]) -> None:  # noqa: F811
    """The contract allows 3-64 letters, digits, '-' and '_' on rename and 64 characters at
    launch: the instance shows the name sent; its VM name is derived from it and is unique
    in the account, as the contract says (a name taken once folded answers 400)."""
    s, c = bl
    long = "a" + "b" * 62 + "c"  # 64: one more than a VM name holds
    uuid, task = await launch(c, name=long)
    assert task["status"] == "COMPLETED", task
    assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": uuid}))["name"] == long
    native = (await s.client.get(f"/api/v1/vms/{uuid}")).json()
    assert (native["name"], native["displayName"]) == (long[:63], long)

    a = {"instance_id": uuid}
    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=a, json={"name": "my_vm"})
    assert r == {"message": "Instance renamed successfully", "instance_id": uuid, "new_name": "my_vm"}
    assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a))["name"] == "my_vm"
    assert [v["name"] for v in await call(c, "GET", "/api/v1/instances")] == ["my_vm"]
    native = (await s.client.get(f"/api/v1/vms/{uuid}")).json()
    assert (native["name"], native["displayName"]) == ("my-vm", "my_vm")

    other, _ = await launch(c, name="other-1")
    for taken in ("my_vm", "my-vm"):  # unique in the account: the same name, or one that folds to it
        r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args={"instance_id": other}, json={"name": taken}, expect=400)
        assert r["error"] == "invalid_name" and "already exists" in r["message"]
    assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": other}))["name"] == "other-1"
    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=a, json={"name": "plain-name"})
    assert r["new_name"] == "plain-name"
    native = (await s.client.get(f"/api/v1/vms/{uuid}")).json()
    assert (native["name"], native["displayName"]) == ("plain-name", "plain-name")


async def test_cli_vm_list_shows_a_display_name_that_differs(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per VM
    r = await server.client.post("/api/v1/vms", json=[{"displayName": "a [b]", "start": False}, {"name": "plain", "start": False}])
    await server.wait_job(r.json()["jobId"])
    code, out, _ = await cli(server, "vm", "list")
    assert code == 0 and "a-b (a [b])" in out and "plain (" not in out  # as text: no rich markup from users
