"""Imports on the sim driver (the disk really converted by qemu-img; the sim keeps no disk):
OVA and disk images by path and URL, bad input named by field, cancel leaving nothing, and
vSphere profiles whose credentials are stored sealed and never shown."""

import asyncio
import os
import sqlite3
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ..imports_support import make_ova, ovf_descriptor
from ..support import Server


@pytest.fixture
def qemu_img() -> None:
    import shutil

    if shutil.which("qemu-img") is None:
        from ..support import require_qemu

        require_qemu()


def _drop(server: Server) -> Path:
    d = server.rt.data_dir / "imports"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _raw(path: Path, size: str = "64M") -> Path:
    subprocess.run(["qemu-img", "create", "-f", "raw", str(path), size], check=True, capture_output=True)
    with path.open("r+b") as fh:  # some content, so the conversion has bytes to move
        fh.write(b"vmplane-import-test" * 1000)
    return path


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A loopback HTTP server of tmp_path/www; `control["slow"]` makes it trickle (1 KiB per 50 ms)."""
    root = tmp_path / "www"
    root.mkdir()
    control: dict[str, Any] = {"slow": False}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                if control["slow"]:
                    for i in range(0, len(data), 1024):
                        self.wfile.write(data[i : i + 1024])
                        threading.Event().wait(0.05)
                else:
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    control["root"] = root
    yield f"http://127.0.0.1:{httpd.server_address[1]}", control
    httpd.shutdown()


async def _import(server: Server, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    r = await server.client.post("/api/v1/imports", json=body)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/jobs/{r.json()['jobId']}"
    job = await server.wait_job(r.json()["jobId"], timeout=90)
    imp = (await server.client.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    return job, imp


async def test_an_ova_becomes_a_vm_of_its_shape_with_mapped_networks(server: Server, tmp_path: Path, qemu_img: None) -> None:
    c = server.client
    r = await c.post("/api/v1/networks", json={"name": "backend", "type": "user", "subnet": "10.77.0.0/24"})
    assert r.status_code in (200, 201), r.text
    ova = make_ova(_drop(server) / "web.ova", _raw(tmp_path / "d.raw"), name="Web Server_1", cpu=2, memory_mb=512, networks=("VM Network", "Backend"))
    job, imp = await _import(server, {"source": {"type": "ova", "path": str(ova)}, "networkMapping": {"Backend": "backend"}, "tags": ["imported"]})
    assert job["state"] == "succeeded" and job["type"] == "vm-import", job
    assert job["importProgress"]["stage"] == "starting" and job["importProgress"]["bytesDone"] > 0, job
    assert imp["state"] == "succeeded" and imp["progress"] == 100 and imp["name"] == "Web-Server-1"
    assert imp["shape"] == {"name": "Web Server_1", "cpu": 2, "ramMb": 512, "disks": ["vmdisk1"], "networks": ["VM Network", "Backend"], "cdroms": 1, "os": "Other Linux (64-bit)", "firmware": "bios"}
    vm = (await c.get(f"/api/v1/vms/{imp['vmId']}")).json()
    assert vm["status"] == "running" and vm["resources"] == {"cpu": 2, "ramMb": 512, "diskGb": 1} and vm["tags"] == ["imported"]
    assert [n["network"] for n in vm["nics"]] == ["user", "backend"]
    assert not (server.rt.data_dir / "imports" / "work" / imp["id"]).exists()
    logs = (await c.get(f"/api/v1/jobs/{job['id']}/tasks/{job['tasks'][0]['id']}")).json()
    text = " ".join(logs["log"])
    for stage in ("connecting", "exporting", "converting", "defining", "starting"):
        assert f"stage: {stage}" in text
    listed = (await c.get("/api/v1/imports")).json()["items"]
    assert [i["id"] for i in listed] == [imp["id"]]


async def test_disk_images_by_path_and_by_url_stopped_if_asked(server: Server, tmp_path: Path, http_files: tuple[str, dict[str, Any]], qemu_img: None) -> None:
    base, control = http_files
    qcow = _drop(server) / "small.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(_raw(tmp_path / "s.raw", "20M")), str(qcow)], check=True)
    job, imp = await _import(server, {"source": {"type": "disk", "path": str(qcow), "format": "qcow2"}, "name": "from-disk", "cpu": 2, "ramMb": 256, "start": False})
    assert job["state"] == "succeeded", job
    vm = (await server.client.get(f"/api/v1/vms/{imp['vmId']}")).json()
    assert vm["name"] == "from-disk" and vm["status"] == "stopped" and vm["resources"]["cpu"] == 2
    assert imp["bytesDone"] == imp["bytesTotal"] == 20 << 20  # the last stage measured: conversion of the virtual size
    subprocess.run(["qemu-img", "convert", "-O", "vhdx", str(qcow), str(control["root"] / "img.vhdx")], check=True)
    job, imp = await _import(server, {"source": {"type": "disk", "url": f"{base}/img.vhdx"}, "start": False})
    assert job["state"] == "succeeded", job
    assert imp["name"] == "img" and imp["source"] == {"type": "disk", "url": f"{base}/img.vhdx"}
    task = (await server.client.get(f"/api/v1/jobs/{job['id']}/tasks/{job['tasks'][0]['id']}")).json()
    assert any(line.endswith(f"converting: {20 << 20} of {20 << 20} bytes") for line in task["log"]), task["log"]
    make_ova(control["root"] / "web.ova", tmp_path / "s.raw", name="by-url")
    job, imp = await _import(server, {"source": {"type": "ova", "url": f"{base}/web.ova"}, "start": False})
    assert job["state"] == "succeeded" and imp["name"] == "by-url", job
    # images that would make qemu-img read files outside the allowed directories are refused
    secret = tmp_path / "secret.txt"
    secret.write_text("not to be imported\n")
    sneaky = _drop(server) / "sneaky.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-o", f"data_file={secret}", str(sneaky), "1M"], check=True, capture_output=True)
    backed = _drop(server) / "backed.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", str(tmp_path / "s.raw"), str(backed)], check=True, capture_output=True)
    descriptor = _drop(server) / "extent.vmdk"
    descriptor.write_text(f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 2048 FLAT "{secret}" 0\n')
    inside = tmp_path / "ova-parts"
    inside.mkdir()
    (inside / "d.vmdk").write_bytes(descriptor.read_bytes().ljust(512, b"\n"))
    (inside / "v.ovf").write_text(ovf_descriptor("v", 1, 256, "d.vmdk", 512, 1))
    flat_ova = _drop(server) / "flat.ova"
    with tarfile.open(flat_ova, "w") as tar:
        tar.add(inside / "v.ovf", arcname="v.ovf")
        tar.add(inside / "d.vmdk", arcname="d.vmdk")
    job, imp = await _import(server, {"source": {"type": "ova", "path": str(flat_ova)}})
    assert job["state"] == "failed" and "names extent files" in job["tasks"][0]["error"], job
    for bad, why in ((sneaky, "external data file"), (backed, "backing file"), (descriptor, "names extent files")):
        job, imp = await _import(server, {"source": {"type": "disk", "path": str(bad)}})
        assert job["state"] == "failed" and why in job["tasks"][0]["error"], (bad, job)
    job, imp = await _import(server, {"source": {"type": "disk", "url": f"{base}/missing.qcow2"}})
    assert job["state"] == "failed" and "HTTP 404" in job["tasks"][0]["error"] and imp["state"] == "failed" and imp["vmId"] is None


async def test_bad_input_is_refused_naming_the_field_and_nothing_is_made(server: Server, tmp_path: Path, qemu_img: None) -> None:
    c = server.client
    outside = _raw(tmp_path / "outside.raw", "1M")
    inside = _raw(_drop(server) / "inside.raw", "1M")
    (_drop(server) / "escape.raw").symlink_to(outside)
    cases = [
        ({"source": {"type": "disk", "path": str(outside)}}, "source.path"),
        ({"source": {"type": "disk", "path": str(_drop(server) / "escape.raw")}}, "source.path"),
        ({"source": {"type": "disk", "path": str(_drop(server) / ".." / ".." / "outside.raw")}}, "source.path"),
        ({"source": {"type": "disk", "path": "relative.raw"}}, "source.path"),
        ({"source": {"type": "disk", "url": f"file://{outside}"}}, "source.url"),
        ({"source": {"type": "ova", "url": "ftp://example.com/x.ova"}}, "source.url"),
        ({"source": {"type": "ova", "url": "http:///x.ova"}}, "source.url"),
        ({"source": {"type": "ova"}}, "source.path"),
        ({"source": {"type": "disk", "path": str(inside), "url": "http://h/x"}}, "source.path"),
        ({"source": {"type": "disk", "path": str(inside), "format": "iso"}}, "source.format"),
        ({"source": {"type": "vsphere", "profile": "nope", "vmPath": "DC0/vm/x"}}, "source.profile"),
        ({"source": {"type": "vsphere", "profile": "nope"}}, "source.vmPath"),
        ({"source": {"type": "vsphere", "vcenterUrl": "ftp://vc", "username": "u", "vmPath": "DC0/vm/x"}}, "source.vcenterUrl"),
        ({"source": {"type": "vmplane", "url": "http://other:8080", "vmId": "vm-1"}}, "source.apiKey"),
        ({"source": {"type": "floppy"}}, "source.type"),
        ({"source": {"type": "disk", "path": str(inside)}, "name": "bad name!"}, "name"),
        ({"source": {"type": "disk", "path": str(inside)}, "networkMapping": {"VM Network": "no-such-net"}}, "networkMapping.VM Network"),
        ({"source": {"type": "disk", "path": str(inside)}, "nodeId": "node-99"}, "nodeId"),
        ({"source": {"type": "disk", "path": str(inside)}, "surprise": 1}, "surprise"),
    ]
    for body, field in cases:
        r = await c.post("/api/v1/imports", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["details"]["field"] == field, (body, r.json())
    assert (await c.get("/api/v1/imports")).json()["items"] == []
    assert (await c.get("/api/v1/vms")).json()["items"] == []


async def test_a_cancelled_import_leaves_no_vm_and_no_file(server: Server, tmp_path: Path, http_files: tuple[str, dict[str, Any]], qemu_img: None) -> None:
    base, control = http_files
    control["slow"] = True
    with (control["root"] / "big.raw").open("wb") as fh:
        fh.write(os.urandom(512 * 1024))
    r = await server.client.post("/api/v1/imports", json={"source": {"type": "disk", "url": f"{base}/big.raw", "format": "raw"}, "name": "never"})
    assert r.status_code == 202, r.text
    job_id, imp_id = r.json()["jobId"], r.json()["importId"]
    for _ in range(200):
        imp = (await server.client.get(f"/api/v1/imports/{imp_id}")).json()
        if imp["stage"] == "exporting" and imp["bytesDone"] > 0:
            break
        await asyncio.sleep(0.05)
    assert imp["stage"] == "exporting" and imp["bytesTotal"] == 512 * 1024 and 0 < imp["bytesDone"] < 512 * 1024, str(imp)
    assert (server.rt.data_dir / "imports" / "work" / imp_id / "source.img").exists()
    job = (await server.client.get(f"/api/v1/jobs/{job_id}")).json()
    assert job["importProgress"]["stage"] == "exporting" and job["importProgress"]["bytesDone"] > 0, job
    task = (await server.client.get(f"/api/v1/jobs/{job_id}/tasks/{job['tasks'][0]['id']}")).json()
    assert task["importProgress"]["importId"] == imp_id
    r = await server.client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202
    job = await server.wait_job(job_id)
    assert job["state"] == "cancelled", job
    imp = (await server.client.get(f"/api/v1/imports/{imp_id}")).json()
    assert imp["state"] == "cancelled" and imp["vmId"] is None
    assert not (server.rt.data_dir / "imports" / "work" / imp_id).exists()
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []


async def test_vsphere_profiles_keep_credentials_sealed_and_never_show_them(server: Server) -> None:
    c = server.client
    body = {"name": "lab", "url": "https://vc.example.com/sdk", "username": "administrator@vsphere.local", "password": "s3cret-Pa55word", "insecure": True}
    r = await c.post("/api/v1/vsphere/profiles", json=body)
    assert r.status_code == 201, r.text
    assert "s3cret" not in r.text and "administrator" not in r.text and r.json()["name"] == "lab"
    assert (await c.post("/api/v1/vsphere/profiles", json=body)).status_code == 409
    listed = await c.get("/api/v1/vsphere/profiles")
    assert [p["name"] for p in listed.json()["items"]] == ["lab"] and "s3cret" not in listed.text
    key = server.rt.data_dir / "secrets.key"
    assert key.stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(server.rt.data_dir / "vmplane.db")
    sealed = db.execute("select secret from vsphere_profiles").fetchone()[0]
    assert "s3cret" not in sealed and "administrator" not in sealed
    conn = await server.rt.vsphere.connection(_owner(db), profile="lab")
    assert (conn.username, conn.password, conn.insecure) == ("administrator@vsphere.local", "s3cret-Pa55word", True)
    assert "s3cret" not in repr(conn)
    r = await c.post("/api/v1/vsphere/vms/list", json={"profile": "missing"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "profile"
    r = await c.post("/api/v1/vsphere/profiles", json={**body, "name": "bad/name"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "name"
    assert (await c.delete("/api/v1/vsphere/profiles/lab")).status_code == 204
    assert (await c.get("/api/v1/vsphere/profiles/lab")).status_code == 404


def _owner(db: sqlite3.Connection) -> Any:
    from vmplane.auth import Principal, Role

    org_id = db.execute("select org_id from api_keys limit 1").fetchone()[0]
    return Principal(org_id=org_id, user_id="u", user_name="admin", role=Role.OWNER)
