"""Snapshot names are display text: the names FastVM's contract allows ("before upgrade", any
script) are taken on the FastVM face and the native API and read back exactly as sent; only
what cannot be one line of text (control characters) or does not fit is refused, naming the
field. The node keeps the image under the snapshot's id, so the name reaches no path."""

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ..support import Server
from ..support_fastvm import FastVmClient
from .test_fastvm import P, create, guest_nodes

NAMES = ["before upgrade", "état d'avant: v1.2 (prod) 🚀", "../../etc/passwd", "é" * 63 + "🚀"]
"""the last is as long as a name may be, in characters (PostgreSQL counts them, not bytes)"""


@pytest.fixture
async def fv(server_factory: Any, database_url: str) -> AsyncIterator[tuple[Server, FastVmClient]]:
    s = await server_factory(nodes=guest_nodes(), database_url=database_url)
    client = FastVmClient(s.url + P, s.admin_key)
    yield s, client
    await client.aclose()


async def test_fastvm_snapshot_names_the_contract_allows(fv: tuple[Server, FastVmClient]) -> None:
    s, c = fv
    vm = await create(c, name="web-1")
    made = []
    for name in NAMES:
        r = await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"], "name": name})
        assert r.status_code == 201, r.text
        assert r.json()["name"] == name and r.json()["status"] == "ready"
        made.append(r.json()["id"])
    listed = {x["id"]: x["name"] for x in (await c.call("GET", "/v1/snapshots")).json()}
    assert [listed[i] for i in made] == NAMES
    # the native API shows the same name
    native = {x["uuid"]: x["name"] for x in (await s.client.get("/api/v1/snapshots")).json()["items"]}
    assert [native[i] for i in made] == NAMES

    # rename to a free-text name; read back exactly
    r = await c.call("PATCH", "/v1/snapshots/{id}", id=made[0], json={"name": "  after the upgrade  "})
    assert r.status_code == 200 and r.json()["name"] == "  after the upgrade  "
    assert {x["id"]: x["name"] for x in (await c.call("GET", "/v1/snapshots")).json()}[made[0]] == "  after the upgrade  "

    # a clone names its source by the snapshot's name
    clone = await create(c, machineType=None, snapshotId=made[1], name="web-2")
    assert clone["sourceName"] == NAMES[1]


@pytest.mark.parametrize("bad", ["", "two\nlines", "tab\there", "nul\x00", "\u2028", "x" * 65])
async def test_fastvm_snapshot_names_that_are_not_text_answer_400(fv: tuple[Server, FastVmClient], bad: str) -> None:
    _, c = fv
    vm = await create(c, name="web-1")
    r = await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"], "name": bad})
    assert r.status_code == 400 and r.json()["error"].startswith("name"), r.text
    assert (await c.call("GET", "/v1/snapshots")).json() == []  # nothing was made
    snap = (await c.call("POST", "/v1/snapshots", json={"vmId": vm["id"], "name": "good"})).json()
    r = await c.call("PATCH", "/v1/snapshots/{id}", id=snap["id"], json={"name": bad})
    assert r.status_code == 400 and r.json()["error"].startswith("name"), r.text
    assert [x["name"] for x in (await c.call("GET", "/v1/snapshots")).json()] == ["good"]


async def test_native_snapshot_names_are_display_text(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "origin"})
    vm_id = job["tasks"][0]["resourceId"]
    r = await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "before upgrade"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap_id = r.json()["snapshotId"]
    assert (await c.get(f"/api/v1/snapshots/{snap_id}")).json()["name"] == "before upgrade"
    r = await c.patch(f"/api/v1/snapshots/{snap_id}", json={"name": "nightly · 2026-12-07"})
    assert r.status_code == 200 and r.json()["name"] == "nightly · 2026-12-07"
    r = await c.patch(f"/api/v1/snapshots/{snap_id}", json={"name": "line\rbreak"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "name"
    assert (await c.get(f"/api/v1/snapshots/{snap_id}")).json()["name"] == "nightly · 2026-12-07"
