"""Attacks on the outbound policy: a tenant makes vmplane fetch a URL inside the host's network
(a loopback "metadata service" that records every request it gets stands for it) through
each caller: templates, a plugin's image and its OpenAPI URL, imports (disk URL, OVA URL,
another vmplane), vSphere (ad-hoc, a stored profile, the export lease's device URL), native
webhooks and their test deliveries, HyperSDK webhooks and their test, an agent's template
fetch. The server runs with the default (empty) VMPLANE_OUTBOUND_ALLOW, and a name the tenant
controls may answer a public address when vmplane checks it and the metadata service's when
it fetches (DNS rebinding, played by a resolver patched in-process). Each test asserts the
refusal, that the metadata service got no request, and that nothing was created; connections
outside loopback raise in this process, so nothing can leave the machine."""

import asyncio
import hashlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vmplane.agent.images import ImageStore, WantedFile
from vmplane.domain.vsphere import Connection, VsphereDisk, VsphereVm, VsphereVmInfo
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError, VmplaneError
from vmplane.outbound import Policy, parse_allow
from vmplane.services import vsphere as vs

from ..api.test_plugins import manifest
from ..api.test_tenancy import new_org
from ..support import Server
from ..support_hypersdk import P, doc_job
from ..support_outbound import PUBLIC, SECRET, FakeDns, Recorder, fake_dns, loopback_only, metadata, recorders  # noqa: F401

HINT = "an operator can allow it with VMPLANE_OUTBOUND_ALLOW"


@pytest.fixture
async def srv(server_factory: Any) -> Server:
    return await server_factory(outbound_allow=[], webhook_backoff_seconds=0.05)  # the default policy


@pytest.fixture(autouse=True)
def _nothing_left_the_machine(loopback_only: list[Any]) -> Any:
    yield
    assert loopback_only == [], f"connections outside loopback were attempted: {loopback_only}"


def refused(r: Any, field: str, reason: str = "a loopback address") -> None:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["details"]["field"] == field and reason in body["error"] and HINT in body["error"], body
    assert SECRET not in r.text


async def nothing_created(srv: Server, t: Any) -> None:
    assert (await t.get("/api/v1/jobs")).json()["items"] == []
    assert (await t.get("/api/v1/imports")).json()["items"] == []
    assert (await t.get("/api/v1/vms")).json()["items"] == []
    assert (await t.get("/api/v1/plugins")).json()["items"] == []
    assert (await t.get("/api/v1/webhooks")).json()["items"] == []
    assert (await t.get("/api/v1/vsphere/profiles")).json()["items"] == []
    own = [x for x in (await t.get("/api/v1/templates")).json()["items"] if x["name"].startswith(("evil", "plugin-"))]
    assert own == []
    leftovers = [p for p in (srv.rt.images_dir).iterdir()] if srv.rt.images_dir.exists() else []
    assert leftovers == []
    work = srv.rt.data_dir / "imports" / "work"
    assert not work.exists() or list(work.iterdir()) == []


def inside_urls(metadata: Recorder, path: str = "/latest/meta-data/") -> list[str]:
    """The metadata service by every name and form a tenant could write it in, and other
    addresses inside (refused before any connection: the guard would raise otherwise)."""
    return [
        f"{metadata.url}{path}",
        f"http://metadata.test:{metadata.port}{path}",  # a name the tenant controls
        f"http://[::ffff:127.0.0.1]:{metadata.port}{path}",
        f"http://0.0.0.0:{metadata.port}{path}",
        f"http://169.254.169.254{path}",
        f"http://100.100.100.200{path}",
        f"http://10.0.0.1{path}",
        f"http://[fd00::1]{path}",
    ]


REASONS = ["loopback", "loopback", "loopback", "unspecified", "link-local", "carrier-grade NAT", "private", "private"]


async def test_templates(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("metadata.test", "127.0.0.1")
    for url, reason in zip(inside_urls(metadata), REASONS):
        refused(await t.post("/api/v1/templates", json={"name": "evil", "os": "linux", "sourceUrl": url}), "sourceUrl", reason)
    assert metadata.hits == []
    await nothing_created(srv, t)


async def test_a_template_whose_name_changes_its_answer_fails_its_job(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    """Public when the request is checked, the metadata service when the job fetches: the job
    fails with the reason and fetches nothing."""
    _org, t = await new_org(srv)
    fake_dns.set("mirror.test", PUBLIC, "127.0.0.1")
    r = await t.post("/api/v1/templates", json={"name": "evil", "os": "linux", "sourceUrl": f"http://mirror.test:{metadata.port}/disk.img"})
    assert r.status_code == 202, r.text
    job = await srv.wait_job(r.json()["jobId"], client=t)
    error = job["tasks"][0]["error"]
    assert job["state"] == "failed" and "mirror.test resolves to 127.0.0.1, a loopback address" in error and HINT in error, job
    tpl = (await t.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
    assert tpl["status"] == "error" and SECRET not in str(tpl)
    assert metadata.hits == [] and list(srv.rt.images_dir.iterdir()) == []


async def test_redirects_and_answers_of_an_allowed_mirror(server_factory: Any, recorders: Any) -> None:
    """An operator allows 127.0.0.1/32 only (an internal mirror there): a redirect from it to
    127.0.0.2 is refused at that hop, and what an allowed server answers is never repeated."""
    srv = await server_factory(outbound_allow=["127.0.0.1/32"])
    inner = recorders("127.0.0.2", body=SECRET.encode())
    mirror = recorders("127.0.0.1", status=302, headers={"Location": f"http://127.0.0.2:{inner.port}/latest/meta-data"})
    r = await srv.client.post("/api/v1/templates", json={"name": "evil", "os": "linux", "sourceUrl": f"{mirror.url}/disk.img"})
    assert r.status_code == 202, r.text
    job = await srv.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and "127.0.0.2 is a loopback address" in job["tasks"][0]["error"], job
    assert [h[1] for h in mirror.hits] == ["/disk.img"] and inner.hits == []
    # another vmplane that answers an error page: its status, never its text
    page = recorders("127.0.0.1", status=500, body=f"<html>{SECRET}</html>".encode(), headers={"Content-Type": "text/html"})
    r = await srv.client.post("/api/v1/imports", json={"source": {"type": "vmplane", "url": page.url, "apiKey": "k", "vmId": "vm-x"}})
    assert r.status_code == 202, r.text
    job = await srv.wait_job(r.json()["jobId"])
    imp = (await srv.client.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    assert job["state"] == "failed" and "answered HTTP 500" in imp["error"], imp
    assert SECRET not in str(job) and SECRET not in str(imp)
    assert (await srv.client.get("/api/v1/vms")).json()["items"] == []


async def test_plugin_image_and_openapi_urls(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    drop = srv.rt.data_dir / "imports"  # where a tenant's file:// images may come from
    drop.mkdir(parents=True, exist_ok=True)
    image = drop / "rootfs.raw"
    image.write_bytes(b"\x42" * 8192)
    fake_dns.set("metadata.test", "127.0.0.1")
    for url, reason in zip(inside_urls(metadata, "/rootfs.img"), REASONS):
        m = manifest(image)
        m["rootfs"]["url"] = url
        refused(await t.post("/api/v1/plugins", json=m), "rootfs.url", reason)
        refused(await t.post("/api/v1/plugins", json=manifest(image, openapi=url)), "openapi", reason)
    assert metadata.hits == []
    await nothing_created(srv, t)


async def test_a_plugins_openapi_url_that_turns_inward_is_not_fetched(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    """GET /vms/{id}/openapi must not hand back the metadata service's answer when the
    manifest's name later resolves to it."""
    _org, t = await new_org(srv)
    drop = srv.rt.data_dir / "imports"
    drop.mkdir(parents=True, exist_ok=True)
    image = drop / "rootfs.raw"
    image.write_bytes(b"\x42" * 8192)
    fake_dns.set("docs.test", PUBLIC, "127.0.0.1")
    r = await t.post("/api/v1/plugins", json=manifest(image, openapi=f"http://docs.test:{metadata.port}/openapi.json"))
    assert r.status_code == 201, r.text
    for _ in range(200):
        p = (await t.get("/api/v1/plugins/web")).json()
        if p["image"]["status"] != "importing":
            break
        await asyncio.sleep(0.05)
    assert p["image"]["status"] == "ready", p
    r = await t.post("/api/v1/vms", json={"name": "w1", "plugin": "web"})
    assert r.status_code == 202, r.text
    job = await srv.wait_job(r.json()["jobId"], client=t)
    assert job["state"] == "succeeded", job
    r = await t.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}/openapi")
    assert r.status_code == 400 and "docs.test resolves to 127.0.0.1, a loopback address" in r.json()["error"], r.text
    assert SECRET not in r.text and metadata.hits == []


async def test_imports(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("metadata.test", "127.0.0.1")
    for url, reason in zip(inside_urls(metadata, "/disk.qcow2"), REASONS):
        for source in ({"type": "disk", "url": url}, {"type": "ova", "url": url}, {"type": "vmplane", "url": url, "apiKey": "k", "vmId": "vm-1"}):
            refused(await t.post("/api/v1/imports", json={"source": source}), "source.url", reason)
        r = await t.post(f"{P}/jobs/submit", json={**doc_job(), "source": {"type": "vmplane", "url": url, "api_key": "k", "vm_id": "vm-1"}})
        assert r.status_code == 400 and SECRET not in r.text, r.text
    assert metadata.hits == []
    await nothing_created(srv, t)


async def test_an_import_whose_name_changes_its_answer_fails_its_job(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("peer.test", PUBLIC, "127.0.0.1")
    fake_dns.set("disks.test", PUBLIC, "127.0.0.1")
    for source in ({"type": "vmplane", "url": f"http://peer.test:{metadata.port}", "apiKey": "k", "vmId": "vm-1"},
                   {"type": "disk", "url": f"http://disks.test:{metadata.port}/d.qcow2"}):  # fmt: skip
        r = await t.post("/api/v1/imports", json={"source": source})
        assert r.status_code == 202, r.text
        job = await srv.wait_job(r.json()["jobId"], client=t)
        imp = (await t.get(f"/api/v1/imports/{r.json()['importId']}")).json()
        assert job["state"] == "failed" and "resolves to 127.0.0.1, a loopback address" in imp["error"], imp
    assert metadata.hits == [] and (await t.get("/api/v1/vms")).json()["items"] == []
    work = srv.rt.data_dir / "imports" / "work"
    assert not work.exists() or list(work.iterdir()) == []


async def test_vsphere_endpoints(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("metadata.test", "127.0.0.1")
    creds = {"username": "u", "password": "p", "insecure": True}
    for url, reason in zip(inside_urls(metadata, "/sdk"), REASONS):
        refused(await t.post("/api/v1/vsphere/vms/list", json={"vcenterUrl": url, **creds}), "vcenterUrl", reason)
        refused(await t.post("/api/v1/vsphere/profiles", json={"name": "vc", "url": url, **creds}), "url", reason)
        body = {"source": {"type": "vsphere", "vcenterUrl": url, "vmPath": "DC0/vm/x", **creds}}
        refused(await t.post("/api/v1/imports", json=body), "source.vcenterUrl", reason)
    host = f"127.0.0.1:{metadata.port}"
    r = await t.post(f"{P}/jobs/submit", json=doc_job(host))
    assert r.status_code == 400 and "loopback" in r.text and SECRET not in r.text, r.text
    assert metadata.hits == []
    await nothing_created(srv, t)


async def test_a_stored_vsphere_profile_that_turns_inward_is_not_connected_to(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("vc.test", PUBLIC, "127.0.0.1")
    r = await t.post("/api/v1/vsphere/profiles", json={"name": "vc", "url": f"https://vc.test:{metadata.port}/sdk", "username": "u", "password": "p"})
    assert r.status_code == 201, r.text
    r = await t.post("/api/v1/vsphere/vms/list", json={"profile": "vc"})
    refused(r, "vcenterUrl")
    assert "vc.test resolves to 127.0.0.1" in r.json()["error"] and metadata.hits == []


def test_the_export_leases_device_url_is_followed_only_through_the_policy(metadata: Recorder, tmp_path: Path) -> None:
    """vCenter (or whatever answers as one) names the disk URLs of an export lease: those
    pointing inside are refused with the lease aborted, and nothing is written."""
    for device in (f"http://*:{metadata.port}/nfc/disk-0.vmdk", f"{metadata.url}/nfc/disk-0.vmdk", "http://169.254.169.254/latest/user-data"):
        aborted: list[Any] = []
        lease = SimpleNamespace(
            state="ready", error=None, info=SimpleNamespace(deviceUrl=[SimpleNamespace(url=device, key="2000", disk=True, fileSize=10)]),
            HttpNfcLeaseProgress=lambda pct: None, HttpNfcLeaseComplete=lambda: None, HttpNfcLeaseAbort=aborted.append,
        )  # fmt: skip
        si = SimpleNamespace(_stub=SimpleNamespace(cookie='vmware_soap_session="abc"'))
        conn = Connection(f"https://127.0.0.1:{metadata.port}/sdk", "u", "p", True)
        info = VsphereVmInfo(VsphereVm("vm", "DC/vm/vm", "poweredOff", 1, 512, 0, "", None), "DC", "bios", "", (VsphereDisk(2000, "Hard disk 1", 1 << 20, "[ds] vm/vm.vmdk"),), (), ())
        dest = tmp_path / "export"
        dest.mkdir(exist_ok=True)
        with pytest.raises(VmplaneError, match="refused: .*(loopback|link-local)"):
            vs._export_by_lease(si, conn, SimpleNamespace(ExportVm=lambda: lease), info, dest, lambda d, t: None, vs._Net(Policy(), 1 << 30))
        assert aborted and list(dest.iterdir()) == []
    assert metadata.hits == []


async def test_webhooks_and_their_test_deliveries(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    _org, t = await new_org(srv)
    fake_dns.set("metadata.test", "127.0.0.1")
    for url, reason in zip(inside_urls(metadata, "/hook"), REASONS):
        refused(await t.post("/api/v1/webhooks", json={"url": url, "events": ["vm.*"]}), "url", reason)
        r = await t.post(f"{P}/webhooks", json={"url": url, "events": ["*"]})
        assert r.status_code == 400 and reason in r.text and SECRET not in r.text, r.text
        r = await t.post(f"{P}/webhooks/test", json={"url": url})
        assert r.status_code == 400 and reason in r.text and SECRET not in r.text, r.text
    for header in ("Host", "Transfer-Encoding", "Connection", "Upgrade", "Proxy-Authorization", "TE", "Expect"):
        r = await t.post("/api/v1/webhooks", json={"url": f"http://{PUBLIC}/hook", "events": ["vm.*"], "headers": {header: "x"}})
        assert r.status_code == 400 and r.json()["details"]["field"] == "headers", (header, r.text)
    assert metadata.hits == []
    await nothing_created(srv, t)
    assert (await t.get(f"{P}/webhooks")).json()["webhooks"] == []


async def test_a_webhook_that_turns_inward_is_refused_at_each_delivery(srv: Server, metadata: Recorder, fake_dns: FakeDns) -> None:
    """Accepted while its name answered a public address; then the test delivery and the real
    deliveries look again, are refused, and say why; the URL cannot be set inward either."""
    _org, t = await new_org(srv)
    fake_dns.set("hooks.test", PUBLIC, "127.0.0.1")
    url = f"http://hooks.test:{metadata.port}/hook"
    r = await t.post("/api/v1/webhooks", json={"url": url, "events": ["job.*"], "retryCount": 0})
    assert r.status_code == 201, r.text
    hook = r.json()
    test = (await t.post(f"/api/v1/webhooks/{hook['id']}/test")).json()
    assert test["ok"] is False and test["statusCode"] is None and "hooks.test resolves to 127.0.0.1, a loopback address" in test["error"]
    r = await t.post("/api/v1/vms", json={"name": "wh-1"})
    assert r.status_code == 202, r.text
    assert (await srv.wait_job(r.json()["jobId"], client=t))["state"] == "succeeded"
    for _ in range(200):
        items = (await t.get(f"/api/v1/webhooks/{hook['id']}/deliveries")).json()["items"]
        if items and all(i["status"] == "failed" for i in items):
            break
        await asyncio.sleep(0.05)
    assert items and all(i["lastStatusCode"] is None and "refused" in i["lastError"] and "loopback" in i["lastError"] for i in items), items
    refused(await t.patch(f"/api/v1/webhooks/{hook['id']}", json={"url": f"{metadata.url}/hook"}), "url")
    assert (await t.get(f"/api/v1/webhooks/{hook['id']}")).json()["url"] == url
    assert metadata.hits == []


async def test_an_agent_fetches_a_template_source_only_through_its_policy(metadata: Recorder, tmp_path: Path) -> None:
    """A node agent tries the template's source URL first: with its default policy, one that
    leads inside is refused (the control plane's copy is the way left), nothing is kept."""
    data = b"\x42" * 8192
    store = ImageStore(tmp_path / "images", SimDriver(hostname="s"), Policy(parse_allow([])))
    wanted = {"disk": WantedFile("disk", hashlib.sha256(data).hexdigest(), len(data), None, f"{metadata.url}/latest/meta-data")}

    async def progress(pct: int, message: str) -> None:
        pass

    with pytest.raises(DriverError, match="loopback address") as info:
        await store.provide("tpl-abcd00000000", wanted, None, progress)
    assert SECRET not in str(info.value) and metadata.hits == []
    assert [p.name for p in (tmp_path / "images" / "tpl-abcd00000000").iterdir()] == []
