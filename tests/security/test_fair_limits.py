"""Fair limits, tried against a real server with two organizations, API keys and JWT tenants:
rate-limit buckets per credential (a JWT's organization and subject) and per organization;
open event streams and consoles per credential and per organization, through every face's
stream; default quotas for new organizations, counted where each thing is made; failed VMs
hold no quota."""

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Any

import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from vmplane.config import Settings
from vmplane.drivers.sim import SimFaults

from ..api.test_tenancy import SECRET, new_org
from ..support import Server
from ..support_fastvm import FastVmClient, GuestSimDriver
from .test_fencing import until


def _jwt(sub: str, org: str) -> dict[str, str]:
    token = jwt.encode({"sub": sub, "org": org, "exp": int(time.time()) + 300}, SECRET, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def _guest_nodes() -> list[tuple[str, GuestSimDriver]]:
    """One node with a serial console (an echo); creates of VMs named fail-… fail."""
    return [("node-1", GuestSimDriver(hostname="node-1", cpu=64, ram_mb=262144, disk_gb=4000, latency=0.005, faults=SimFaults(name_pattern="^fail-")))]


# -- requests ------------------------------------------------------------------------------


async def test_jwt_callers_have_a_bucket_per_organization_and_subject(server_factory: Any) -> None:
    server = await server_factory(jwt_secret=SECRET, rate_limit_per_second=0.01, rate_limit_burst=5)
    org_b, b = await new_org(server, "acme", "wile")
    anon = httpx.AsyncClient(base_url=server.url)
    a_codes = [(await anon.get("/api/v1/vms", headers=_jwt("admin", "org-default"))).status_code for _ in range(7)]
    assert a_codes[:5] == [200] * 5 and a_codes[5:] == [429, 429]
    # another organization's JWT subject still has its whole bucket (before issue 19 every JWT
    # caller shared one), as has the first organization's API key
    b_codes = [(await anon.get("/api/v1/vms", headers=_jwt("wile", org_b))).status_code for _ in range(5)]
    assert b_codes == [200] * 5
    assert (await server.client.get("/api/v1/vms")).status_code == 200
    await anon.aclose()
    await b.aclose()


async def test_an_organization_bucket_caps_all_its_keys(server_factory: Any) -> None:
    server = await server_factory(org_rate_limit_per_second=0.01, org_rate_limit_burst=20)
    _, b = await new_org(server, "acme", "wile")
    keys = [b.headers["X-API-Key"]]
    for i in range(4):  # an owner multiplying its share by minting keys (4 of the 20 requests)
        r = await b.post("/api/v1/api-keys", json={"name": f"k{i}"})
        assert r.status_code == 201
        keys.append(r.json()["key"])
    clients = [server.client_with(k) for k in keys]
    ok = 0
    refused: httpx.Response | None = None
    for _ in range(10):
        for c in clients:
            r = await c.get("/api/v1/vms")
            if r.status_code == 200:
                ok += 1
            else:
                assert r.status_code == 429
                refused = r
    assert 15 <= ok <= 17, ok  # the organization's 20, less the 4 mints (and a trickle of refill)
    assert refused is not None and "organization" in refused.json()["error"] and int(refused.headers["retry-after"]) >= 1
    # the other organization is not held back
    assert (await server.client.get("/api/v1/vms")).status_code == 200
    for c in [*clients, b]:
        await c.aclose()


# -- open streams --------------------------------------------------------------------------


class Streams:
    """Streams a test holds open, of every kind, closed together at the end."""

    def __init__(self, server: Server, key: str) -> None:
        self.server, self.key = server, key
        self.http = httpx.AsyncClient(base_url=server.url, headers={"X-API-Key": key}, timeout=10, limits=httpx.Limits(max_connections=64))
        self.stack = contextlib.AsyncExitStack()
        self.ws_base = server.url.replace("http", "ws")

    async def sse(self, path: str = "/api/v1/events") -> httpx.Response:
        """Open an SSE stream; returns its response (held open if 200)."""
        r = await asyncio.wait_for(self.stack.enter_async_context(self.http.stream("GET", path)), 10)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("text/event-stream")
        else:
            await r.aread()
        return r

    async def ws(self, path: str) -> ClientConnection:
        """Open a WebSocket (raises InvalidStatus when refused)."""
        return await self.stack.enter_async_context(connect(self.ws_base + path, additional_headers={"X-API-Key": self.key}, open_timeout=10))

    async def fastvm_console(self, vm_uuid: str) -> ClientConnection:
        r = await self.http.post(f"/compat/fastvm/v1/vms/{vm_uuid}/console-token")
        assert r.status_code == 200, r.text
        tok = r.json()
        return await self.stack.enter_async_context(connect(f"{self.ws_base}{tok['websocketPath']}?session={tok['token']}", open_timeout=10))

    async def aclose(self) -> None:
        await self.stack.aclose()
        await self.http.aclose()


def _refused(exc: pytest.ExceptionInfo[InvalidStatus]) -> int:
    return exc.value.response.status_code


async def test_the_17th_stream_of_a_credential_is_refused_on_every_face(server_factory: Any) -> None:
    server = await server_factory(nodes=_guest_nodes())
    _, b = await new_org(server, "acme", "wile")
    r = await b.post("/api/v1/vms", json={"name": "box"})
    assert r.status_code == 202
    assert (await server.wait_job(r.json()["jobId"], client=b))["state"] == "succeeded"
    vm_uuid = (await FastVmClient(server.url + "/compat/fastvm", b.headers["X-API-Key"]).http.get("/v1/vms")).json()[0]["id"]
    s = Streams(server, b.headers["X-API-Key"])
    internal = server.rt.events.subscriber_count  # the server's own (the readiness watch follows vm.running)
    # 16 of every kind: native SSE and WebSocket, HyperSDK's /ws, Volant's SSE, a FastVM console
    first = await s.sse()
    for _ in range(8):
        assert (await s.sse()).status_code == 200
    for _ in range(4):
        await s.ws("/api/v1/events/ws")
    await s.ws("/compat/hypersdk/ws")
    assert (await s.sse("/compat/volant/api/v1/events/vms")).status_code == 200
    await s.fastvm_console(vm_uuid)
    assert server.rt.streams.by_credential == {next(iter(server.rt.streams.by_credential)): 16}

    # the 17th, of any kind, is refused before it opens (429 in the face's own shape)
    r = await s.sse()
    assert r.status_code == 429 and r.json()["code"] == "rate_limited" and "credential" in r.json()["error"]
    assert (await s.sse("/compat/volant/api/v1/events/vms")).status_code == 429
    for path, shape in (("/api/v1/events/ws", {"error", "code", "details"}), ("/compat/hypersdk/ws", {"error", "timestamp"})):
        with pytest.raises(InvalidStatus) as refused:
            await s.ws(path)
        assert _refused(refused) == 429
        assert set(json.loads(refused.value.response.body)) == shape  # in the face's own error shape
    with pytest.raises(InvalidStatus) as refused:
        await s.fastvm_console(vm_uuid)
    assert _refused(refused) == 429
    subscribers = server.rt.events.subscriber_count
    # another key of the organization has its own 16
    other = (await b.post("/api/v1/api-keys", json={"name": "second"})).json()["key"]
    s2 = Streams(server, other)
    assert (await s2.sse()).status_code == 200

    # a closed stream frees its slot
    await first.aclose()
    await until(lambda: sum(server.rt.streams.by_credential.values()) == 16, "the closed stream's slot to be freed", 10)
    await s.ws("/api/v1/events/ws")
    assert server.rt.events.subscriber_count == subscribers + 1  # s2's; the 17th attempts subscribed nothing
    await s.aclose()
    await s2.aclose()
    await until(lambda: server.rt.streams.open == 0, "every slot to be freed", 10)
    await until(lambda: server.rt.events.subscriber_count == internal and server.rt.consoles == 0, "every stream to end", 10)
    await b.aclose()


async def test_an_organization_has_at_most_its_streams_and_shutdown_frees_them(server_factory: Any) -> None:
    server = await server_factory(max_streams_per_org=3, jwt_secret=SECRET)
    org_b, b = await new_org(server, "acme", "wile")
    second = (await b.post("/api/v1/api-keys", json={"name": "second"})).json()["key"]
    s1, s2 = Streams(server, b.headers["X-API-Key"]), Streams(server, second)
    assert (await s1.sse()).status_code == 200 and (await s1.sse()).status_code == 200
    await s2.ws("/api/v1/events/ws")
    r = await s2.sse()
    assert r.status_code == 429 and "organization" in r.json()["error"]
    # a JWT of the organization counts against it as well
    tenant = httpx.AsyncClient(base_url=server.url, headers=_jwt("wile", org_b))
    assert (await tenant.get("/api/v1/events")).status_code == 429
    # the other organization is not held back
    s0 = Streams(server, server.admin_key)
    assert (await s0.sse()).status_code == 200
    assert server.rt.streams.open == 4
    # shutting down ends every stream, and with them their slots
    await server.rt.go_away(wait=5)
    await until(lambda: server.rt.streams.open == 0, "shutdown to free every slot", 10)
    for s in (s0, s1, s2):
        await s.aclose()
    await tenant.aclose()
    await b.aclose()


# -- quotas --------------------------------------------------------------------------------


async def test_new_organizations_get_default_quotas_and_hit_them(server_factory: Any, tmp_path: Any) -> None:
    # the real defaults, through the native API and FastVM's quotas
    plain = await server_factory(data_dir=tmp_path / "plain")
    org_p, p = await new_org(plain, "plain", "pat")
    limits = (await p.get("/api/v1/org/quotas")).json()["limits"]
    assert limits == Settings.model_fields["default_quotas"].default
    assert limits["vcpu"] == 64 and limits["ramMb"] == 256 * 1024 and limits["vms"] == 100 and limits["networks"] == 50
    fv = FastVmClient(plain.url + "/compat/fastvm", p.headers["X-API-Key"])
    q = (await fv.call("GET", "/v1/org/quotas")).json()
    assert q["limits"]["vcpu"] == 64 and q["limits"]["memoryMiB"] == 256 * 1024 and q["limits"]["diskGiB"] == 2048
    # the bootstrap organization keeps no quota
    assert all(v is None for v in (await plain.client.get("/api/v1/org/quotas")).json()["limits"].values())
    await fv.http.aclose()
    await p.aclose()

    server = await server_factory(data_dir=tmp_path / "small", default_quotas={"webhooks": 2, "schedules": 1, "networks": 1, "vms": 10, "plugins": 1, "templates": 1})
    org_b, b = await new_org(server, "acme", "wile")
    hook = {"url": "http://127.0.0.1:9/x", "events": ["vm.*"]}
    assert [(await b.post("/api/v1/webhooks", json=hook)).status_code for _ in range(2)] == [201, 201]
    r = await b.post("/api/v1/webhooks", json=hook)
    assert r.status_code == 409 and r.json()["code"] == "quota_exceeded" and r.json()["details"]["quota"] == "webhooks"
    r = await b.post("/compat/hypersdk/webhooks", json={"url": "http://127.0.0.1:9/y", "events": ["job.completed"]})
    assert r.status_code == 409 and "webhooks limit is 2" in r.text  # HyperSDK's webhooks count too
    assert len((await b.get("/api/v1/webhooks")).json()["items"]) == 2  # nothing was made
    sch = {"name": "s", "schedule": "0 2 * * *", "jobTemplate": {"method": "POST", "path": "/api/v1/vms", "body": {"name": "z"}}}
    assert (await b.post("/api/v1/schedules", json=sch)).status_code == 201
    r = await b.post("/api/v1/schedules", json={**sch, "name": "s2"})
    assert r.status_code == 409 and r.json()["details"]["quota"] == "schedules"
    assert (await b.post("/api/v1/networks", json={"name": "n1", "type": "user", "subnet": "10.128.77.0/24"})).status_code == 201
    r = await b.post("/api/v1/networks", json={"name": "n2", "type": "user", "subnet": "10.128.78.0/24"})
    assert r.status_code == 409 and r.json()["details"]["quota"] == "networks"
    assert [n["name"] for n in (await b.get("/api/v1/networks")).json()["items"] if n["name"].startswith("n")] == ["n1"]
    # plugins, through the Volant face: the second is refused before its image is fetched
    image = server.rt.data_dir / "imports" / "rootfs.raw"  # where a tenant may name local files
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"\x42" * 4096)
    for name, code in (("web", 201), ("api", 409)):
        r = await b.post("/compat/volant/api/v1/plugins", json={
            "schema_version": "1.0", "name": name, "version": "1.0", "resources": {"cpu_cores": 1, "memory_mb": 128},
            "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd"]},
            "rootfs": {"url": f"file://{image}", "checksum": hashlib.sha256(image.read_bytes()).hexdigest()},
        })  # fmt: skip
        assert r.status_code == code, r.text
    assert "plugins limit is 1" in r.text
    usage = (await b.get("/api/v1/org/quotas")).json()["usage"]
    assert usage["webhooks"] == 2 and usage["schedules"] == 1 and usage["networks"] == 1
    assert usage["plugins"] == 1 and usage["templates"] == 1  # no template was made for the refused one
    r = await b.post("/api/v1/templates", json={"name": "mine", "sourceUrl": f"file://{image}"})
    assert r.status_code == 409 and r.json()["details"]["quota"] == "templates"
    # tenants cannot raise their own; operators can
    assert (await b.put(f"/api/v1/orgs/{org_b}/quotas", json={"webhooks": 99})).status_code == 403
    limits = (await server.client.get(f"/api/v1/orgs/{org_b}/quotas")).json()["limits"]
    r = await server.client.put(f"/api/v1/orgs/{org_b}/quotas", json={**limits, "webhooks": 3})
    assert r.status_code == 200 and r.json()["limits"]["schedules"] == 1
    assert (await b.post("/api/v1/webhooks", json=hook)).status_code == 201
    # the bootstrap organization is not bound by the defaults
    assert [(await server.client.post("/api/v1/webhooks", json=hook)).status_code for _ in range(3)] == [201] * 3
    await b.aclose()


async def test_vms_that_failed_to_be_created_hold_no_quota(server_factory: Any) -> None:
    server = await server_factory(nodes=_guest_nodes(), default_quotas={"vms": 2, "vcpu": 64})
    _, b = await new_org(server, "acme", "wile")
    r = await b.post("/api/v1/vms", json={"name": "fail-1"})
    assert r.status_code == 202
    assert (await server.wait_job(r.json()["jobId"], client=b))["state"] == "failed"
    q = (await b.get("/api/v1/org/quotas")).json()
    assert q["usage"]["vms"] == 0 and q["usage"]["vcpu"] == 0 and q["vmsByStatus"] == {"error": 1}
    for name in ("ok-1", "ok-2"):
        r = await b.post("/api/v1/vms", json={"name": name})
        assert r.status_code == 202, r.text  # the failed one does not count against the 2
        await server.wait_job(r.json()["jobId"], client=b)
    r = await b.post("/api/v1/vms", json={"name": "ok-3"})
    assert r.status_code == 409 and r.json()["details"]["quota"] == "vms"
    q = (await b.get("/api/v1/org/quotas")).json()
    assert q["usage"]["vms"] == 2 and sum(q["vmsByStatus"].values()) == 3
    await b.aclose()
