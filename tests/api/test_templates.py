"""Templates: import from file:// and http:// with progress, validation, use, rename, delete."""

import asyncio
import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..support import Server


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on loopback serving a directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


async def import_template(server: Server, **body: Any) -> tuple[dict[str, Any], str]:
    r = await server.client.post("/api/v1/templates", json={"os": "linux", **body})
    assert r.status_code == 202, r.text
    return await server.wait_job(r.json()["jobId"]), r.json()["templateId"]


async def test_import_from_http_with_progress_then_create_vm(server: Server, http_dir: tuple[str, Path]) -> None:
    base, root = http_dir
    (root / "img.qcow2").write_bytes(b"QFI\xfb" + b"\0" * (9 * 1024 * 1024))
    job, tpl_id = await import_template(server, name="ubuntu-22.04", sourceUrl=f"{base}/img.qcow2")
    assert job["state"] == "succeeded", job
    tpl = (await server.client.get(f"/api/v1/templates/{tpl_id}")).json()
    assert tpl["status"] == "ready" and tpl["format"] == "qcow2" and tpl["sizeMb"] == 10
    assert tpl["checksum"].startswith("sha256:")
    task = (await server.client.get(f"/api/v1/jobs/{job['id']}/tasks/{job['tasks'][0]['id']}")).json()
    assert any("downloaded" in line for line in task["log"])
    assert (await server.client.get("/api/v1/templates/ubuntu-22.04")).json()["id"] == tpl_id
    job = await server.create({"name": "from-tpl", "templateId": tpl_id})
    assert job["state"] == "succeeded", job
    vm = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
    assert vm["templateId"] == tpl_id


async def test_import_from_file_and_rename_and_delete(server: Server, tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\x55" * 4096)
    job, tpl_id = await import_template(server, name="raw-one", sourceUrl=f"file://{img}")
    assert job["state"] == "succeeded"
    r = await server.client.patch(f"/api/v1/templates/{tpl_id}", json={"name": "raw-two"})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.get(f"/api/v1/templates/{tpl_id}")).json()["name"] == "raw-two"

    vm_job = await server.create({"name": "user", "templateId": tpl_id})
    r = await server.client.request("DELETE", "/api/v1/templates", json={"templateIds": [tpl_id]})
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and "used by 1 VM" in job["tasks"][0]["error"]
    assert (await server.client.get(f"/api/v1/templates/{tpl_id}")).json()["status"] == "ready"

    r = await server.client.delete(f"/api/v1/vms/{vm_job['tasks'][0]['resourceId']}")
    await server.wait_job(r.json()["jobId"])
    r = await server.client.request("DELETE", "/api/v1/templates", json={"templateIds": [tpl_id]})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.get(f"/api/v1/templates/{tpl_id}")).status_code == 404
    assert not (server.rt.images_dir / f"{tpl_id}.img").exists()


async def test_bad_sources_fail_the_job_clearly(server: Server, tmp_path: Path, http_dir: tuple[str, Path]) -> None:
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    job, tpl_id = await import_template(server, name="empty", sourceUrl=f"file://{empty}")
    assert job["state"] == "failed" and "empty" in job["tasks"][0]["error"]
    tpl = (await server.client.get(f"/api/v1/templates/{tpl_id}")).json()
    assert tpl["status"] == "error" and tpl["error"]
    job, _ = await import_template(server, name="missing", sourceUrl=f"{http_dir[0]}/nope.img")
    assert job["state"] == "failed" and "HTTP 404" in job["tasks"][0]["error"]
    job, _ = await import_template(server, name="nofile", sourceUrl=f"file://{tmp_path}/absent.img")
    assert job["state"] == "failed" and "cannot read" in job["tasks"][0]["error"]
    # a template that is not ready cannot be used
    r = await server.client.post("/api/v1/vms", json={"name": "x", "templateId": tpl_id})
    assert r.status_code == 409


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "t", "sourceUrl": "ftp://host/x.img"}, "sourceUrl"),
        ({"name": "t", "sourceUrl": "file://relative/x.img"}, "sourceUrl"),
        ({"name": "t", "sourceUrl": "http:///nohost"}, "sourceUrl"),
        ({"name": "bad name", "sourceUrl": "http://h/x"}, "name"),
        ({"name": "t", "sourceUrl": "http://h/x", "os": "Linux OS"}, "os"),
        ({"name": "t", "sourceUrl": "http://h/x", "extra": 1}, "extra"),
        ({"name": "t"}, "sourceUrl"),
        ({"name": "t", "sourceUrl": "http://h/x", "nodeId": "node-77"}, "nodeId"),
    ],
)
async def test_template_validation(server: Server, body: dict[str, Any], field: str) -> None:
    r = await server.client.post("/api/v1/templates", json=body)
    assert r.status_code == 400 and r.json()["details"]["field"] == field, r.text
    assert (await server.client.get("/api/v1/templates")).json()["items"] == []


async def test_duplicate_template_names_conflict(server: Server, tmp_path: Path) -> None:
    img = tmp_path / "a.img"
    img.write_bytes(b"x" * 100)
    await import_template(server, name="same", sourceUrl=f"file://{img}")
    r = await server.client.post("/api/v1/templates", json={"name": "same", "sourceUrl": f"file://{img}"})
    assert r.status_code == 409
    r = await server.client.request("DELETE", "/api/v1/templates", json={"templateIds": ["tpl-nothere"]})
    assert r.status_code == 202  # a bulk delete: the unknown id fails its task, the job fails
    assert (await server.wait_job(r.json()["jobId"]))["tasks"][0]["error"] == "template tpl-nothere does not exist"


async def test_cancelling_an_import_removes_it(server_factory: Any, http_dir: tuple[str, Path]) -> None:
    server = await server_factory(job_concurrency=1, sim_latency_ms=300)
    base, root = http_dir
    (root / "a.img").write_bytes(b"a" * 1000)
    # the first import occupies the only worker, the second stays queued and is cancelled
    r1 = await server.client.post("/api/v1/templates", json={"name": "first", "sourceUrl": f"{base}/a.img"})
    r2 = await server.client.post("/api/v1/templates", json={"name": "second", "sourceUrl": f"{base}/a.img"})
    await asyncio.sleep(0.05)
    await server.client.post(f"/api/v1/jobs/{r2.json()['jobId']}/cancel")
    assert (await server.wait_job(r2.json()["jobId"]))["state"] == "cancelled"
    assert (await server.wait_job(r1.json()["jobId"]))["state"] == "succeeded"
    names = [t["name"] for t in (await server.client.get("/api/v1/templates")).json()["items"]]
    assert names == ["first"]


async def test_only_operators_name_any_local_file(server: Server, tmp_path: Path) -> None:
    """A file:// source makes the server read one of its own files: an organization's user may
    name only files in the directories imports read (VMPLANE_IMPORT_DIRS), not /etc/shadow."""
    from .test_tenancy import new_org

    _org, acme = await new_org(server)
    outside = tmp_path / "outside.img"
    outside.write_bytes(b"x" * 100)
    r = await acme.post("/api/v1/templates", json={"name": "t", "os": "linux", "sourceUrl": f"file://{outside}"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "sourceUrl", r.text
    r = await acme.post("/api/v1/plugins", json={
        "schema_version": "1", "name": "p", "version": "1", "resources": {"cpu_cores": 1, "memory_mb": 64},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["/bin/true"]},
        "rootfs": {"url": f"file://{outside}", "checksum": "0" * 64},
    })  # fmt: skip
    assert r.status_code == 400 and r.json()["details"]["field"] == "rootfs.url", r.text
    inside = tmp_path / "data" / "imports" / "inside.img"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"x" * 100)
    r = await acme.post("/api/v1/templates", json={"name": "t", "os": "linux", "sourceUrl": f"file://{inside}"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"], client=acme))["state"] == "succeeded"
    job, _ = await import_template(server, name="by-operator", sourceUrl=f"file://{outside}")
    assert job["state"] == "succeeded", job
