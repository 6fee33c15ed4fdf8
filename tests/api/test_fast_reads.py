"""The fast lane of the two hottest reads (api/fast_reads.py) answers exactly as the routes do:
each request is sent once through the lane and once through FastAPI's routing (the lane
switched off), and the two answers compared: status, headers (but the date), body, and what
the metrics counted. The lane must really have served the first (counted), or the comparison
proves nothing. (The metrics' counter is `vmplane_api_requests_total`.)"""

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from vmplane.api.fast_reads import FastReads

from ..security.test_fencing import until
from ..support import Server
from .test_tenancy import new_org


class Lanes:
    """Sends a request both ways and returns both answers."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.fast: FastReads = server.app.fast_reads
        self.served = 0
        real = self.fast.serve

        async def counted(*args: Any) -> bool:
            done = await real(*args)
            self.served += done
            return done

        self.fast.serve = counted  # type: ignore[method-assign]

    async def both(self, client: httpx.AsyncClient, path: str, **kw: Any) -> tuple[httpx.Response, httpx.Response]:
        self.server.app.fast_reads = self.fast
        fast = await client.request("GET", path, **kw)
        self.server.app.fast_reads = None
        try:
            slow = await client.request("GET", path, **kw)
        finally:
            self.server.app.fast_reads = self.fast
        return fast, slow

    async def same(self, client: httpx.AsyncClient, path: str, *, served: bool = True, **kw: Any) -> httpx.Response:
        """Both answers, asserted equal; `served`: the lane itself answered (else it handed on)."""
        before = self.served
        fast, slow = await self.both(client, path, **kw)
        assert (fast.status_code, steady(fast.content)) == (slow.status_code, steady(slow.content)), path
        assert strip(fast.headers) == strip(slow.headers), path
        assert self.served - before == int(served), f"{path}: the lane {'did not serve' if served else 'served'} it"
        return fast


def steady(body: bytes) -> bytes:
    """The body but a VM's uptime, which may have grown a second between the two answers."""
    return re.sub(rb'"uptime":"[^"]*"', b'"uptime":"-"', body)


async def settled(server: Server, n: int) -> None:
    """Wait until the `n` VMs' guests are ready (the readiness watch changes the answers)."""
    await until(lambda: _ready(server, n), "every guest ready")


async def _ready(server: Server, n: int) -> bool:
    items = (await server.client.get("/api/v1/vms?limit=500")).json()["items"]
    return len(items) == n and all(v["guestReady"] or v["status"] != "running" for v in items)


def strip(headers: httpx.Headers) -> list[tuple[str, str]]:
    return sorted((k, v) for k, v in headers.items() if k not in ("date",))


@pytest.fixture
async def lanes(server_factory: Any, database_url: str) -> AsyncIterator[Lanes]:
    server = await server_factory(database_url=database_url)
    yield Lanes(server)


async def test_single_vm_answers_are_the_routes(lanes: Lanes) -> None:
    s = lanes.server
    job = await s.create([{"name": "fast-a", "tags": ["dev"]}, {"name": "fast-b", "start": False}])
    a, b = (t["resourceId"] for t in job["tasks"])
    await settled(s, 2)
    vm = (await lanes.same(s.client, f"/api/v1/vms/{a}")).json()
    assert vm["name"] == "fast-a" and vm["status"] == "running"
    await lanes.same(s.client, f"/api/v1/vms/{b}")
    await lanes.same(s.client, f"/api/v1/vms/{vm['uuid']}")
    await lanes.same(s.client, "/api/v1/vms/vm-nosuchvm000")
    await lanes.same(s.client, "/api/v1/vms/%2e%2e")
    # another organization's VM is not found, as the route says it
    _org, other = await new_org(s)
    async with other:
        r = await lanes.same(other, f"/api/v1/vms/{a}")
        assert r.status_code == 404
    # what the lane does not take goes on to the routes, once
    await lanes.same(s.client, f"/api/v1/vms/{a}?waitReady=0", served=False)
    await lanes.same(s.client, f"/api/v1/vms/{a}/", served=False)
    await lanes.same(s.client, f"/api/v1/vms/{a}", served=False, content=b"{}")


async def test_list_answers_are_the_routes(lanes: Lanes) -> None:
    s = lanes.server
    job = await s.create([{"name": f"page-{i}", "tags": ["dev"] if i % 2 else []} for i in range(5)])
    node = (await s.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()["nodeId"]
    await settled(s, 5)
    first = (await lanes.same(s.client, "/api/v1/vms?limit=2")).json()
    assert len(first["items"]) == 2 and first["nextPageToken"]
    await lanes.same(s.client, "/api/v1/vms", params={"limit": 2, "pageToken": first["nextPageToken"]})
    for query in ("", "?tag=dev", "?status=running", f"?node={node}", "?name=page-3", "?limit=500", "?status=running&tag=dev&limit=3", "?other=1"):
        await lanes.same(s.client, f"/api/v1/vms{query}")
    await lanes.same(s.client, "/api/v1/vms?pageToken=not-a-token")  # refused by the service: the lane answers it the same
    for query in ("?limit=0", "?limit=501", "?limit=abc", f"?node={'n' * 65}"):
        r = await lanes.same(s.client, f"/api/v1/vms{query}", served=False)
        assert r.status_code == 400, query
    for query in ("?limit=01", "?limit=2&limit=3", "?node=", "?limit=%201", "?limit=%C2%B2"):  # odd, left to the routes
        await lanes.same(s.client, f"/api/v1/vms{query}", served=False)


async def test_credentials_and_limits_are_the_same_either_way(server_factory: Any) -> None:
    server = await server_factory(rate_limit_per_second=0.001, rate_limit_burst=4)
    lanes = Lanes(server)
    async with httpx.AsyncClient(base_url=server.url) as anonymous, server.client_with("vmp_notakey") as wrong:
        await lanes.same(anonymous, "/api/v1/vms", served=False)  # no credentials: the routes' 401
        await lanes.same(wrong, "/api/v1/vms/vm-abc", served=False)
    # one bucket per credential whichever way its requests come: 4, then refused
    fast, slow = await lanes.both(server.client, "/api/v1/vms")
    assert fast.status_code == slow.status_code == 200
    fast, slow = await lanes.both(server.client, "/api/v1/vms/vm-nosuchvm000")
    assert fast.status_code == slow.status_code == 404
    fast, slow = await lanes.both(server.client, "/api/v1/vms")
    assert fast.status_code == slow.status_code == 429
    assert fast.json()["code"] == slow.json()["code"] == "rate_limited" and fast.headers["retry-after"] == slow.headers["retry-after"]


async def test_the_lanes_requests_are_counted_under_the_routes_labels(server_factory: Any) -> None:
    server = await server_factory(metrics_auth=False)
    lanes = Lanes(server)

    async def counts() -> dict[str, float]:
        text = (await server.client.get("/metrics")).text
        found = re.findall(r'^vmplane_api_requests_total\{method="GET",route="(/api/v1/vms[^"]*)",status="(\d+)"\} (\S+)$', text, re.M)
        return {f"{route} {status}": float(n) for route, status, n in found}

    before = await counts()
    await lanes.same(server.client, "/api/v1/vms")
    await lanes.same(server.client, "/api/v1/vms/vm-nosuchvm000")
    after = await counts()
    assert after.get("/api/v1/vms 200", 0) - before.get("/api/v1/vms 200", 0) == 2
    assert after.get("/api/v1/vms/{vm_id} 404", 0) - before.get("/api/v1/vms/{vm_id} 404", 0) == 2


async def test_quick_reads_of_a_vm_are_sqlalchemys(server_factory: Any) -> None:
    """On SQLite a VM is read through the store's own sqlite3 connection (store.QuickReads):
    the same record as through SQLAlchemy, JSON and Boolean columns converted alike, and what
    was committed a moment before."""
    from vmplane.store import vms as vm_q

    server = await server_factory()
    store = server.rt.store
    assert store.quick is not None
    job = await server.create([{"name": "q-a", "tags": ["x", "y"]}, {"name": "q-b", "start": False}])
    await settled(server, 2)
    for task in job["tasks"]:
        vm_id = task["resourceId"]
        async with store.read() as conn:
            through_sqlalchemy = await vm_q.get_vm(conn, vm_id)
        quick = await vm_q.find_vm(store, vm_id)
        assert quick == through_sqlalchemy and quick is not None
        assert isinstance(quick.guest_ready, bool) and isinstance(quick.tags, list)
        assert await vm_q.find_vm(store, quick.uuid) == quick
    assert await vm_q.find_vm(store, "vm-nosuchvm000") is None
    page = {"node": None, "status": None, "tag": None, "name": None, "after_seq": None, "limit": 10, "org_id": "org-default", "team_id": None}
    for change in ({}, {"tag": "y"}, {"status": "stopped"}, {"limit": 1}, {"after_seq": 1}, {"name": "q-a"}):
        async with store.read() as conn:
            through_sqlalchemy = await vm_q.list_vms(conn, **{**page, **change})
        assert await vm_q.find_vms(store, **{**page, **change}) == through_sqlalchemy, change
    before = await vm_q.find_vm(store, job["tasks"][1]["resourceId"])
    assert before is await vm_q.find_vm(store, job["tasks"][1]["resourceId"])  # an unchanged row: the same record, made once
    r = await server.client.patch(f"/api/v1/vms/{job['tasks'][1]['resourceId']}", json={"tags": ["z"]})
    await server.wait_job(r.json()["jobId"])
    found = await vm_q.find_vm(store, job["tasks"][1]["resourceId"])
    assert found is not None and found.tags == ["z"] and before is not None and before.tags == []
