"""Attacks on a template's image upload (POST /api/v1/templates/upload, issue 23 item 9):
the body is the tenant's file, streamed to disk by the server, then taken in by the one
guarded image intake (drivers/qemu/intake.py) a URL import goes through. Against a real
server on the qemu driver (no guest boots):

- a qcow2 whose backing file is /etc/shadow (and one naming a secret file this test wrote)
  is refused with its reason, and leaves no image behind;
- a body larger than VMPLANE_MAX_DOWNLOAD_BYTES is refused with 413, whether it says so in
  Content-Length (before a byte is read) or not (chunked: as the bytes arrive), and one past
  what the organization's diskGb quota leaves free with 409 quota_exceeded: no file stays;
- a body that stops half way (the client goes away, or goes quiet) leaves no file and no
  template;
- no credentials: 401 before the body is read; another organization's uploaded template
  answers 404 to read, rename and delete."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from ..support import Server, make_settings, require_qemu

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MIB = 1 << 20
CAP = 2 * MIB
"""VMPLANE_MAX_DOWNLOAD_BYTES of the test server"""
UPLOAD = "/api/v1/templates/upload"


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    require_qemu()
    root = tmp_path_factory.mktemp("upload")
    s = await Server(make_settings(root, driver="qemu", accel="tcg", max_download_bytes=CAP, body_timeout_seconds=1.0)).start()
    try:
        yield s
    finally:
        await s.stop()


async def tenant(s: Server, name: str) -> tuple[httpx.AsyncClient, str]:
    r = await s.client.post("/api/v1/orgs", json={"name": name, "owner": f"{name}-owner"})
    assert r.status_code == 201, r.text
    body = r.json()
    org_id = body.get("id") or body["org"]["id"]
    return s.client_with(body["ownerKey"]), org_id


def leftovers(s: Server) -> list[str]:
    """Files of uploads and template images: a refused upload adds none."""
    found = [p.name for p in s.rt.images_dir.glob("*")]
    found += [str(p) for p in (s.rt.data_dir / "qemu" / "images").glob("*/*")]
    return sorted(found)


async def names(client: httpx.AsyncClient) -> set[str]:
    return {t["name"] for t in (await client.get("/api/v1/templates", params={"limit": 500})).json()["items"]}


async def test_a_qcow2_backed_by_a_host_file_is_refused(server: Server, tmp_path: Path) -> None:
    s = server
    client, _ = await tenant(s, "upbacking")
    before = leftovers(s)
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"HOST-SECRET-" * 1000)
    for target in ("/etc/shadow", str(secret)):
        evil = tmp_path / "evil.qcow2"
        evil.unlink(missing_ok=True)
        qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", target, "-F", "raw", str(evil), "1M")
        r = await client.post(UPLOAD, params={"name": "evil"}, content=evil.read_bytes())
        assert r.status_code == 202, r.text
        job = await s.wait_job(r.json()["jobId"], client=client)
        assert job["state"] == "failed", job
        assert "backing file" in job["tasks"][0]["error"], job
        tpl = (await client.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
        assert tpl["status"] == "error" and "backing file" in tpl["error"], tpl
        assert leftovers(s) == before, target
        r = await client.request("DELETE", "/api/v1/templates", json={"templateIds": [tpl["id"]]})
        assert (await s.wait_job(r.json()["jobId"], client=client))["state"] == "succeeded"


async def test_too_large_and_over_quota_are_refused_as_they_arrive(server: Server) -> None:
    s = server
    client, org_id = await tenant(s, "upbig")
    before = leftovers(s)

    async def chunks(total: int) -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
        sent = 0
        while sent < total:
            n = min(256 << 10, total - sent)
            sent += n
            yield b"\0" * n

    # says it is too large: refused before the body is read
    r = await client.post(UPLOAD, params={"name": "big"}, content=b"\0" * (CAP + 1))
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large", r.text
    # does not say: refused once the bytes pass the cap
    r = await client.post(UPLOAD, params={"name": "big"}, content=chunks(CAP + MIB))
    assert r.status_code == 413 and "VMPLANE_MAX_DOWNLOAD_BYTES" in r.json()["error"], r.text
    # the organization's diskGb quota leaves nothing free
    r = await s.client.put(f"/api/v1/orgs/{org_id}/quotas", json={"diskGb": 0})
    assert r.status_code == 200, r.text
    r = await client.post(UPLOAD, params={"name": "quota"}, content=chunks(MIB))
    assert r.status_code == 409 and r.json()["code"] == "quota_exceeded" and r.json()["details"]["quota"] == "diskGb", r.text
    assert leftovers(s) == before
    assert not {"big", "quota"} & await names(client)
    # the quota of templates is checked before the body is read
    r = await s.client.put(f"/api/v1/orgs/{org_id}/quotas", json={"templates": 0})
    r = await client.post(UPLOAD, params={"name": "count"}, content=b"\0" * 1024)
    assert r.status_code == 409 and r.json()["details"]["quota"] == "templates", r.text
    # bad query fields are named in the caller's words
    r = await client.post(UPLOAD, params={"name": "bad name!"}, content=b"\0" * 1024)
    assert r.status_code == 400 and r.json()["details"]["field"] == "name", r.text
    r = await client.post(UPLOAD, params={"name": "empty"}, content=b"")
    assert r.status_code in (400, 409), r.text  # (the templates quota of 0 may answer first)
    assert leftovers(s) == before


async def _raw_upload(s: Server, key: str, name: str, declared: int, send: int, then_close: bool) -> bytes:
    """An upload over a raw socket that sends `send` of the `declared` bytes, then closes
    the connection (or waits for the server's answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
    head = (
        f"POST {UPLOAD}?name={name} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + b"\0" * send)
    await writer.drain()
    answer = b""
    if not then_close:
        answer = await asyncio.wait_for(reader.read(65536), timeout=10)
    writer.close()
    await writer.wait_closed()
    return answer


async def test_a_body_that_stops_half_way_leaves_nothing(server: Server) -> None:
    s = server
    before = leftovers(s)
    # the client goes away with half the body sent
    await _raw_upload(s, s.admin_key, "halfway", declared=CAP, send=CAP // 2, then_close=True)
    for _ in range(100):
        await asyncio.sleep(0.05)
        if leftovers(s) == before:
            break
    assert leftovers(s) == before
    # the client goes quiet: the server gives up after VMPLANE_BODY_TIMEOUT_SECONDS (1 s here)
    answer = await _raw_upload(s, s.admin_key, "quiet", declared=CAP, send=CAP // 4, then_close=False)
    assert answer.startswith(b"HTTP/1.1 400") and b"sent nothing for 1 s" in answer, answer[:400]
    assert leftovers(s) == before
    assert not {"halfway", "quiet"} & await names(s.client)


async def test_no_credentials_and_another_orgs_template(server: Server, tmp_path: Path) -> None:
    s = server
    async with httpx.AsyncClient(base_url=s.url) as anonymous:
        r = await anonymous.post(UPLOAD, params={"name": "anon"}, content=b"\0" * 1024)
        assert r.status_code == 401, r.text
    alice, _ = await tenant(s, "upalice")
    mallory, _ = await tenant(s, "upmallory")
    image = tmp_path / "clean.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(image), "8M")
    r = await alice.post(UPLOAD, params={"name": "alices", "os": "linux"}, content=image.read_bytes())
    assert r.status_code == 202, r.text
    tpl_id = r.json()["templateId"]
    job = await s.wait_job(r.json()["jobId"], client=alice)
    assert job["state"] == "succeeded", job
    tpl = (await alice.get(f"/api/v1/templates/{tpl_id}")).json()
    assert tpl["status"] == "ready" and tpl["format"] == "qcow2" and not tpl["shared"] and tpl["sourceUrl"] is None, tpl
    assert (await mallory.get(f"/api/v1/templates/{tpl_id}")).status_code == 404
    assert (await mallory.patch(f"/api/v1/templates/{tpl_id}", json={"name": "mine"})).status_code == 404
    r = await mallory.request("DELETE", "/api/v1/templates", json={"templateIds": [tpl_id]})
    job: Any = await s.wait_job(r.json()["jobId"], client=mallory)
    assert job["state"] == "failed" and "does not exist" in job["tasks"][0]["error"], job
    assert (await alice.get(f"/api/v1/templates/{tpl_id}")).json()["status"] == "ready"
    assert "alices" not in await names(mallory)
