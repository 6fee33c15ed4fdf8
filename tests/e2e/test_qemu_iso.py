"""Real guests (TCG) installed the way an OS is: from an ISO in the CD-ROM onto a blank disk.

The ISO is built here from Debian's packages: the tiny guest's kernel and initramfs behind
GRUB (`grub-mkrescue`: one image that boots on BIOS through El Torito and on UEFI through its
EFI system partition), uploaded through the API's streamed upload. Then:

- a VM with no template (a blank disk), the ISO in its CD-ROM and bootOrder [cdrom, disk]
  boots it on SeaBIOS: the guest comes up (serial console, and its agent says it is ready);
- on that running VM a PATCH ejects the ISO and inserts it again, live: QEMU's `query-block`
  shows the CD-ROM empty, then holding the ISO read-only, and the guest reads its new medium;
- through the VNC WebSocket of that ISO-booted VM (`POST /vms/{id}/vnc`), the RFB handshake
  and a framebuffer update whose pixels are not all one colour (GRUB's and the guest's text);
- a UEFI VM (OVMF, with an NVRAM file of its own in its directory) boots the same ISO.

One in-process server on the qemu driver for the module; two guests, the tests in file order.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vmplane import procfs
from vmplane.images import tiny_dir
from vmplane.images.tiny import load_tiny_image

from ..iso_support import bootable_iso
from ..support import Server, make_settings, require_qemu
from ..support_display import RfbStream, framebuffer, handshake
from .test_qemu_display import open_vnc

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BOOT_WAIT = 240.0
"""under TCG on a loaded machine a boot takes from seconds to minutes"""
BOOTED = "vmplane-tiny: boot complete"


class Lab:
    def __init__(self, server: Server, iso: dict[str, Any], iso_file: Path) -> None:
        self.server, self.iso, self.iso_file = server, iso, iso_file
        self.vm: dict[str, Any] = {}

    async def create(self, name: str, **spec: Any) -> dict[str, Any]:
        job = await self.server.create({
            "name": name, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}, "cdrom": {"isoId": self.iso["id"]}, **spec,
        })  # fmt: skip
        assert job["state"] == "succeeded", job
        vm: dict[str, Any] = (await self.server.client.get(f"/api/v1/vms/{job['tasks'][0]['resourceId']}")).json()
        assert vm["blank"] is True and vm["templateId"] is None and vm["cdrom"] == {"isoId": self.iso["id"]}
        return vm

    async def booted(self, vm: dict[str, Any]) -> float:
        """Seconds until the guest said its boot is complete on its serial console and its
        agent answered (guestReady)."""
        t0 = time.monotonic()
        deadline = t0 + BOOT_WAIT
        while True:
            log = (await self.server.client.get(f"/api/v1/vms/{vm['id']}/console/log")).text
            if BOOTED in log:
                break
            assert time.monotonic() < deadline, log[-2000:]
            await asyncio.sleep(0.5)
        r = await self.server.client.get(f"/api/v1/vms/{vm['id']}", params={"waitReady": "120"}, timeout=130)
        assert r.json()["guestReady"] is True, r.text
        return time.monotonic() - t0

    async def query_block(self, vm: dict[str, Any]) -> dict[str, Any]:
        """QEMU's own view of the VM's CD-ROM (QMP `query-block`, over the driver's monitor)."""
        driver = self.server.rt.registry.driver(vm["nodeId"])
        qvm = driver.machines.vm(vm["id"])
        blocks = await driver.machines.monitor(qvm).execute("query-block")
        return next(b for b in blocks if b.get("qdev") == "cdrom0")

    async def exec(self, vm: dict[str, Any], argv: list[str]) -> dict[str, Any]:
        r = await self.server.client.post(f"/api/v1/vms/{vm['id']}/exec", json={"command": argv, "timeoutSec": 30})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Lab]:
    require_qemu()
    root = tmp_path_factory.mktemp("iso")
    s = await Server(make_settings(root, driver="qemu", accel="tcg")).start()
    try:
        tiny = load_tiny_image(tiny_dir(s.rt.settings.resolved_image_cache()))  # built as the server started
        assert tiny is not None
        t0 = time.monotonic()
        iso_file = bootable_iso(root / "tiny.iso", tiny.kernel, tiny.initrd, tiny.cmdline)
        print(f"[iso] grub-mkrescue: {iso_file.stat().st_size} bytes in {time.monotonic() - t0:.1f} s")
        r = await s.client.post(
            "/api/v1/isos/upload", params={"name": "tiny-installer", "sha256": hashlib.sha256(iso_file.read_bytes()).hexdigest()},
            content=iso_file.read_bytes(), headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert r.status_code == 201, r.text
        yield Lab(s, r.json(), iso_file)
    finally:
        await s.stop()
        for pid, _argv in procfs.processes_mentioning(str(root) + os.sep):  # guests outlive their server by design
            procfs.kill(pid)


async def test_a_blank_disk_vm_boots_the_iso_on_bios(lab: Lab) -> None:
    vm = await lab.create("from-iso", bootOrder=["cdrom", "disk"])
    assert vm["firmware"] == "bios" and vm["bootOrder"] == ["cdrom", "disk"]
    took = await lab.booted(vm)
    print(f"[iso] BIOS: booted from the CD-ROM in {took:.1f} s")
    log = (await lab.server.client.get(f"/api/v1/vms/{vm['id']}/console/log")).text
    assert "GNU GRUB" in log or "Booting" in log or "Linux version" in log or BOOTED in log
    cdrom = await lab.query_block(vm)
    assert cdrom["removable"] is True and cdrom["inserted"]["ro"] is True, cdrom
    lab.vm = vm


async def test_the_iso_booted_vm_shows_its_screen_over_vnc(lab: Lab) -> None:
    vm = lab.vm
    assert vm, "the BIOS VM did not boot"
    ws = await open_vnc(lab.server, vm["id"])
    async with ws:
        s = RfbStream(ws)
        version, types, init = await handshake(s)
        assert version.startswith(b"RFB 003.") and types == [1], (version, types)
        assert 320 <= init.width <= 4096 and 200 <= init.height <= 4096, init
        pixels = await framebuffer(s, init)
    assert len(pixels) == init.width * init.height
    colours = set(pixels)
    assert len(colours) > 1, "the screen is one colour"
    background = max(colours, key=pixels.count)
    print(f"[iso] VNC: {init.width}x{init.height}, {len(colours)} colours, {pixels.count(background) / len(pixels):.1%} background")
    assert pixels.count(background) < len(pixels) * 0.999, "nothing but background on the screen"


async def test_eject_and_insert_live_through_patch(lab: Lab) -> None:
    vm = lab.vm
    assert vm, "the BIOS VM did not boot"
    # the guest reads the medium it booted from (sr1: the seed is the first CD-ROM)
    size = int((await lab.exec(vm, ["cat", "/sys/block/sr1/size"]))["stdout"])
    assert size * 512 == lab.iso_file.stat().st_size, size

    r = await lab.server.client.patch(f"/api/v1/vms/{vm['id']}", json={"cdrom": None})
    assert r.status_code == 202, r.text
    assert (await lab.server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    cdrom = await lab.query_block(vm)
    assert "inserted" not in cdrom, cdrom
    assert (await lab.server.client.get(f"/api/v1/vms/{vm['id']}")).json()["cdrom"] is None
    assert (await lab.server.client.get(f"/api/v1/vms/{vm['id']}")).json()["status"] == "running"

    r = await lab.server.client.patch(f"/api/v1/vms/{vm['id']}", json={"cdrom": {"isoId": "tiny-installer"}})
    assert (await lab.server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    cdrom = await lab.query_block(vm)
    assert cdrom["inserted"]["ro"] is True and cdrom["inserted"]["drv"] == "raw" and cdrom["tray_open"] is False, cdrom
    # the guest sees the new medium
    deadline = time.monotonic() + 30
    while int((await lab.exec(vm, ["cat", "/sys/block/sr1/size"]))["stdout"]) * 512 != lab.iso_file.stat().st_size:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.5)
    # in the CD-ROM of a VM: the ISO cannot be deleted
    r = await lab.server.client.delete(f"/api/v1/isos/{lab.iso['id']}")
    assert r.status_code == 409 and "from-iso" in r.json()["error"], r.text


async def test_a_uefi_vm_boots_the_same_iso(lab: Lab) -> None:
    vm = await lab.create("uefi-from-iso", bootOrder=["cdrom", "disk"], firmware="uefi")
    assert vm["firmware"] == "uefi"
    driver = lab.server.rt.registry.driver(vm["nodeId"])
    qvm = driver.machines.vm(vm["id"])
    assert qvm.paths.nvram.stat().st_size == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").stat().st_size  # its own NVRAM
    took = await lab.booted(vm)
    print(f"[iso] UEFI: booted from the CD-ROM in {took:.1f} s")
    # stopped, then deleted: the VM's NVRAM goes with it
    r = await lab.server.client.delete(f"/api/v1/vms/{vm['id']}")
    assert (await lab.server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert not qvm.paths.nvram.exists() and not qvm.paths.dir.exists()
