"""An OVA built here (qemu-img makes the VMDK of a BIOS-bootable disk; an OVF descriptor
beside it; tar) is imported into a running VM on the qemu driver that boots from its own
disk; deleting the VM leaves nothing."""

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..imports_support import bootable_ova
from ..support import Server, require_qemu
from .test_qemu_vm import wait_for

pytestmark = pytest.mark.slow


async def test_an_ova_is_imported_into_a_vm_that_boots_from_its_own_disk(server_factory: Any, tmp_path: Path) -> None:
    from vmplane.images.tiny import INIT_START_LINE

    require_qemu()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=20)
    c = s.client
    ova = bootable_ova(s, tmp_path, "appliance")
    r = await c.post("/api/v1/imports", json={"source": {"type": "ova", "path": str(ova)}, "networkMapping": {"VM Network": "user"}})
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", job
    imp = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    vm_id = imp["vmId"]
    vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert vm["status"] == "running" and vm["resources"] == {"cpu": 1, "ramMb": 256, "diskGb": 1}, vm
    assert vm["ssh"]["host"] == "127.0.0.1" and vm["ssh"]["port"] > 0 and vm["ssh"]["hostKey"] is None, vm  # no template: no known key

    async def booted() -> bool:
        return INIT_START_LINE in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text

    await wait_for(booted, 90, "the imported disk to boot (BIOS, syslinux, kernel, init)")
    own = s.rt.data_dir / "qemu" / "vms" / vm_id / "disk.qcow2"
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(own)], check=True, capture_output=True, text=True).stdout
    assert '"backing-filename"' not in info and '"format": "qcow2"' in info
    assert not (s.rt.data_dir / "imports" / "work" / imp["id"]).exists()
    r = await c.delete(f"/api/v1/vms/{vm_id}")
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    assert not own.parent.exists()


async def test_a_vm_of_another_vmplane_is_imported_with_the_same_disk(server_factory: Any) -> None:
    """The source here is this same vmplane, reached over HTTP as another one would be: its
    disk export (GET /api/v1/vms/{id}/disk, qcow2) and the import's download and conversion."""
    require_qemu()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    c = s.client
    tpl = next(t["id"] for t in (await c.get("/api/v1/templates")).json()["items"] if t["name"] == "tiny-linux")
    job = await s.create({"name": "origin", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}, "start": False})
    assert job["state"] == "succeeded", job
    src_id = job["tasks"][0]["resourceId"]
    r = await c.get(f"/api/v1/vms/{src_id}/disk")
    assert r.status_code == 200 and r.headers["x-vmplane-disk-format"] == "qcow2" and r.content[:4] == b"QFI\xfb"
    for _ in range(40):  # the export file goes once the answer is sent
        if not list((s.rt.data_dir / "imports" / "exports").iterdir()):
            break
        await asyncio.sleep(0.05)
    assert list((s.rt.data_dir / "imports" / "exports").iterdir()) == []
    body = {"source": {"type": "vmplane", "url": s.url, "apiKey": s.admin_key, "vmId": src_id}, "name": "copy", "start": False}
    r = await c.post("/api/v1/imports", json=body)
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", job
    imp = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    assert imp["source"] == {"type": "vmplane", "url": s.url, "vmId": src_id} and imp["shape"]["cpu"] == 1
    vm = (await c.get(f"/api/v1/vms/{imp['vmId']}")).json()
    assert vm["resources"] == {"cpu": 1, "ramMb": 256, "diskGb": 2} and vm["status"] == "stopped"
    vms = s.rt.data_dir / "qemu" / "vms"
    cmp = subprocess.run(["qemu-img", "compare", "-U", str(vms / src_id / "disk.qcow2"), str(vms / imp["vmId"] / "disk.qcow2")], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
