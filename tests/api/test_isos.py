"""The ISO library and VMs' CD-ROM, boot order and firmware, on the sim driver (which records
what it is told: `SimDriver.boot_of`; tests/e2e/test_qemu_iso.py boots them for real).

- upload (streamed body) and import from a URL (a job); list, get by id or name, delete;
- an operator's ISO is shared with every organization, read-only to them; an organization's
  own ISOs count in its diskGb quota;
- a VM with `cdrom`, `bootOrder` and `firmware` at create, changed by PATCH; an ISO in a
  CD-ROM cannot be deleted (409 naming the VM) until it is ejected;
- bad values are 400s naming the field; nothing changes.

The store's part runs on SQLite and PostgreSQL (VMPLANE_TEST_PG_URL)."""

import dataclasses
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..iso_support import small_iso
from ..support import Server

UPLOAD = "/api/v1/isos/upload"


@pytest.fixture
def iso_file(tmp_path: Path) -> Path:
    return small_iso(tmp_path / "small.iso")


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()


async def upload(client: httpx.AsyncClient, path: Path, name: str, **params: str) -> httpx.Response:
    return await client.post(
        UPLOAD, params={"name": name, **params}, content=path.read_bytes(), headers={"Content-Type": "application/octet-stream"}
    )


async def tenant(s: Server, name: str, quotas: dict[str, int] | None = None) -> tuple[httpx.AsyncClient, str]:
    r = await s.client.post("/api/v1/orgs", json={"name": name, "owner": f"{name}-owner"})
    assert r.status_code == 201, r.text
    body = r.json()
    org_id = body.get("id") or body["org"]["id"]
    if quotas:
        r = await s.client.put(f"/api/v1/orgs/{org_id}/quotas", json=quotas)
        assert r.status_code == 200, r.text
    return s.client_with(body["ownerKey"]), org_id


def boot_of(server: Server, vm: dict[str, Any]) -> Any:
    return server.rt.registry.driver(vm["nodeId"]).boot_of(vm["id"])


async def test_upload_list_get_and_delete(server: Server, iso_file: Path) -> None:
    digest = hashlib.sha256(iso_file.read_bytes()).hexdigest()
    r = await upload(server.client, iso_file, "small", sha256=digest.upper())
    assert r.status_code == 201, r.text
    iso = r.json()
    assert iso["status"] == "ready" and iso["sizeBytes"] == iso_file.stat().st_size and iso["sha256"] == digest
    assert iso["id"].startswith("iso-") and r.headers["location"] == f"/api/v1/isos/{iso['id']}"
    assert (server.rt.data_dir / "isos" / f"{iso['id']}.iso").read_bytes() == iso_file.read_bytes()
    assert (await server.client.get("/api/v1/isos/small")).json()["id"] == iso["id"]
    items = (await server.client.get("/api/v1/isos")).json()["items"]
    assert [i["name"] for i in items] == ["small"]
    r = await upload(server.client, iso_file, "small")
    assert r.status_code == 409 and r.json()["details"]["field"] == "name", r.text
    assert (await server.client.delete(f"/api/v1/isos/{iso['id']}")).status_code == 204
    assert (await server.client.get(f"/api/v1/isos/{iso['id']}")).status_code == 404
    assert not list((server.rt.data_dir / "isos").iterdir())


async def test_import_from_a_url_checks_the_sha256_and_the_signature(server: Server, iso_file: Path, http_dir: tuple[str, Path]) -> None:
    base, root = http_dir
    (root / "a.iso").write_bytes(iso_file.read_bytes())
    (root / "not.iso").write_bytes(b"\0" * 40000)
    digest = hashlib.sha256(iso_file.read_bytes()).hexdigest()
    r = await server.client.post("/api/v1/isos", json={"name": "fetched", "sourceUrl": f"{base}/a.iso", "sha256": digest})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    iso = (await server.client.get(f"/api/v1/isos/{r.json()['isoId']}")).json()
    assert iso["status"] == "ready" and iso["sha256"] == digest and iso["sourceUrl"] == f"{base}/a.iso"

    for name, url, sha, why in (
        ("wrong-sum", f"{base}/a.iso", "0" * 64, "sha256 mismatch"),
        ("not-iso", f"{base}/not.iso", None, "not an ISO 9660 image"),
    ):
        r = await server.client.post("/api/v1/isos", json={"name": name, "sourceUrl": url, **({"sha256": sha} if sha else {})})
        job = await server.wait_job(r.json()["jobId"])
        assert job["state"] == "failed" and why in job["tasks"][0]["error"], job
        bad = (await server.client.get(f"/api/v1/isos/{r.json()['isoId']}")).json()
        assert bad["status"] == "error" and why in bad["error"]
        assert not (server.rt.data_dir / "isos" / f"{bad['id']}.iso").exists()


async def test_operator_isos_are_shared_read_only_and_an_orgs_own_count_in_its_quota(
    server_factory: Any, database_url: str, iso_file: Path
) -> None:
    server = await server_factory(database_url=database_url)  # SQLite, and PostgreSQL when there is one (migration 0032)
    shared = (await upload(server.client, iso_file, "shared-installer")).json()
    acme, _ = await tenant(server, "acme", {"diskGb": 1})
    other, _ = await tenant(server, "other")
    async with acme, other:
        seen = (await acme.get("/api/v1/isos")).json()["items"]
        assert [(i["name"], i["shared"]) for i in seen] == [("shared-installer", True)]
        r = await acme.delete(f"/api/v1/isos/{shared['id']}")
        assert r.status_code == 403, r.text
        own = await upload(acme, iso_file, "mine")
        assert own.status_code == 201 and own.json()["shared"] is False
        assert [i["name"] for i in (await other.get("/api/v1/isos")).json()["items"]] == ["shared-installer"]
        assert (await other.get(f"/api/v1/isos/{own.json()['id']}")).status_code == 404
        # the ISO takes the org's storage quota: 1 GiB, rounded up, of 1
        assert (await acme.get("/api/v1/org/quotas")).json()["usage"]["diskGb"] == 1
        r = await acme.post("/api/v1/vms", json={"name": "nope", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
        assert r.status_code == 409 and r.json()["code"] == "quota_exceeded", r.text


async def test_vm_with_cdrom_boot_order_and_firmware(server_factory: Any, database_url: str, iso_file: Path) -> None:
    server = await server_factory(database_url=database_url)
    iso = (await upload(server.client, iso_file, "installer")).json()
    job = await server.create({
        "name": "installs", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 4},
        "cdrom": {"isoId": "installer"}, "bootOrder": ["cdrom", "disk"], "firmware": "uefi",
    })  # fmt: skip
    assert job["state"] == "succeeded", job
    vm = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
    assert vm["blank"] is True and vm["cdrom"] == {"isoId": iso["id"]}
    assert vm["bootOrder"] == ["cdrom", "disk"] and vm["firmware"] == "uefi"
    boot = boot_of(server, vm)
    assert (
        boot.cdrom == str(server.rt.data_dir / "isos" / f"{iso['id']}.iso") and boot.order == ("cdrom", "disk") and boot.firmware == "uefi"
    )

    r = await server.client.delete(f"/api/v1/isos/{iso['id']}")
    assert r.status_code == 409 and "installs" in r.json()["error"] and r.json()["details"]["vms"] == [vm["id"]], r.text

    r = await server.client.patch(f"/api/v1/vms/{vm['id']}", json={"cdrom": None, "bootOrder": ["disk"]})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    vm = (await server.client.get(f"/api/v1/vms/{vm['id']}")).json()
    assert vm["cdrom"] is None and vm["bootOrder"] == ["disk"] and vm["firmware"] == "uefi"
    assert boot_of(server, vm).cdrom is None and boot_of(server, vm).order == ("disk",)

    # firmware changes only while stopped; the ISO goes back in while it runs
    r = await server.client.patch(f"/api/v1/vms/{vm['id']}", json={"firmware": "bios"})
    assert r.status_code == 409 and "firmware" in r.json()["error"], r.text
    r = await server.client.patch(f"/api/v1/vms/{vm['id']}", json={"cdrom": {"isoId": iso["id"]}})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert boot_of(server, vm).cdrom is not None
    assert (await server.client.delete(f"/api/v1/isos/{iso['id']}")).status_code == 409
    r = await server.client.patch(f"/api/v1/vms/{vm['id']}", json={"cdrom": None})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await server.client.delete(f"/api/v1/isos/{iso['id']}")).status_code == 204


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"bootOrder": ["cdrom", "floppy"]}, "bootOrder[1]"),
        ({"bootOrder": ["disk", "disk"]}, "bootOrder"),
        ({"bootOrder": []}, "bootOrder"),
        ({"firmware": "coreboot"}, "firmware"),
        ({"cdrom": {"isoId": "no-such-iso"}}, "cdrom.isoId"),
    ],
)
async def test_bad_boot_settings_name_the_field_and_change_nothing(server: Server, body: dict[str, Any], field: str) -> None:
    r = await server.client.post("/api/v1/vms", json={"name": "bad", **body})
    assert r.status_code in (400, 404) and r.json()["details"]["field"] == field, r.text
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []
    job = await server.create({"name": "good"})
    vm_id = job["tasks"][0]["resourceId"]
    before = (await server.client.get(f"/api/v1/vms/{vm_id}")).json()
    r = await server.client.patch(f"/api/v1/vms/{vm_id}", json=body)
    assert r.status_code in (400, 404) and r.json()["details"]["field"] == field, r.text
    after = (await server.client.get(f"/api/v1/vms/{vm_id}")).json()
    assert {k: after[k] for k in ("cdrom", "bootOrder", "firmware")} == {k: before[k] for k in ("cdrom", "bootOrder", "firmware")}


async def test_half_written_files_are_swept_at_start(server: Server) -> None:
    """What a stopped server left: an upload quiet for two body timeouts, a download of an ISO
    no longer importing; an upload still arriving stays."""
    import os
    import time

    d = server.rt.data_dir / "isos"
    d.mkdir(exist_ok=True)
    old, fresh, orphan = d / "iso-0000000000aa.upload", d / "iso-0000000000bb.upload", d / "iso-0000000000cc.part"
    for f in (old, fresh, orphan):
        f.write_bytes(b"x")
    past = time.time() - 3 * server.rt.settings.body_timeout_seconds
    os.utime(old, (past, past))
    assert sorted(await server.rt.isos.sweep()) == sorted([orphan.name, old.name])
    assert fresh.exists() and not old.exists() and not orphan.exists()


async def test_a_vm_with_a_cdrom_goes_only_to_a_node_that_gives_one(server_factory: Any, iso_file: Path) -> None:
    """Placement filters on `Capabilities.cdrom` (nodes of other hosts have none): a node
    without it is skipped, and when no node has it the create is refused saying why."""
    from vmplane.drivers.sim import SimDriver

    class NoCdrom(SimDriver):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.capabilities = dataclasses.replace(self.capabilities, cdrom=False)

    bare = [("node-bare", NoCdrom(hostname="bare", cpu=64, ram_mb=65536, disk_gb=1000, latency=0.001))]
    server = await server_factory(nodes=bare + [("node-cd", SimDriver(hostname="cd", cpu=2, ram_mb=4096, disk_gb=100, latency=0.001))])
    await upload(server.client, iso_file, "installer")
    for i in range(2):  # the roomier node would win, but cannot give a CD-ROM
        job = await server.create({"name": f"cd-{i}", "cdrom": {"isoId": "installer"}, "resources": {"cpu": 1, "ramMb": 512, "diskGb": 4}})
        vm = (await server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
        assert vm["nodeId"] == "node-cd", vm
    r = await server.client.post("/api/v1/vms", json={"name": "cd-3", "firmware": "uefi", "nodeId": "node-bare"})
    assert r.status_code == 409 and r.json()["code"] == "no_capacity" and "node node-bare cannot give VMs a CD-ROM" in r.json()["error"], (
        r.text
    )
