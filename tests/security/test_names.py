"""Names per organization (issue 19, item 4), against real servers with two organizations:
a name another organization holds is invisible (no 409 that tells it exists), lookups by
name never reach another organization's resource (native, Volant face, MCP, CLI),
deployment replica names and networks live in their organization only, and no name a tenant
chooses decides which image an operator's shared plugin boots."""

import asyncio
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from ..support import Server


async def new_org(server: Server, name: str, owner: str) -> httpx.AsyncClient:
    r = await server.client.post("/api/v1/orgs", json={"name": name, "owner": owner})
    assert r.status_code == 201, r.text
    return server.client_with(r.json()["ownerKey"])


async def create_vm(server: Server, client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/v1/vms", json=body)
    assert r.status_code == 202, r.text  # not 409: the other organization's name is not in the way
    job = await server.wait_job(r.json()["jobId"], client=client)
    assert job["state"] == "succeeded", job
    return (await client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()


async def named(client: httpx.AsyncClient, name: str) -> list[str]:
    return [v["id"] for v in (await client.get("/api/v1/vms", params={"name": name})).json()["items"]]


async def cli(server: Server, key: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, "--url", server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "VMPLANE_API_KEY": key},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_vm_names_are_per_organization_on_every_face(server: Server) -> None:
    acme = await new_org(server, "acme", "wile")
    bravo = await new_org(server, "bravo", "bugs")
    key_b = bravo.headers["X-API-Key"]
    a = await create_vm(server, acme, {"name": "acme-secret", "tags": ["a"]})
    b = await create_vm(server, bravo, {"name": "acme-secret", "tags": ["b"]})
    assert a["id"] != b["id"]
    assert await named(acme, "acme-secret") == [a["id"]] and await named(bravo, "acme-secret") == [b["id"]]
    # the organization's own namespace still refuses a second one
    r = await bravo.post("/api/v1/vms", json={"name": "acme-secret"})
    assert r.status_code == 409 and r.json()["code"] == "conflict"
    # a rename into a name another organization holds is no conflict either
    other = await create_vm(server, acme, {"name": "acme-other"})
    mine = await create_vm(server, bravo, {"name": "mine"})
    r = await bravo.patch(f"/api/v1/vms/{mine['id']}", json={"name": "acme-other"})
    assert r.status_code == 202 and (await server.wait_job(r.json()["jobId"], client=bravo))["state"] == "succeeded"
    assert (await acme.get(f"/api/v1/vms/{other['id']}")).json()["name"] == "acme-other"

    # the Volant face (VMs by name): bravo reaches only its own
    r = await bravo.get("/compat/volant/api/v1/vms/acme-secret")
    assert r.status_code == 200 and r.json()["name"] == "acme-secret"
    assert (await bravo.get("/compat/volant/api/v1/vms/acme-other")).json()["name"] == "acme-other"
    # MCP (Volant's command endpoint) by name
    r = await bravo.post("/api/v1/mcp", json={"command": "volant.vms.get", "params": {"name": "acme-secret"}})
    assert r.status_code == 200 and r.json()["result"]["name"] == "acme-secret"
    # the CLI by name
    code, out, err = await cli(server, key_b, "vm", "get", "acme-secret", "--json")
    assert code == 0, err
    assert json.loads(out)["id"] == b["id"]
    code, _, err = await cli(server, key_b, "vm", "stop", "acme-secret")
    assert code == 0, err
    assert (await acme.get(f"/api/v1/vms/{a['id']}")).json()["status"] == "running"
    assert (await bravo.get(f"/api/v1/vms/{b['id']}")).json()["status"] == "stopped"

    # deletes by name in bravo delete bravo's: Volant, MCP, CLI
    assert (await bravo.delete("/compat/volant/api/v1/vms/acme-secret")).status_code == 204
    r = await bravo.post("/api/v1/mcp", json={"command": "volant.vms.delete", "params": {"name": "acme-other"}})
    assert r.json()["result"]["deleted"] is True
    third = await create_vm(server, bravo, {"name": "acme-secret"})
    code, _, err = await cli(server, key_b, "vm", "delete", "acme-secret", "--force")
    assert code == 0, err
    assert (await bravo.get(f"/api/v1/vms/{third['id']}")).status_code == 404
    # and acme's VMs of those names are untouched; bravo's id lookups of them answer 404
    assert (await acme.get(f"/api/v1/vms/{a['id']}")).json()["status"] == "running"
    assert (await acme.get(f"/api/v1/vms/{other['id']}")).json()["name"] == "acme-other"
    assert (await bravo.get(f"/api/v1/vms/{a['id']}")).status_code == 404
    assert (await bravo.delete("/compat/volant/api/v1/vms/acme-secret")).status_code == 404
    code, _, err = await cli(server, key_b, "vm", "get", "acme-secret")
    assert code == 1 and "does not exist" in err


async def test_templates_networks_deployments_are_per_organization(server: Server, tmp_path: Path) -> None:
    acme = await new_org(server, "acme", "wile")
    bravo = await new_org(server, "bravo", "bugs")
    images = tmp_path / "data" / "imports"
    images.mkdir(parents=True, exist_ok=True)
    (images / "a.img").write_bytes(b"a" * 4096)
    (images / "b.img").write_bytes(b"b" * 4096)

    # templates: the same name in both, each sees and deletes its own
    ids = {}
    for client, f in ((acme, "a.img"), (bravo, "b.img")):
        r = await client.post("/api/v1/templates", json={"name": "golden", "os": "linux", "sourceUrl": f"file://{images / f}"})
        assert r.status_code == 202, r.text
        assert (await server.wait_job(r.json()["jobId"], client=client))["state"] == "succeeded"
        ids[client] = (await client.get("/api/v1/templates/golden")).json()["id"]
    assert ids[acme] != ids[bravo]
    assert (await bravo.get(f"/api/v1/templates/{ids[acme]}")).status_code == 404
    vm = await create_vm(server, bravo, {"name": "from-golden", "templateId": "golden"})
    assert vm["templateId"] == ids[bravo]
    assert (await bravo.get("/api/v1/templates/golden")).json()["shared"] is False
    # a delete by name in bravo never reaches acme's template of that name
    r = await acme.post("/api/v1/templates", json={"name": "solo", "os": "linux", "sourceUrl": f"file://{images / 'a.img'}"})
    assert (await server.wait_job(r.json()["jobId"], client=acme))["state"] == "succeeded"
    r = await bravo.request("DELETE", "/api/v1/templates", json={"templateIds": ["solo"]})
    assert r.status_code == 202, r.text  # a bulk delete: the name is unknown here, its task fails
    job = await server.wait_job(r.json()["jobId"], client=bravo)
    assert job["state"] == "failed" and job["tasks"][0]["error"] == "template solo does not exist"
    r = await bravo.patch("/api/v1/templates/solo", json={"os": "evil"})
    assert r.status_code == 404, r.text
    assert (await acme.get("/api/v1/templates/solo")).json()["os"] == "linux"

    # networks: the same name in two organizations; `user` still resolves for both
    nets = {}
    for client, subnet in ((acme, "10.128.1.0/24"), (bravo, "10.128.2.0/24")):
        r = await client.post("/api/v1/networks", json={"name": "lan", "type": "bridge", "subnet": subnet})
        assert r.status_code == 201, r.text
        nets[client] = r.json()["id"]
        assert (await client.get("/api/v1/networks/lan")).json()["id"] == nets[client]
        user = (await client.get("/api/v1/networks/user")).json()
        assert user["shared"] is True
    r = await bravo.post("/api/v1/networks", json={"name": "lan", "type": "bridge", "subnet": "10.128.3.0/24"})
    assert r.status_code == 409  # twice in one organization
    on_lan = await create_vm(server, bravo, {"name": "on-lan", "networks": [{"networkId": "lan"}]})
    assert [n["networkId"] for n in on_lan["nics"]] == [nets[bravo]]
    plain = await create_vm(server, bravo, {"name": "plain"})
    assert plain["nics"][0]["networkId"] == (await bravo.get("/api/v1/networks/user")).json()["id"]
    r = await bravo.request("DELETE", "/api/v1/vms", json={"vmIds": [on_lan["id"]]})
    assert (await server.wait_job(r.json()["jobId"], client=bravo))["state"] == "succeeded"
    assert (await bravo.delete("/api/v1/networks/lan")).status_code == 204
    assert (await acme.get("/api/v1/networks/lan")).json()["id"] == nets[acme]

    # deployments: the same name, replicas `web-<i>` in each organization's namespace; a
    # VM bravo names `web-2` takes no number of acme's deployment
    squat = await create_vm(server, bravo, {"name": "web-2"})
    for client in (acme, bravo):
        r = await client.post("/api/v1/deployments", json={"name": "web", "replicas": 2})
        assert r.status_code == 201, r.text

    async def replicas(client: httpx.AsyncClient) -> list[str]:
        return sorted(v["name"] for v in (await client.get("/api/v1/vms")).json()["items"] if v["name"].startswith("web-"))

    async def settled() -> bool:
        return await replicas(acme) == ["web-1", "web-2"] and await replicas(bravo) == ["web-1", "web-2", "web-3"]

    for _ in range(200):
        if await settled():
            break
        await asyncio.sleep(0.1)
    assert await replicas(acme) == ["web-1", "web-2"], await replicas(acme)
    # bravo's own `web-2` is not its deployment's: its deployment skips that number
    assert await replicas(bravo) == ["web-1", "web-2", "web-3"]
    assert (await bravo.get(f"/api/v1/vms/{squat['id']}")).json()["name"] == "web-2"
    assert (await acme.get("/api/v1/deployments/web")).json()["readyReplicas"] == 2
    # the Volant face's deployments by name
    r = await bravo.get("/compat/volant/api/v1/deployments/web")
    assert r.status_code == 200
    assert (await bravo.delete("/api/v1/deployments/web")).status_code in (200, 202, 204)
    assert (await acme.get("/api/v1/deployments/web")).status_code == 200


def plugin_manifest(image: Path) -> dict[str, Any]:
    return {
        "schema_version": "1.0", "name": "web", "version": "0.1.0", "resources": {"cpu_cores": 1, "memory_mb": 128},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd", "-f"]},
        "rootfs": {"url": f"file://{image}", "checksum": "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest(), "format": "raw"},
    }  # fmt: skip


async def test_a_tenant_cannot_choose_the_image_of_a_shared_plugin(server: Server, tmp_path: Path) -> None:
    """bravo pre-creates templates under every name the operators' plugin could pick (the old
    predictable one and the new), and one from the very same file with the right checksum:
    the plugin still fetches its own shared template, checksum checked, and acme's VMs from it
    are created; bravo's templates are untouched."""
    acme = await new_org(server, "acme", "wile")
    bravo = await new_org(server, "bravo", "bugs")
    images = tmp_path / "data" / "imports"
    images.mkdir(parents=True, exist_ok=True)
    good, evil = images / "good.raw", images / "evil.raw"
    good.write_bytes(b"\x42" * 8192)
    evil.write_bytes(b"\x66" * 8192)
    m = plugin_manifest(good)
    digest = m["rootfs"]["checksum"].split(":")[1]
    old_name = "plugin-rootfs-" + hashlib.sha256(f"rootfs\nfile://{good}\n{digest}\n".encode()).hexdigest()[:16]
    new_name = "plugin-rootfs-" + hashlib.sha256(f"rootfs\nfile://{good}\n{digest}".encode()).hexdigest()[:16]
    squats = {}
    for name, src in ((old_name, evil), (new_name, evil), ("same-file", good)):
        r = await bravo.post("/api/v1/templates", json={"name": name, "os": "linux", "sourceUrl": f"file://{src}"})
        assert r.status_code == 202, r.text
        assert (await server.wait_job(r.json()["jobId"], client=bravo))["state"] == "succeeded"
        squats[name] = (await bravo.get(f"/api/v1/templates/{name}")).json()

    r = await server.client.post("/api/v1/plugins", json=m)  # the operators install it: shared
    assert r.status_code == 201, r.text
    plugin = r.json()
    tpl_id = plugin["image"]["templateId"]
    assert plugin["shared"] is True and tpl_id not in {t["id"] for t in squats.values()}
    job = await server.wait_job(next(j["id"] for j in (await server.client.get("/api/v1/jobs")).json()["items"] if j["type"] == "template-create"))
    assert job["state"] == "succeeded", job
    tpl = (await acme.get(f"/api/v1/templates/{tpl_id}")).json()  # shared: acme sees it
    assert tpl["checksum"] == m["rootfs"]["checksum"] and tpl["status"] == "ready"

    vm = await create_vm(server, acme, {"name": "w1", "plugin": "web"})
    assert vm["templateId"] == tpl_id and vm["plugin"]["shared"] is True
    vm_b = await create_vm(server, bravo, {"name": "w1", "plugin": "web"})
    assert vm_b["templateId"] == tpl_id
    for name, before in squats.items():
        after = (await bravo.get(f"/api/v1/templates/{before['id']}")).json()
        assert after["name"] == name and after["checksum"] == before["checksum"]

    # bravo's own plugin of the same name shadows the shared one for bravo only, with bravo's
    # own template (its `same-file` has the manifest's checksum and is bravo's: reused)
    r = await bravo.post("/api/v1/plugins", json=m)
    assert r.status_code == 201, r.text
    assert r.json()["shared"] is False and r.json()["image"]["templateId"] == squats["same-file"]["id"]
    assert (await acme.get("/api/v1/plugins/web")).json()["shared"] is True
    assert (await bravo.get("/api/v1/plugins/web")).json()["shared"] is False
    # acme's plugin VM still resolves to the shared plugin; deleting bravo's plugin names
    # none of acme's VMs, and bravo's VM made from the shared plugin still blocks nothing of bravo's own
    assert (await acme.get(f"/api/v1/vms/{vm['id']}/plugin")).json()["plugin"] == "web"
    r = await bravo.delete("/api/v1/plugins/web")
    assert r.status_code == 204, r.text
    r = await server.client.delete("/api/v1/plugins/web")  # the shared one: used by VMs of two organizations
    assert r.status_code == 409 and "w1" not in json.dumps(r.json()["details"]) and "2 of other organizations" in r.json()["error"]
