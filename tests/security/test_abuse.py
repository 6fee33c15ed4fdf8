"""Abuse limits, each tried against a real server: floods of bogus keys, deep JSON, oversized
bulk creates, concurrent disk exports, and one-time WebSocket tickets. (Slow clients and
SIGTERM are tried against a real `vmplane serve` process: test_serve_limits.py.)"""

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from vmplane.drivers.sim import SimDriver

from ..support import Server


async def _failed_auth_rows(server: Server) -> list[dict[str, Any]]:
    await server.rt.tenancy.failed_auths.flush()
    items = (await server.client.get("/api/v1/audit", params={"limit": 500})).json()["items"]
    return [i for i in items if i["route"] == "(failed authentication)"]


async def test_bogus_keys_from_one_address_are_refused_before_lookup(server_factory: Any) -> None:
    # refilled at a token a minute: the test's own pace (slow on a loaded machine) adds none
    server = await server_factory(address_rate_limit_burst=20, address_rate_limit_per_second=1 / 60)
    anon = httpx.AsyncClient(base_url=server.url)
    looked_up: list[str] = []
    real = server.rt.tenancy.principal_for_key

    async def spy(key: str) -> Any:
        looked_up.append(key)
        return await real(key)

    server.rt.tenancy.principal_for_key = spy
    assert (await server.client.get("/api/v1/vms")).status_code == 200  # an established client
    looked_up.clear()
    statuses = []
    for i in range(200):
        r = await anon.get("/api/v1/vms", headers={"X-API-Key": f"vmp_bogus{i:04d}"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["code"] == "rate_limited"
    refused, limited = statuses.count(401), statuses.count(429)
    assert refused + limited == 200
    # a failed authentication costs 2 of the 20 tokens: about 10 keys were checked, no more
    assert 10 <= refused <= 12, statuses
    assert len(looked_up) == refused  # the 429s were answered before their key was looked up
    # the established client, at the same address, is not locked out by the flood
    for _ in range(30):
        assert (await server.client.get("/api/v1/vms")).status_code == 200
    rows = await _failed_auth_rows(server)
    assert 1 <= len(rows) <= 2  # one row per address per minute (the flood may straddle one)
    assert sum(r["count"] for r in rows) == refused
    assert {r["remote"] for r in rows} == {"127.0.0.1"} and {r["status"] for r in rows} == {401}
    # anonymous requests spend the same bucket (1 each); probes do not
    assert (await anon.get("/api/v1/vms")).status_code == 429
    # ... before its body is read, let alone scanned
    assert (await anon.post("/api/v1/vms", content=b"[" * 100_000)).status_code == 429
    assert (await anon.get("/readyz")).status_code == 200
    assert (await anon.get("/ui/")).status_code == 200
    await anon.aclose()


async def test_failed_authentications_are_one_audit_row_per_address_and_minute(server: Server) -> None:
    anon = httpx.AsyncClient(base_url=server.url)
    for i in range(30):  # mutations, which were a row each
        r = await anon.post("/api/v1/vms", json={"name": "x"}, headers={"X-API-Key": f"vmp_nope{i}"})
        assert r.status_code == 401
    await server.rt.tenancy.failed_auths.flush()  # the row exists; what follows is counted into it
    for _ in range(5):  # no credential where one is needed
        assert (await anon.delete("/api/v1/vms/vm-x")).status_code == 401
    rows = await _failed_auth_rows(server)
    assert 1 <= len(rows) <= 2 and sum(r["count"] for r in rows) == 35
    items = (await server.client.get("/api/v1/audit", params={"limit": 500})).json()["items"]
    assert not [i for i in items if i["actor"] == "unauthenticated" and i["route"] != "(failed authentication)"]
    await anon.aclose()


async def test_audit_log_is_pruned_after_its_retention(server_factory: Any) -> None:
    server = await server_factory(audit_retention_days=1)
    assert (await server.client.post("/api/v1/teams", json={"name": "t1"})).status_code == 201
    from vmplane.store import tenancy as t_q
    from vmplane.store.tables import audit_log

    async with server.rt.store.write() as conn:
        old = {"ts": time.time() - 2 * 86400, "org_id": "org-default", "actor": "admin", "credential": None, "method": "POST",
               "route": "/x", "path": "/x", "status": 200, "outcome": "success", "remote": None}  # fmt: skip
        await t_q.add_audit(conn, [old])
        gone = await t_q.prune_audit(conn, before=time.time() - server.rt.settings.audit_retention_days * 86400)
    assert gone == 1
    async with server.rt.store.read() as conn:
        left = (await conn.execute(audit_log.select())).all()
    assert [r.path for r in left] == ["/api/v1/teams"]  # the recent row stays


async def test_bogus_key_cache_is_bounded(server_factory: Any) -> None:
    server = await server_factory(negative_key_cache_size=100)
    anon = httpx.AsyncClient(base_url=server.url)
    for i in range(300):
        assert (await anon.get("/api/v1/vms", headers={"X-API-Key": f"vmp_junk{i}"})).status_code == 401
    t = server.rt.tenancy
    assert len(t._unknown) == 100
    assert len(t._keys) <= 1  # keys the store holds only (the admin's)
    await anon.aclose()


DEEP = b"[" * 100_000


async def test_deep_json_is_refused_on_every_face(server: Server) -> None:
    """400 in each face's error shape; Blue Lobster, whose contract documents a validation error
    (422, `{detail: [...]}`) for a body it cannot read, answers that."""
    cases = [
        ("/api/v1/vms", 400, lambda b: b["details"]["field"] == "body" and "deeper" in b["error"]),
        ("/api/v1/templates", 400, lambda b: b["details"]["field"] == "body"),
        ("/compat/fastvm/v1/vms", 400, lambda b: set(b) == {"error"} and "deeper" in b["error"]),
        ("/compat/bluelobster/api/v1/instances/launch-instance", 422, lambda b: "deeper" in b["detail"][0]["msg"]),
        ("/compat/volant/api/v1/vms", 400, lambda b: "deeper" in json.dumps(b)),
        ("/compat/hypersdk/jobs/submit", 400, lambda b: "deeper" in json.dumps(b)),
    ]
    for path, status, shape in cases:
        for body in (DEEP, b'{"a":' * 10_000 + b"1" + b"}" * 10_000):
            r = await server.client.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == status, (path, r.status_code, r.text[:200])
            assert shape(r.json()), (path, r.text)
    # brackets inside strings are not nesting: this body gets as far as the tag's own check
    r = await server.client.post("/api/v1/vms", json=[{"name": f"ok-{i}", "tags": ["[" * 200]} for i in range(3)])
    assert r.status_code == 400 and r.json()["details"]["field"] == "[0].tags[0]", r.text
    r = await server.client.post("/api/v1/vms", json=[{"name": f"ok-{i}", "tags": ["a"]} for i in range(3)])
    assert r.status_code == 202, r.text
    await server.wait_job(r.json()["jobId"])
    names = {v["name"] for v in (await server.client.get("/api/v1/vms")).json()["items"]}
    assert names == {"ok-0", "ok-1", "ok-2"}  # nothing else was created


async def test_bulk_create_over_max_bulk_is_refused_and_creates_nothing(server_factory: Any) -> None:
    server = await server_factory(max_bulk=5)
    r = await server.client.post("/api/v1/vms", json=[{"name": f"b-{i}"} for i in range(6)])
    assert r.status_code == 400
    body = r.json()
    assert body["details"]["field"] == "body" and "at most 5 VMs" in body["error"], body
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []
    assert (await server.client.get("/api/v1/jobs")).json()["items"] == []
    # the core refuses it for every caller, not only the native route
    from vmplane.domain import NewVm
    from vmplane.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as exc:
        await server.rt.vms.create([NewVm(name=f"c-{i}") for i in range(6)], _owner(server))
    assert exc.value.field == "body"
    r = await server.client.post("/api/v1/vms", json=[{"name": f"b-{i}"} for i in range(5)])
    assert r.status_code == 202


def _owner(server: Server) -> Any:
    from vmplane.auth import ADMIN_USER, DEFAULT_ORG, Principal, Role

    return Principal(DEFAULT_ORG, ADMIN_USER, "admin", Role.OWNER, credential="test")


class SlowExportDriver(SimDriver):
    """The sim driver with disk export: each export waits for `release` to be set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.capabilities = replace(self.capabilities, disk_export=True)
        self.release = asyncio.Event()
        self.exporting = 0

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        self._vm(vm_id)
        self.exporting += 1
        try:
            await self.release.wait()
        finally:
            self.exporting -= 1
        with open(dest, "wb") as f:
            f.truncate(1 << 20)
        return 1 << 20


async def test_a_third_concurrent_export_answers_429(server_factory: Any) -> None:
    driver = SlowExportDriver(hostname="node-1", latency=0.005)
    server = await server_factory(nodes=[("node-1", driver)])
    await server.create({"name": "exported"})
    vm_id = (await server.client.get("/api/v1/vms")).json()["items"][0]["id"]
    first = [asyncio.create_task(server.client.get(f"/api/v1/vms/{vm_id}/disk")) for _ in range(2)]
    await asyncio.wait_for(_until(lambda: driver.exporting == 2), 10)
    third = await server.client.get(f"/api/v1/vms/{vm_id}/disk")
    assert third.status_code == 429 and third.json()["code"] == "rate_limited", third.text
    assert driver.exporting == 2  # the third never reached the driver
    driver.release.set()
    for r in await asyncio.gather(*first):
        assert r.status_code == 200 and r.content[:4] == b"QFI\xfb"  # a qcow2
    exports = server.rt.data_dir / "imports" / "exports"
    await asyncio.wait_for(_until(lambda: not list(exports.iterdir())), 5)  # nothing left behind
    assert (await server.client.get(f"/api/v1/vms/{vm_id}/disk")).status_code == 200  # slots were given back


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.02)


async def test_ws_ticket_opens_one_websocket_once(server: Server) -> None:
    ws_url = server.url.replace("http", "ws") + "/api/v1/events/ws"
    r = await server.client.post("/api/v1/ws-tickets")
    assert r.status_code == 201
    ticket = r.json()["ticket"]
    assert r.json()["subprotocols"] == ["vmplane", f"ticket.{ticket}"]
    async with connect(ws_url, subprotocols=["vmplane", f"ticket.{ticket}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "vmplane"  # never the one carrying the credential
        assert json.loads(await ws.recv())["kind"] == "status"
    with pytest.raises(Exception) as again:  # spent
        async with connect(ws_url, subprotocols=["vmplane", f"ticket.{ticket}"]) as ws:  # type: ignore[list-item]
            await ws.recv()
    assert "4401" in str(again.value) or isinstance(again.value, InvalidStatus)
    # as a query parameter too, once
    ticket2 = (await server.client.post("/api/v1/ws-tickets")).json()["ticket"]
    async with connect(f"{ws_url}?wsTicket={ticket2}") as ws:
        assert json.loads(await ws.recv())["kind"] == "status"
    with pytest.raises(Exception):
        async with connect(f"{ws_url}?wsTicket={ticket2}") as ws:
            await ws.recv()
    # only digests are stored
    from vmplane.store.tables import ws_tickets

    async with server.rt.store.read() as conn:
        rows = (await conn.execute(ws_tickets.select())).all()
    assert rows and all(ticket not in r.token_hash and ticket2 not in r.token_hash for r in rows)
    # a ticket is bound to its credential: revoking the key voids tickets it made
    made = (await server.client.post("/api/v1/api-keys", json={"name": "short"})).json()
    other = server.client_with(made["key"])
    ticket3 = (await other.post("/api/v1/ws-tickets")).json()["ticket"]
    assert (await server.client.delete(f"/api/v1/api-keys/{made['id']}")).status_code in (200, 204)
    with pytest.raises(Exception):
        async with connect(ws_url, subprotocols=["vmplane", f"ticket.{ticket3}"]) as ws:  # type: ignore[list-item]
            await ws.recv()
    await other.aclose()


async def test_api_key_as_websocket_subprotocol(server: Server) -> None:
    ws_url = server.url.replace("http", "ws") + "/api/v1/events/ws"
    async with connect(ws_url, subprotocols=["vmplane", f"apikey.{server.admin_key}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "vmplane"
        assert json.loads(await ws.recv())["kind"] == "status"
    with pytest.raises(Exception):
        async with connect(ws_url, subprotocols=["vmplane", "apikey.vmp_wrong"]) as ws:  # type: ignore[list-item]
            await ws.recv()
