"""Disk images that name host files (issue 18, item 1): each hostile shape is built here with
qemu-img, naming a secret file this test writes, and tried through every entry point of a
real server on the qemu driver (native templates by file:// and http, plugins native and
Volant, VM imports of a disk, an OVA, another "vmplane" and a vCenter, the HyperSDK face, a
node agent). Each is refused with its reason and leaves no template image, VM or file; what
does get in (a clean image, an initramfs, a hostile file declared raw, a restored backup of a
disk holding a hostile header) holds nothing of the secret. No guest boots.

The http sources (a web server, a fake vmplane, vcsim) listen on loopback: with the outbound
policy in place the test server must allow 127.0.0.0/8 (tests/support.make_settings does)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import http.server
import io
import json
import os
import struct
import subprocess
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vmplane.drivers.base import TemplateFiles
from vmplane.drivers.qemu import QemuDriver, intake
from vmplane.errors import DriverError

from ..imports_support import ovf_descriptor
from ..support import Server, make_settings, require_qemu
from ..support_agent import AgentServer

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

MARK = b"HOST-SECRET-7f3c9a1e-"
SECRET = MARK * (65536 // len(MARK))
"""what a hostile image tries to read; it must never show up in anything vmplane made"""
GIB = 1 << 30
HOSTILE = ("backing", "data_file", "vmdk_extent", "vmdk_embedded", "json_backing", "huge")
REASON = {
    "backing": "backing file",
    "data_file": "external data file",
    "vmdk_extent": "names extent files",
    "vmdk_embedded": "embedded descriptor",
    "json_backing": "backing file",
    "huge": "over the limit",
}


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def write_secret(path: Path) -> Path:
    path.write_bytes(SECRET)
    return path


def build(shape: str, folder: Path, secret: Path) -> Path:
    """One hostile image in `folder`, aimed at `secret`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{shape}.img"
    out.unlink(missing_ok=True)
    if shape == "backing":
        qemu_img("create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(out), "1M")
    elif shape == "data_file":
        qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={secret},data_file_raw=on", str(out), "1M")
        write_secret(secret)  # (creating the image zeroed its data file)
    elif shape == "vmdk_extent":
        out.write_text(
            '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
            f'RW 128 FLAT "{secret}" 0\n\nddb.virtualHWVersion = "4"\n'
        )
    elif shape == "vmdk_embedded":  # a binary VMDK of capacity 0: qemu reads its embedded descriptor's extents
        raw = folder / "embedded.raw"
        with raw.open("wb") as f:
            f.truncate(1 << 20)
        qemu_img("convert", "-f", "raw", "-O", "vmdk", str(raw), str(out))
        raw.unlink()
        data = bytearray(out.read_bytes())
        struct.pack_into("<Q", data, 12, 0)
        offset, size = struct.unpack_from("<QQ", data, 28)
        text = f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 128 FLAT "{secret}" 0\n'
        data[offset * 512 : (offset + size) * 512] = text.encode().ljust(size * 512, b"\0")
        out.write_bytes(bytes(data))
    elif shape == "json_backing":
        spec = json.dumps({"driver": "raw", "file": {"driver": "file", "filename": str(secret)}})
        qemu_img("create", "-q", "-f", "qcow2", "-b", "json:" + spec, "-F", "raw", str(out), "1M")
    elif shape == "huge":
        qemu_img("create", "-q", "-f", "qcow2", str(out), "3T")
    else:
        raise AssertionError(shape)
    return out


def clean_qcow2(path: Path) -> Path:
    """A standalone qcow2 of 8 MiB whose first MiB reads `vmplane-clean`."""
    raw = path.with_suffix(".raw")
    with raw.open("wb") as f:
        f.write(b"vmplane-clean\n" * (1 << 16))
        f.truncate(8 << 20)
    qemu_img("convert", "-f", "raw", "-O", "qcow2", str(raw), str(path))
    raw.unlink()
    return path


def no_secret_in(data: bytes) -> bool:
    return MARK not in data


def guest_view(qcow2: bytes, scratch: Path) -> bytes:
    """The first 8 MiB a guest would read from a qcow2 disk as GET /vms/{id}/disk exports it.
    (The export itself is uncompressed: every byte the guest could read that is not zero is
    in it as is, so `no_secret_in(export)` covers the whole disk.)"""
    src, out = scratch.with_suffix(".qcow2"), scratch.with_suffix(".raw")
    src.write_bytes(qcow2)
    qemu_img("dd", "-f", "qcow2", "-O", "raw", "bs=1M", "count=8", f"if={src}", f"of={out}")
    try:
        return out.read_bytes()
    finally:
        src.unlink()
        out.unlink()


# -- the intake itself ----------------------------------------------------------------------


async def test_intake_refuses_every_shape_and_leaves_nothing(tmp_path: Path) -> None:
    require_qemu()
    secret = write_secret(tmp_path / "secret")
    out = tmp_path / "out"
    out.mkdir()
    for shape in HOSTILE:
        image = build(shape, tmp_path / "in", secret)
        with pytest.raises(intake.ImageRefused, match=REASON[shape]):
            await intake.intake("qemu-img", image, out / "x.qcow2", max_virtual_size=2048 * GIB)
        assert list(out.iterdir()) == [], shape
    # a raw file of 3 TiB (sparse) is over the limit as well; a stated format is obeyed
    huge = tmp_path / "in" / "huge.raw"
    with huge.open("wb") as f:
        f.truncate(3 << 40)
    with pytest.raises(intake.ImageRefused, match="over the limit"):
        await intake.intake("qemu-img", huge, out / "x.qcow2", max_virtual_size=2048 * GIB, fmt="raw")
    with pytest.raises(intake.ImageRefused, match="not one of"):
        await intake.intake("qemu-img", huge, out / "x.qcow2", max_virtual_size=2048 * GIB, fmt="qed")
    # a FIFO is not an image (qemu-img would block on it); nor is a directory or nothing
    os.mkfifo(tmp_path / "fifo")
    for bad in (tmp_path / "fifo", tmp_path, tmp_path / "missing"):
        with pytest.raises(intake.ImageRefused):
            await intake.intake("qemu-img", bad, out / "x.qcow2", max_virtual_size=GIB)
    assert list(out.iterdir()) == []


async def test_qemu_img_info_is_the_second_wall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the header pre-check switched off, `qemu-img info -f FORMAT` still shows each
    reference and intake refuses it, without qemu-img having read the secret into anything.
    Where qemu-img is confined (vmplane as root), a VMDK's extent is not even opened: the QEMU
    user may not read the secret (a third wall)."""
    require_qemu()
    secret = write_secret(tmp_path / "secret")
    monkeypatch.setattr(intake, "_precheck", lambda path, fmt, name, extents_dir: {str(path)})
    for shape in ("backing", "data_file", "json_backing", "vmdk_extent", "vmdk_embedded"):
        image = build(shape, tmp_path / "in", secret)
        with pytest.raises(intake.ImageRefused, match="backing file|external data file|extent other than|secret': Permission denied"):
            await intake.intake("qemu-img", image, tmp_path / "x.qcow2", max_virtual_size=GIB)
        assert not (tmp_path / "x.qcow2").exists()


async def test_vmdk_extents_only_in_a_folder_vmplane_filled(tmp_path: Path) -> None:
    """A descriptor with its flat extent beside it (vSphere's datastore export) is taken when
    vmplane names that folder; an extent elsewhere, a symlinked one, or any descriptor
    without that permission is refused."""
    require_qemu()
    folder = tmp_path / "export"
    folder.mkdir()
    flat = folder / "disk-flat.vmdk"
    flat.write_bytes((b"vmdk-flat\n" * 110_000)[: 1 << 20])
    desc = folder / "disk.vmdk"

    def descriptor(extent: str) -> None:
        desc.write_text(f'# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\nRW 2048 FLAT "{extent}" 0\n')

    descriptor("disk-flat.vmdk")
    made = await intake.intake("qemu-img", desc, tmp_path / "ok.qcow2", max_virtual_size=GIB, extents_dir=folder)
    assert made.source_format == "vmdk" and made.virtual_size >= 1 << 20
    with pytest.raises(intake.ImageRefused, match="names extent files"):
        await intake.intake("qemu-img", desc, tmp_path / "no.qcow2", max_virtual_size=GIB)
    secret = write_secret(tmp_path / "secret")
    for extent in (str(secret), "../secret", "json:{}"):
        descriptor(extent)
        with pytest.raises(intake.ImageRefused, match="outside its folder"):
            await intake.intake("qemu-img", desc, tmp_path / "no.qcow2", max_virtual_size=GIB, extents_dir=folder)
    (folder / "link.vmdk").symlink_to(secret)
    descriptor("link.vmdk")
    with pytest.raises(intake.ImageRefused, match="not a regular file"):
        await intake.intake("qemu-img", desc, tmp_path / "no.qcow2", max_virtual_size=GIB, extents_dir=folder)
    assert not (tmp_path / "no.qcow2").exists()


async def test_the_limit_is_a_setting(tmp_path: Path) -> None:
    """VMPLANE_MAX_IMAGE_VIRTUAL_GB reaches the qemu driver of a server and of an agent (both
    built by registry.build_qemu_driver); VM imports read the setting itself."""
    from vmplane.drivers.registry import build_qemu_driver

    assert make_settings(tmp_path).max_image_virtual_gb == 2048
    driver = build_qemu_driver(make_settings(tmp_path, max_image_virtual_gb=3), tmp_path / "q", "h", "tcg")
    assert isinstance(driver, QemuDriver) and driver.max_image_bytes == 3 * GIB


# -- one server on the qemu driver for the entry points -------------------------------------


class Env:
    def __init__(self, server: Server, root: Path, http_url: str) -> None:
        self.s = server
        self.root = root
        self.drop = server.rt.data_dir / "imports"  # where tenants may name local files
        self.drop.mkdir(parents=True, exist_ok=True)
        self.secret = root / "host-secret"
        self.http_url = http_url
        self.served = root / "www"

    def hostile(self, shape: str, where: Path | None = None) -> Path:
        return build(shape, where or self.drop, self.secret)

    def files(self) -> set[str]:
        """Image files of templates, nodes' bases, VM folders and imports' scratch: a refusal
        adds none of them."""
        rt = self.s.rt
        found = {str(p) for p in rt.images_dir.glob("*")}
        found |= {str(p) for p in (rt.data_dir / "qemu" / "images").glob("*/*")}
        found |= {str(p) for p in (rt.data_dir / "qemu" / "vms").glob("*")}
        found |= {str(p) for p in (rt.data_dir / "imports" / "work").glob("*")}
        return found

    async def vm_ids(self) -> set[str]:
        return {v["id"] for v in (await self.s.client.get("/api/v1/vms", params={"limit": 500})).json()["items"]}


class FakeVmplane(http.server.BaseHTTPRequestHandler):
    """Another "vmplane" run by the tenant: its VM's disk export is a hostile image."""

    disk = b""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path == "/api/v1/vms/vm-evil0000000":
            body = json.dumps({"id": "vm-evil0000000", "name": "evil", "resources": {"cpu": 1, "ramMb": 128, "diskGb": 1}}).encode()
        elif self.path == "/api/v1/vms/vm-evil0000000/disk":
            body = self.disk
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def www(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server of a folder (a tenant's web server)."""
    root = tmp_path_factory.mktemp("www")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, www: tuple[Path, str]) -> AsyncIterator[Env]:
    require_qemu()
    root = tmp_path_factory.mktemp("images")
    s = await Server(make_settings(root, driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=20)).start()
    e = Env(s, root, www[1])
    e.served = www[0]
    write_secret(e.secret)
    try:
        yield e
    finally:
        await s.stop()


async def new_tenant(s: Server, name: str) -> Any:
    r = await s.client.post("/api/v1/orgs", json={"name": name, "owner": f"{name}-owner"})
    assert r.status_code == 201, r.text
    return s.client_with(r.json()["ownerKey"])


async def failed_job(s: Server, job_id: str, client: Any = None) -> str:
    job = await s.wait_job(job_id, timeout=60, client=client)
    assert job["state"] == "failed", job
    return str(job["tasks"][0]["error"])


async def test_templates_refuse_hostile_images(env: Env) -> None:
    s = env.s
    tenant = await new_tenant(s, "tplorg")
    vms_before, files_before = await env.vm_ids(), env.files()
    for shape in HOSTILE:
        for who, url in (
            (tenant, f"file://{env.hostile(shape)}"),  # a tenant's file in the import directory
            (s.client, f"file://{env.hostile(shape, env.root / 'ops')}"),  # an operator's file anywhere
            (s.client, f"{env.http_url}/{env.hostile(shape, env.served).name}"),  # a download
        ):
            name = f"bad-{shape}-{hashlib.sha256(url.encode()).hexdigest()[:6]}".replace("_", "-")
            r = await who.post("/api/v1/templates", json={"name": name, "sourceUrl": url})
            assert r.status_code == 202, r.text
            error = await failed_job(s, r.json()["jobId"], who)
            assert REASON[shape] in error, (shape, url, error)
            tpl = (await who.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
            assert tpl["status"] == "error" and REASON[shape] in tpl["error"], tpl
            r = await who.post("/api/v1/vms", json={"name": "from-bad", "templateId": tpl["id"], "start": False})
            assert r.status_code in (400, 409), r.text
            assert env.files() == files_before, (shape, url)
    assert await env.vm_ids() == vms_before


async def test_a_template_becomes_a_vm_with_only_its_own_content(env: Env) -> None:
    """The path a hostile image would have taken, with a clean one: template, VM (not
    booted), its disk read back: the image's content, nothing of the secret."""
    s = env.s
    tenant = await new_tenant(s, "cleanorg")
    image = clean_qcow2(env.drop / "clean.qcow2")
    r = await tenant.post("/api/v1/templates", json={"name": "clean", "sourceUrl": f"file://{image}"})
    assert r.status_code == 202, r.text
    assert (await s.wait_job(r.json()["jobId"], client=tenant))["state"] == "succeeded"
    tpl = (await tenant.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
    assert tpl["status"] == "ready" and tpl["format"] == "qcow2"
    bases = list((s.rt.data_dir / "qemu" / "images" / tpl["id"]).glob("*.qcow2"))
    assert len(bases) == 1  # the node's own standalone conversion
    r = await tenant.post("/api/v1/vms", json={"name": "clean-vm", "templateId": tpl["id"], "resources": {"cpu": 1, "ramMb": 128, "diskGb": 1}, "start": False})
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], client=tenant)
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    overlay = s.rt.data_dir / "qemu" / "vms" / vm_id / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(overlay)], check=True, capture_output=True, text=True).stdout)
    assert info["full-backing-filename"] == str(bases[0])
    disk = (await tenant.get(f"/api/v1/vms/{vm_id}/disk")).content
    assert disk[:4] == b"QFI\xfb" and no_secret_in(disk)
    raw = guest_view(disk, env.root / "clean-vm")
    assert raw.startswith(b"vmplane-clean\n") and no_secret_in(raw)
    assert (await s.wait_job((await tenant.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"], client=tenant))["state"] == "succeeded"


def plugin_manifest(name: str, kind: str, image: Path) -> dict[str, Any]:
    return {
        "schema_version": "1.0", "name": name, "version": "0.1.0",
        "resources": {"cpu_cores": 1, "memory_mb": 128},
        "workload": {"type": "http", "base_url": "http://127.0.0.1:8080", "entrypoint": ["httpd", "-f"]},
        kind: {"url": f"file://{image}", "checksum": "sha256:" + hashlib.sha256(image.read_bytes()).hexdigest()},
    }  # fmt: skip


async def plugin_image(s: Server, name: str) -> dict[str, Any]:
    for _ in range(600):
        p = (await s.client.get(f"/api/v1/plugins/{name}")).json()
        if p["image"]["status"] != "importing":
            return dict(p["image"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"image of plugin {name} still importing")


async def test_plugins_refuse_a_hostile_rootfs_and_keep_an_initramfs_an_initrd(env: Env) -> None:
    s = env.s
    files_before = env.files()
    for face, shape in (("native", "data_file"), ("volant", "backing"), ("native", "vmdk_extent"), ("volant", "vmdk_embedded")):
        name = f"evil-{face}-{shape}".replace("_", "-")
        m = plugin_manifest(name, "rootfs", env.hostile(shape, env.root / f"plug-{name}"))
        if face == "volant":
            m["rootfs"]["checksum"] = m["rootfs"]["checksum"].removeprefix("sha256:")
            r = await s.client.post("/compat/volant/api/v1/plugins", json=m)
        else:
            r = await s.client.post("/api/v1/plugins", json=m)
        assert r.status_code == 201, r.text
        image = await plugin_image(s, name)
        assert image["status"] == "error" and REASON[shape] in image["error"], image
        r = await s.client.post("/api/v1/vms", json={"name": f"{name}-vm", "plugin": name})
        assert r.status_code == 409 and REASON[shape] in r.json()["error"], r.text
        assert env.files() == files_before
    # an initramfs is booted as an initrd: the hostile qcow2 is only bytes QEMU loads into RAM
    initrd = env.hostile("data_file", env.root / "plug-initramfs")
    r = await s.client.post("/api/v1/plugins", json=plugin_manifest("ramdisk", "initramfs", initrd))
    assert r.status_code == 201, r.text
    image = await plugin_image(s, "ramdisk")
    assert image["status"] == "ready", image
    job = await s.create({"name": "ramdisk-vm", "plugin": "ramdisk", "start": False})
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    config = json.loads((s.rt.data_dir / "qemu" / "vms" / vm_id / "vm.json").read_text())
    assert config["boot"]["initrd"] == str(s.rt.images_dir / f"{image['templateId']}.img"), config["boot"]
    overlay = s.rt.data_dir / "qemu" / "vms" / vm_id / "disk.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(overlay)], check=True, capture_output=True, text=True).stdout)
    assert "tpl-" in info["full-backing-filename"] and "data-file" not in json.dumps(info)  # the default template's base
    disk = (await s.client.get(f"/api/v1/vms/{vm_id}/disk")).content
    assert disk[:4] == b"QFI\xfb" and no_secret_in(disk)
    assert (await s.wait_job((await s.client.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"]))["state"] == "succeeded"


def hostile_ova(env: Env, shape: str) -> Path:
    """An OVA whose disk member is the hostile image (a VMDK descriptor, or a qcow2)."""
    image = env.hostile(shape, env.root / f"ova-{shape}")
    href = "disk1.vmdk" if shape.startswith("vmdk") else "disk1.qcow2"
    ovf = ovf_descriptor(f"ova-{shape}".replace("_", "-"), 1, 128, href, image.stat().st_size, 1)
    dest = env.drop / f"{shape}.ova"
    with tarfile.open(dest, "w", format=tarfile.USTAR_FORMAT) as tar:
        data = ovf.encode()
        info = tarfile.TarInfo("vm.ovf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        tar.add(image, arcname=href)
    return dest


async def test_imports_refuse_hostile_disks(env: Env) -> None:
    s = env.s
    tenant = await new_tenant(s, "imporg")
    vms_before, files_before = await env.vm_ids(), env.files()

    async def refused(imp: Any, reason: str) -> None:
        assert imp.status_code in (201, 202), imp.text
        imp_id = imp.json().get("importId") or imp.json().get("job_id")
        for _ in range(600):
            row = (await tenant.get(f"/api/v1/imports/{imp_id}")).json()
            if row["state"] in ("failed", "succeeded", "cancelled"):
                break
            await asyncio.sleep(0.05)
        assert row["state"] == "failed" and reason in row["error"], row
        assert row["vmId"] is None and env.files() == files_before, row

    for shape in HOSTILE:
        path = env.hostile(shape)
        await refused(await tenant.post("/api/v1/imports", json={"source": {"type": "disk", "path": str(path)}, "start": False}), REASON[shape])
        fmt = "vmdk" if shape.startswith("vmdk") else "qcow2"  # stating the format changes nothing
        body = {"source": {"type": "disk", "url": f"file://{path}", "format": fmt}, "start": False}
        await refused(await tenant.post("/api/v1/imports", json=body), REASON[shape])
    # an OVA's disk is read as the VMDK its descriptor says it is
    for shape, reason in (("vmdk_extent", REASON["vmdk_extent"]), ("vmdk_embedded", REASON["vmdk_embedded"]), ("data_file", "is not a VMDK image")):
        ova = hostile_ova(env, shape)
        await refused(await tenant.post("/api/v1/imports", json={"source": {"type": "ova", "path": str(ova)}, "start": False}), reason)
        body = {"name": f"hsdk-{shape}".replace("_", "-"), "vm_path": str(ova), "source": {"type": "ova", "path": str(ova)}, "start": False}
        await refused(await tenant.post("/compat/hypersdk/jobs/submit", json=body), reason)
    assert await env.vm_ids() == vms_before

    # another vmplane whose VM disk export is hostile (source type `vmplane`)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeVmplane)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for shape in ("data_file", "backing", "json_backing"):
            FakeVmplane.disk = env.hostile(shape, env.root / "fake-vmplane").read_bytes()
            source = {"type": "vmplane", "url": f"http://127.0.0.1:{httpd.server_address[1]}", "apiKey": "k", "vmId": "vm-evil0000000"}
            await refused(await tenant.post("/api/v1/imports", json={"source": source, "start": False}), REASON[shape])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert await env.vm_ids() == vms_before

    # a hostile qcow2 declared raw is taken as raw bytes: the VM's disk is the file itself
    path = env.hostile("data_file")
    r = await tenant.post("/api/v1/imports", json={"source": {"type": "disk", "path": str(path), "format": "raw"}, "start": False})
    assert r.status_code == 202, r.text
    assert (await s.wait_job(r.json()["jobId"], client=tenant))["state"] == "succeeded"
    vm_id = (await tenant.get(f"/api/v1/imports/{r.json()['importId']}")).json()["vmId"]
    disk = (await tenant.get(f"/api/v1/vms/{vm_id}/disk")).content
    raw = guest_view(disk, env.root / "as-raw")
    assert no_secret_in(disk)
    assert raw[:4] == b"QFI\xfb" and no_secret_in(raw)
    assert (await s.wait_job((await tenant.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"], client=tenant))["state"] == "succeeded"


async def test_an_agent_refuses_hostile_images(tmp_path: Path) -> None:
    """Images pushed to a node agent (its qemu driver) go through the same intake; a refusal
    reaches the control plane's remote driver with its reason and the agent keeps nothing."""
    require_qemu()
    secret = write_secret(tmp_path / "secret")
    data = tmp_path / "agent"
    agent = await AgentServer(QemuDriver(state_dir=data / "qemu", hostname="agent-host", accel="tcg"), data).start()
    d = agent.remote()
    await d.open()

    async def quiet(_p: int, _m: str) -> None:
        return None

    try:
        for i, shape in enumerate(HOSTILE):
            tpl = f"tpl-evil{i:08d}"
            image = build(shape, tmp_path / "cp", secret)
            with pytest.raises(DriverError, match=REASON[shape]):
                await d.provide_template(TemplateFiles(tpl, image), quiet)
            with pytest.raises(DriverError, match=REASON[shape]):
                await d.import_image(tpl, image, quiet)
            assert not (data / "images" / tpl).exists() and not (data / "qemu" / "images" / tpl).exists()
        clean = clean_qcow2(tmp_path / "cp" / "clean.qcow2")
        path, _boot = await d.provide_template(TemplateFiles("tpl-clean0000000", clean), quiet)
        assert Path(path).is_relative_to(data / "qemu" / "images" / "tpl-clean0000000")
        await d.delete_image("tpl-clean0000000")
        assert not Path(path).exists()
    finally:
        await d.close()
        await agent.stop()


async def test_a_restore_takes_a_disk_as_raw_content(env: Env) -> None:
    """A tenant controls what their disk holds, so a backup can carry a hostile qcow2 header
    as data: a restore writes those bytes into a qcow2 vmplane makes (`-f raw`), never reads
    them as a header."""
    s, c = env.s, env.s.client
    if not s.rt.backup_store.available():
        pytest.skip("restic is not installed")
    tpl = next(t["id"] for t in (await c.get("/api/v1/templates")).json()["items"] if t["name"] == "tiny-linux")
    job = await s.create({"name": "shaped", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 128, "diskGb": 1}, "start": False})
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    hostile = env.hostile("data_file", env.root / "restore")
    disk = s.rt.data_dir / "qemu" / "vms" / vm_id / "disk.qcow2"
    # what the guest could have written to its own disk
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -s {hostile} 0 {hostile.stat().st_size}", str(disk)], check=True, capture_output=True)
    r = await c.post(f"/api/v1/vms/{vm_id}/backups", json={"notes": "shaped"})
    assert r.status_code == 202, r.text
    assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    r = await c.post(f"/api/v1/vms/{vm_id}/restore", json={"backupId": r.json()["backupId"]})
    assert r.status_code == 202, r.text
    assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "-f", "qcow2", "--output=json", str(disk)], check=True, capture_output=True, text=True).stdout)
    assert "data-file" not in json.dumps(info) and info["full-backing-filename"].startswith(str(s.rt.data_dir / "qemu" / "images"))
    exported = (await c.get(f"/api/v1/vms/{vm_id}/disk")).content
    assert no_secret_in(exported)
    assert guest_view(exported, env.root / "restored").startswith(hostile.read_bytes()[:4096])  # the bytes, as data
    assert (await s.wait_job((await c.delete(f"/api/v1/vms/{vm_id}")).json()["jobId"]))["state"] == "succeeded"


@pytest.fixture(scope="module")
def vcsim_at(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """govmomi's vCenter simulator: the tenant's "vCenter", whose VM disk file is hostile."""
    from ..imports_support import running_vcsim

    with running_vcsim(tmp_path_factory.mktemp("vcsim"), "vcadmin", "vc-Pa55-word") as vc:
        yield vc


async def test_a_vsphere_source_with_a_hostile_disk_is_refused(env: Env, vcsim_at: dict[str, str]) -> None:
    """The VM's disk file on the (tenant's) vCenter is replaced by a hostile image; the
    import by datastore download fetches it into its work folder and intake refuses it."""
    import re

    import httpx

    from vmplane.domain.vsphere import Connection
    from vmplane.services import vsphere as vs

    s, c = env.s, env.s.client
    conn = Connection(vcsim_at["url"], "vcadmin", "vc-Pa55-word", True)
    vms_before, files_before = await env.vm_ids(), env.files()
    for i, shape in enumerate(("vmdk_embedded", "data_file")):
        path = f"DC0/vm/DC0_H0_VM{i}"
        info = await s.rt.vsphere.vm_info(conn, path)
        await s.rt.vsphere.power_off(conn, path)
        ds, rel = re.match(r"^\[([^\]]+)\]\s*(.+)$", info.disks[0].file_path).groups()  # type: ignore[union-attr]
        body = env.hostile(shape, env.root / "vsphere").read_bytes()

        def upload(si: Any, rel: str = rel, ds: str = ds, body: bytes = body) -> int:
            url = f"https://{vcsim_at['addr']}/folder/{rel}?dcPath=DC0&dsName={ds}"
            return httpx.put(url, content=body, headers={"Cookie": vs._cookie(si)}, verify=False).status_code

        assert vs._with_si(conn, await s.rt.outbound.policy(), upload) in (200, 201)
        source = {"type": "vsphere", "vcenterUrl": vcsim_at["url"], "username": "vcadmin", "password": "vc-Pa55-word", "insecure": True,
                  "vmPath": path, "exportMethod": "datastore"}  # fmt: skip
        r = await c.post("/api/v1/imports", json={"source": source, "start": False})
        assert r.status_code == 202, r.text
        job = await s.wait_job(r.json()["jobId"], timeout=120)
        assert job["state"] == "failed" and REASON[shape] in job["tasks"][0]["error"], job
        imp = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()
        assert imp["vmId"] is None and env.files() == files_before, imp
    assert await env.vm_ids() == vms_before
