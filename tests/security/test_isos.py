"""Attacks on the ISO library (POST /api/v1/isos, /isos/upload) and on a VM's CD-ROM: every
ISO comes through one guarded path (the streamed upload's limits of services/uploads.py, or the
outbound policy for a URL), is checked before it is offered, and names its file only through a
checked id (store/isos.py `iso_path`). On the sim driver: nothing here boots.

- a body that is not an ISO 9660 image, whose sha256 is not the one given, larger than the
  download cap or than the organization's diskGb quota leaves: refused with the field named,
  and no file and no ISO stay behind;
- names with path parts are refused; an ISO id that is not one never becomes a path;
- a sourceUrl to the metadata service, a private network, file:// or a redirect from an
  allowed server to an internal address is refused by the outbound policy;
- another organization's ISO answers 404: to read, delete, and when a VM create or PATCH puts
  it in a CD-ROM by id; a shared ISO is read-only to organizations."""

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane.store.isos import iso_path

from ..iso_support import small_iso
from ..support import Server

UPLOAD = "/api/v1/isos/upload"
MIB = 1 << 20


def leftovers(server: Server) -> list[str]:
    d = server.rt.data_dir / "isos"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


async def isos(client: httpx.AsyncClient) -> list[str]:
    return [i["name"] for i in (await client.get("/api/v1/isos")).json()["items"]]


async def send(client: httpx.AsyncClient, body: bytes, **params: str) -> httpx.Response:
    return await client.post(UPLOAD, params=params, content=body, headers={"Content-Type": "application/octet-stream"})


async def tenant(s: Server, name: str, quotas: dict[str, int] | None = None) -> httpx.AsyncClient:
    r = await s.client.post("/api/v1/orgs", json={"name": name, "owner": f"{name}-owner"})
    assert r.status_code == 201, r.text
    body = r.json()
    if quotas:
        org_id = body.get("id") or body["org"]["id"]
        assert (await s.client.put(f"/api/v1/orgs/{org_id}/quotas", json=quotas)).status_code == 200
    return s.client_with(body["ownerKey"])


async def create_vm(s: Server, client: httpx.AsyncClient, spec: dict[str, Any]) -> dict[str, Any]:
    r = await client.post("/api/v1/vms", json=spec)
    assert r.status_code == 202, r.text
    return await s.wait_job(r.json()["jobId"], client=client)


@pytest.fixture
def iso_bytes(tmp_path: Path) -> bytes:
    return small_iso(tmp_path / "x.iso").read_bytes()


async def test_hostile_uploads_are_refused_and_leave_nothing(server_factory: Any, iso_bytes: bytes) -> None:
    s: Server = await server_factory(max_download_bytes=2 * MIB)
    # not an ISO: a disk image, a script, zeros; and one whose CD001 is one byte off
    shifted = b"\0" * 32770 + b"CD001" + b"\0" * 100
    for body in (b"QFI\xfb" + b"\0" * 40000, b"#!/bin/sh\nrm -rf /\n", b"\0" * 40000, shifted):
        r = await send(s.client, body, name="evil")
        assert r.status_code == 400 and r.json()["details"]["field"] == "body" and "ISO 9660" in r.json()["error"], r.text
    # the sha256 the caller gave is not the body's
    r = await send(s.client, iso_bytes, name="evil", sha256="ab" * 32)
    assert r.status_code == 400 and r.json()["details"]["field"] == "sha256", r.text
    r = await send(s.client, iso_bytes, name="evil", sha256="not-hex-" * 8)
    assert r.status_code == 400 and r.json()["details"]["field"] == "sha256", r.text
    # larger than the cap: said in Content-Length (before a byte is read), or not (chunked)
    r = await send(s.client, b"\0" * (3 * MIB), name="big")
    assert r.status_code == 413, r.text

    async def chunks() -> Any:
        for _ in range(3):
            yield b"\0" * MIB

    r = await s.client.post(UPLOAD, params={"name": "big"}, content=chunks(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 413, r.text
    # an empty body
    r = await send(s.client, b"", name="empty")
    assert r.status_code == 400 and r.json()["details"]["field"] == "body", r.text
    assert await isos(s.client) == [] and leftovers(s) == []
    # no credentials: refused before the body is read
    async with httpx.AsyncClient(base_url=str(s.client.base_url)) as anonymous:
        assert (await send(anonymous, iso_bytes, name="anon")).status_code == 401


async def test_an_iso_past_the_orgs_quota_is_refused(server: Server, iso_bytes: bytes) -> None:
    acme = await tenant(server, "acme", {"diskGb": 1})
    async with acme:
        job = await create_vm(server, acme, {"name": "fills", "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
        assert job["state"] == "succeeded", job
        r = await send(acme, iso_bytes, name="one-too-many")
        assert r.status_code == 409 and r.json()["code"] == "quota_exceeded", r.text
        assert await isos(acme) == [] and leftovers(server) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", ".hidden", "x\x00y", "a b", "-rf", "x" * 64])
async def test_names_with_path_parts_are_refused(server: Server, iso_bytes: bytes, name: str) -> None:
    r = await send(server.client, iso_bytes, name=name)
    assert r.status_code == 400 and r.json()["details"]["field"] == "name", r.text
    r = await server.client.post("/api/v1/isos", json={"name": name, "sourceUrl": "http://127.0.0.1:1/x.iso"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "name", r.text
    assert leftovers(server) == []


def test_an_iso_id_becomes_a_path_only_when_it_is_one(tmp_path: Path) -> None:
    assert iso_path(tmp_path, "iso-0123456789ab") == tmp_path / "iso-0123456789ab.iso"
    for bad in ("../../etc/shadow", "iso-abc/../../x", "iso-../x", "/etc/passwd", "tpl-0123456789ab", "iso-ABC", "", "iso-a b"):
        with pytest.raises(ValueError):
            iso_path(tmp_path, bad)


@pytest.fixture
def redirector() -> Iterator[str]:
    """A loopback server (allowed by the tests' outbound policy) that redirects to the cloud
    metadata service."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/x.iso"
    httpd.shutdown()


async def test_source_urls_to_internal_addresses_are_refused(server: Server, redirector: str) -> None:
    for url in (
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/installer.iso",
        "http://[::ffff:169.254.169.254]/x.iso",
        "http://192.168.1.1/x.iso",
    ):
        r = await server.client.post("/api/v1/isos", json={"name": "internal", "sourceUrl": url})
        assert r.status_code in (400, 403) and r.json()["details"].get("field") == "sourceUrl", (url, r.text)
    for url in ("file:///etc/shadow", "ftp://example.com/x.iso", "gopher://127.0.0.1/"):
        r = await server.client.post("/api/v1/isos", json={"name": "internal", "sourceUrl": url})
        assert r.status_code == 400 and r.json()["details"]["field"] == "sourceUrl", (url, r.text)
    assert await isos(server.client) == []
    # allowed at submission, the redirect to the metadata service is refused as it is followed
    r = await server.client.post("/api/v1/isos", json={"name": "redirected", "sourceUrl": redirector})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and "169.254.169.254" in job["tasks"][0]["error"], job
    assert (await server.client.get(f"/api/v1/isos/{r.json()['isoId']}")).json()["status"] == "error"
    assert leftovers(server) == []


async def test_another_orgs_iso_is_404_everywhere(server: Server, iso_bytes: bytes) -> None:
    acme, other = await tenant(server, "acme"), await tenant(server, "other")
    async with acme, other:
        theirs = (await send(acme, iso_bytes, name="acme-secret", sha256=hashlib.sha256(iso_bytes).hexdigest())).json()
        for ref in (theirs["id"], "acme-secret"):
            assert (await other.get(f"/api/v1/isos/{ref}")).status_code == 404
            assert (await other.delete(f"/api/v1/isos/{ref}")).status_code == 404
            r = await other.post("/api/v1/vms", json={"name": "thief", "cdrom": {"isoId": ref}})
            assert r.status_code == 404 and r.json()["details"]["field"] == "cdrom.isoId", r.text
        assert (await other.get("/api/v1/vms")).json()["items"] == []
        job = await create_vm(server, other, {"name": "own"})
        vm_id = job["tasks"][0]["resourceId"]
        for ref in (theirs["id"], "acme-secret", "../../../etc/shadow", "iso-" + "0" * 12):
            r = await other.patch(f"/api/v1/vms/{vm_id}", json={"cdrom": {"isoId": ref}})
            assert r.status_code == 404 and r.json()["details"]["field"] == "cdrom.isoId", r.text
        assert (await other.get(f"/api/v1/vms/{vm_id}")).json()["cdrom"] is None
        # the ISO is untouched, and the operators' shared ones are read-only to organizations
        assert (await acme.get(f"/api/v1/isos/{theirs['id']}")).json()["status"] == "ready"
        shared = (await send(server.client, iso_bytes, name="shared")).json()
        assert (await other.delete(f"/api/v1/isos/{shared['id']}")).status_code == 403
        assert (await other.get(f"/api/v1/isos/{shared['id']}")).json()["shared"] is True
