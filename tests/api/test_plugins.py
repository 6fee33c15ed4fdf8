"""Plugins on the sim driver: manifest validation (each bad manifest names its field),
install with the image fetched and checksum-verified into a template, enable/disable, VMs
made from a plugin, delete refused while VMs use it, the OpenAPI lookup's 404 and 502."""

import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest

from ..support import Server


def manifest(image: Path, **over: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "schema_version": "1.0",
        "name": "web",
        "version": "0.1.0",
        "resources": {"cpu_cores": 2, "memory_mb": 384},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd", "-f"]},
        "health_check": {"endpoint": "/healthz", "timeout_ms": 500},
        "actions": {"hello": {"method": "GET", "path": "/cgi-bin/hello", "timeout_ms": 2000}},
        "rootfs": {"url": f"file://{image}", "checksum": "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest(), "format": "raw"},
        "cloud_init": {"user_data": {"content": "#!/bin/sh\necho hi\n", "inline": True}},
    }
    m.update(over)
    return m


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "rootfs.raw"
    p.write_bytes(b"\x42" * 8192)
    return p


def _del(path: str):
    def f(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        del m[last]

    return f


def _set(path: str, value: Any):
    def f(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            m = m[p]
        m[last] = value

    return f


BAD = [
    (_del("name"), "name"),
    (_del("schema_version"), "schema_version"),
    (_set("name", "Not A Name"), "name"),
    (_set("resources.cpu_cores", 0), "resources.cpu_cores"),
    (_del("resources.memory_mb"), "resources.memory_mb"),
    (_set("workload.type", "grpc"), "workload.type"),
    (_del("workload.base_url"), "workload.base_url"),
    (_set("health_check.timeout_ms", "fast"), "health_check.timeout_ms"),
    (_set("actions", {"hello": {"path": "/x"}}), "actions.hello.method"),
    (_set("actions", {"hello": {"method": "FETCH", "path": "/x"}}), "actions.hello.method"),
    (_set("rootfs.checksum", "md5:abc"), "rootfs.checksum"),
    (_set("rootfs.format", "vmdk"), "rootfs.format"),
    (_del("rootfs"), "rootfs"),
    (_set("initramfs", {"url": "file:///x", "checksum": "0" * 64}), "initramfs"),
    (_set("network", {"mode": "carrier-pigeon"}), "network.mode"),
    (_set("cloud_init", {"datasource": "ConfigDrive"}), "cloud_init.datasource"),
    (_set("openapi", "ftp://x/y"), "openapi"),
    (_set("surprise", 1), "surprise"),
]


async def test_bad_manifests_name_their_field(server: Server, image: Path) -> None:
    for mutate, field in BAD:  # one server for every case (a server each would cost ~2 s)
        m = copy.deepcopy(manifest(image))
        mutate(m)
        r = await server.client.post("/api/v1/plugins", json=m)
        assert r.status_code == 400, (field, r.text)
        assert r.json()["details"]["field"] == field, (field, r.json())
    for body in ([], "x", {"name": "web"}):
        r = await server.client.post("/api/v1/plugins", json=body)
        assert r.status_code == 400, r.text
    assert (await server.client.get("/api/v1/plugins")).json()["items"] == []


async def wait_image(server: Server, name: str) -> dict[str, Any]:
    import asyncio

    for _ in range(400):
        p = (await server.client.get(f"/api/v1/plugins/{name}")).json()
        if p["image"]["status"] != "importing":
            return p
        await asyncio.sleep(0.05)
    raise AssertionError(f"image of {name} still importing")


async def test_install_enable_disable_create_delete(server_factory: Any, database_url: str, image: Path) -> None:
    server = await server_factory(database_url=database_url)
    r = await server.client.post("/api/v1/plugins", json=manifest(image))
    assert r.status_code == 201, r.text
    assert r.json()["runtime"] == "web" and r.json()["enabled"] is True
    assert (await server.client.post("/api/v1/plugins", json=manifest(image))).status_code == 409
    p = await wait_image(server, "web")
    assert p["image"]["status"] == "ready", p
    tpl = (await server.client.get(f"/api/v1/templates/{p['image']['templateId']}")).json()
    assert tpl["checksum"] == manifest(image)["rootfs"]["checksum"]

    # a second plugin with the same image shares the template (fetched once)
    r = await server.client.post("/api/v1/plugins", json=manifest(image, name="web2"))
    assert r.status_code == 201 and r.json()["image"]["templateId"] == p["image"]["templateId"]

    # disabled: no new VMs
    r = await server.client.put("/api/v1/plugins/web/enabled", json={"enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False
    r = await server.client.post("/api/v1/vms", json={"name": "w1", "plugin": "web"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "plugin"
    r = await server.client.post("/api/v1/plugins/web/enabled", json={"enabled": True})
    assert r.status_code == 200 and r.json()["enabled"] is True

    job = await server.create({"name": "w1", "plugin": "web"})
    assert job["state"] == "succeeded", job
    vm = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
    assert vm["resources"]["cpu"] == 2 and vm["resources"]["ramMb"] == 384
    assert vm["templateId"] == p["image"]["templateId"]
    assert vm["plugin"] == {"name": "web", "runtime": "web", "version": "0.1.0", "shared": True}  # the operators' plugin
    assert [e["port"] for e in vm["expose"]] == [8080] and vm["expose"][0]["hostPort"]
    info = (await server.client.get(f"/api/v1/vms/{vm['id']}/plugin")).json()
    assert info["plugin"] == "web" and info["actions"] == ["hello"]

    # a sim VM runs no workload: actions say so; no openapi: 404
    r = await server.client.post(f"/api/v1/vms/{vm['id']}/actions/hello")
    assert r.status_code == 409, r.text
    assert (await server.client.post(f"/api/v1/vms/{vm['id']}/actions/nope")).status_code == 404
    r = await server.client.get(f"/api/v1/vms/{vm['id']}/openapi")
    assert r.status_code == 404 and r.json()["error"] == "openapi spec unavailable"

    r = await server.client.delete("/api/v1/plugins/web")
    assert r.status_code == 409 and r.json()["details"]["vms"] == ["w1"]
    assert (await server.wait_job((await server.client.delete(f"/api/v1/vms/{vm['id']}")).json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.delete("/api/v1/plugins/web")).status_code == 204
    assert (await server.client.get("/api/v1/plugins/web")).status_code == 404
    assert [p["name"] for p in (await server.client.get("/api/v1/plugins")).json()["items"]] == ["web2"]


async def test_checksum_mismatch_fails_the_image(server: Server, image: Path) -> None:
    m = manifest(image)
    m["rootfs"]["checksum"] = "0" * 64
    assert (await server.client.post("/api/v1/plugins", json=m)).status_code == 201
    p = await wait_image(server, "web")
    assert p["image"]["status"] == "error" and "checksum mismatch" in p["image"]["error"]
    r = await server.client.post("/api/v1/vms", json={"name": "w1", "plugin": "web"})
    assert r.status_code == 409 and "checksum mismatch" in r.json()["error"]


async def test_openapi_url_that_fails_is_502(server: Server, image: Path) -> None:
    from ..support import free_port

    m = manifest(image, openapi=f"http://127.0.0.1:{free_port()}/openapi.json")
    assert (await server.client.post("/api/v1/plugins", json=m)).status_code == 201
    await wait_image(server, "web")
    job = await server.create({"name": "w1", "plugin": "web"})
    r = await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}/openapi")
    assert r.status_code == 502, r.text


async def test_health_states_follow_the_vm(server_factory: Any, database_url: str, image: Path) -> None:
    server = await server_factory(plugin_health_seconds=0, database_url=database_url)  # checks run when the test says
    assert (await server.client.post("/api/v1/plugins", json=manifest(image))).status_code == 201
    await wait_image(server, "web")
    job = await server.create({"name": "w1", "plugin": "web"})
    vm_id = job["tasks"][0]["resourceId"]
    assert (await server.client.get(f"/api/v1/vms/{vm_id}/plugin")).json()["health"] is None
    await server.rt.plugins.check_health()
    health = (await server.client.get(f"/api/v1/vms/{vm_id}/plugin")).json()["health"]
    assert health["status"] == "unhealthy" and "sim driver" in health["detail"]  # a sim VM runs no workload
    assert (await server.wait_job((await server.client.post(f"/api/v1/vms/{vm_id}/stop")).json()["jobId"]))["state"] == "succeeded"
    await server.rt.plugins.check_health()
    health = (await server.client.get(f"/api/v1/vms/{vm_id}/plugin")).json()["health"]
    assert health["status"] == "unknown" and health["detail"] == "the VM is stopped"
    assert (await server.wait_job((await server.client.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"]))["state"] == "succeeded"
    await server.rt.plugins.check_health()
    async with server.rt.store.read() as conn:
        from vmplane.store import plugins as plugin_q

        assert await plugin_q.get_health(conn, vm_id) is None


async def test_entrypoint_becomes_user_data_without_cloud_init(server: Server, image: Path) -> None:
    m = manifest(image)
    del m["cloud_init"]
    m["workload"].update(entrypoint=["/bin/srv", "--greeting", "it's me"], env={"MODE": "a b"}, workdir="/srv")
    assert (await server.client.post("/api/v1/plugins", json=m)).status_code == 201
    await wait_image(server, "web")
    job = await server.create({"name": "w1", "plugin": "web"})
    vm = await server.rt.vms.get(job["tasks"][0]["resourceId"], await server.rt.tenancy.principal_for_key(server.admin_key))
    script = vm.spec.to_json()["cloudInit"]["userData"]
    assert script.startswith("#!/bin/sh\n")
    assert "export MODE='a b'\ncd /srv || exit 1\n/bin/srv --greeting 'it'\"'\"'s me' </dev/null" in script, script
    # a create request's own cloud-init wins over the plugin's
    job = await server.create({"name": "w2", "plugin": "web", "cloudInit": {"userData": "#!/bin/sh\ntrue\n"}})
    vm = await server.rt.vms.get(job["tasks"][0]["resourceId"], await server.rt.tenancy.principal_for_key(server.admin_key))
    assert vm.spec.to_json()["cloudInit"] == {"userData": "#!/bin/sh\ntrue\n"}
