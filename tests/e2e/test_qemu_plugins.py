"""A plugin on a real guest (one TCG guest for all of it): the plugin's initramfs (the tiny
image's, named by a file:// URL with its sha256) is fetched and checked into a template;
its cloud-init starts busybox httpd serving a CGI action, a health endpoint and an OpenAPI
file; a VM created with the plugin's runtime becomes healthy, an action is called through
vmplane (native and over MCP), one that is too slow ends in 502 at its timeout, and the
OpenAPI document comes from the guest (native and on the Volant face)."""

import asyncio
import hashlib
import json
from typing import Any

import pytest

from ..support import Server, require_qemu

pytestmark = pytest.mark.slow

OPENAPI = {"openapi": "3.0.0", "info": {"title": "hello plugin", "version": "1.0"}, "paths": {"/cgi-bin/hello": {"post": {"summary": "say hello"}}}}

USER_DATA = """#!/bin/sh
mkdir -p /srv/www/cgi-bin
cat >/srv/www/openapi.json <<'EOF'
%s
EOF
cat >/srv/www/cgi-bin/hello <<'EOF'
#!/bin/sh
body=$(head -c "${CONTENT_LENGTH:-0}")
printf 'Content-Type: application/json\\r\\n\\r\\n'
printf '{"hello":"%%s","method":"%%s","query":"%%s","got":%%s}\\n' "$(hostname)" "$REQUEST_METHOD" "$QUERY_STRING" "${body:-null}"
EOF
cat >/srv/www/cgi-bin/slow <<'EOF'
#!/bin/sh
sleep 8
printf 'Content-Type: text/plain\\r\\n\\r\\nlate\\n'
EOF
chmod 755 /srv/www/cgi-bin/hello /srv/www/cgi-bin/slow
echo ok >/srv/www/healthz
httpd -p 8080 -h /srv/www
""" % json.dumps(OPENAPI)  # noqa: UP031 (a shell script whose printf formats are escaped %%s)


async def health_events(c: Any, name: str) -> list[str]:
    """The healths `vm.health` events about VM `name` reported, up to `healthy` (from the
    event log: one event per change)."""

    async def collect() -> list[str]:
        seen: list[str] = []
        async with c.stream("GET", "/api/v1/events", params={"types": "vm.health", "since": "0"}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    data = json.loads(line[5:])["data"]
                    if data["name"] == name:
                        seen.append(data["health"])
                        if data["health"] == "healthy":
                            return seen
        raise AssertionError(f"the event stream ended after {seen}")

    return await asyncio.wait_for(collect(), 20)


async def test_plugin_workload_on_a_real_guest(server_factory: Any) -> None:
    require_qemu()
    server: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, plugin_health_seconds=1.0, shutdown_timeout_seconds=5)
    c = server.client
    image = await server.rt.tiny_image()
    assert image is not None
    digest = hashlib.sha256(image.initrd.read_bytes()).hexdigest()
    manifest = {
        "schema_version": "1.0",
        "name": "hello",
        "version": "1.0.0",
        "runtime": "hello-rt",
        "resources": {"cpu_cores": 1, "memory_mb": 192},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd", "-p", "8080"]},
        "health_check": {"endpoint": "/healthz", "timeout_ms": 1000},
        "actions": {
            "hello": {"method": "POST", "path": "/cgi-bin/hello", "timeout_ms": 10000},
            "slow": {"method": "GET", "path": "/cgi-bin/slow", "timeout_ms": 1500},
        },
        "initramfs": {"url": f"file://{image.initrd}", "checksum": f"sha256:{digest}"},
        "cloud_init": {"user_data": {"content": USER_DATA, "inline": True}},
        "openapi": "/openapi.json",
    }
    r = await c.post("/api/v1/plugins", json=manifest)
    assert r.status_code == 201, r.text
    for _ in range(600):
        plugin = (await c.get("/api/v1/plugins/hello")).json()
        if plugin["image"]["status"] != "importing":
            break
        await asyncio.sleep(0.1)
    assert plugin["image"]["status"] == "ready", plugin

    r = await c.post("/api/v1/vms", json={"name": "hello-1", "plugin": "hello-rt"})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], timeout=180)
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert vm["status"] == "running" and vm["resources"]["ramMb"] == 192 and vm["plugin"]["runtime"] == "hello-rt"

    # the workload comes up (user-data ran at boot) and its health check turns healthy
    health = None
    for _ in range(240):
        health = (await c.get(f"/api/v1/vms/{vm_id}/plugin")).json()["health"]
        if health and health["status"] == "healthy":
            break
        await asyncio.sleep(0.5)
    assert health and health["status"] == "healthy", health
    assert (await health_events(c, "hello-1")) in (["healthy"], ["unhealthy", "healthy"])  # while httpd was not up yet

    r = await c.post(f"/api/v1/vms/{vm_id}/actions/hello?who=me", json={"n": 1}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"hello": "hello-1", "method": "POST", "query": "who=me", "got": {"n": 1}}

    r = await c.post(f"/api/v1/vms/{vm_id}/actions/slow", timeout=30)
    assert r.status_code == 502 and "1500 ms" in r.json()["error"], r.text

    out = (await c.post("/api/v1/mcp", json={"command": "volant.vms.action", "params": {"name": "hello-1", "action": "hello", "body": "[2]"}})).json()
    assert out["result"]["status"] == 200 and json.loads(out["result"]["body"])["got"] == [2], out

    r = await c.get(f"/api/v1/vms/{vm_id}/openapi")
    assert r.status_code == 200 and r.json() == OPENAPI, r.text
    r = await c.get("/compat/volant/api/v1/vms/hello-1/openapi")
    assert r.status_code == 200 and r.json() == OPENAPI, r.text

    # a plugin in use is not deleted
    r = await c.delete("/api/v1/plugins/hello")
    assert r.status_code == 409 and r.json()["details"]["vms"] == ["hello-1"]
    job = await server.wait_job((await c.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", job
