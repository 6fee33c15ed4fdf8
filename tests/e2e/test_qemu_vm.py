"""Real VMs end to end through the HTTP API: boot from tiny-linux with user-data, exec,
console log and WebSocket, graceful shutdown, start, delete, and nothing left behind."""

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from ..support import Server, admin_key, free_port, qemu_processes_of, require_qemu, serve, tiny_template, wait_ready

pytestmark = pytest.mark.slow

USER_DATA = "#!/bin/sh\necho written-by-user-data > /root/proof.txt\n"
BOOT_LINE = "vmplane-tiny: boot complete"


@pytest.fixture
async def qemu_server(server_factory: Any) -> Server:
    require_qemu()
    return await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=20)


async def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


async def test_real_vm_lifecycle_through_the_api(qemu_server: Server) -> None:
    s, c = qemu_server, qemu_server.client
    tpl = await tiny_template(s)
    job = await s.create(
        {"name": "e2e-1", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}, "cloudInit": {"userData": USER_DATA}}
    )
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert vm["status"] == "running" and vm["node"] == "node-1"
    node = (await c.get("/api/v1/nodes/node-1")).json()
    assert node["driver"] == "qemu" and node["simulated"] is False

    async def booted() -> bool:
        return BOOT_LINE in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text

    await wait_for(booted, 60, "the boot line on the serial console")

    async def user_data_ran() -> dict[str, Any] | None:
        r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/root/proof.txt"], "timeoutSec": 10})
        body = r.json()
        return body if r.status_code == 200 and body["exitCode"] == 0 else None

    result = await wait_for(user_data_ran, 60, "the user-data's file")
    assert result["stdout"] == "written-by-user-data\n" and result["timedOut"] is False
    r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert r.json()["exitCode"] == 3 and r.json()["stdout"] == "out\n" and r.json()["stderr"] == "err\n"
    r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["sleep", "5"], "timeoutSec": 1})
    assert r.json()["timedOut"] is True

    stats = (await c.get(f"/api/v1/vms/{vm_id}/stats")).json()
    assert stats["uptimeSeconds"] > 0 and stats["memoryMb"] > 0 and stats["memoryTotalMb"] == 256

    # the serial console over the WebSocket, both ways
    tok = (await c.post(f"/api/v1/vms/{vm_id}/console")).json()
    ws_url = s.url.replace("http", "ws") + tok["websocketPath"]
    async with websockets.connect(ws_url) as ws:
        await ws.send("echo console-$((40+2))\n")
        seen = b""
        deadline = time.monotonic() + 20
        while b"console-42" not in seen and time.monotonic() < deadline:
            msg = await asyncio.wait_for(ws.recv(), timeout=20)
            seen += msg if isinstance(msg, bytes) else msg.encode()
        assert b"console-42" in seen
    with pytest.raises(websockets.exceptions.InvalidStatus):  # the token was for one use
        async with websockets.connect(ws_url):
            pass

    # graceful shutdown, start again, then delete
    r = await c.post(f"/api/v1/vms/{vm_id}/shutdown")
    job = await s.wait_job(r.json()["jobId"], timeout=60)
    task = (await c.get(f"/api/v1/jobs/{job['id']}/tasks/{job['tasks'][0]['id']}")).json()
    assert job["state"] == "succeeded" and any("guest powered off" in line for line in task["log"]), task
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "stopped"
    assert qemu_processes_of(vm_id) == []
    r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["true"]})
    assert r.status_code == 409
    r = await c.post(f"/api/v1/vms/{vm_id}/start")
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"

    async def agent_answers() -> bool:
        r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/proc/uptime"], "timeoutSec": 5})
        return r.status_code == 200 and r.json()["exitCode"] == 0

    await wait_for(agent_answers, 60, "the guest agent after the restart")
    # user-data runs once per instance: the guest's root is fresh, and the script did not run again
    r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/root/proof.txt"]})
    assert r.json()["exitCode"] != 0
    r = await c.delete(f"/api/v1/vms/{vm_id}")
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    assert qemu_processes_of(vm_id) == []
    leftovers = [p for p in Path(s.rt.data_dir).rglob("*") if vm_id in str(p)]
    assert leftovers == []


def test_guest_survives_a_sigkill_of_vmplane_and_stays_controllable(tmp_path: Path) -> None:
    require_qemu()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    args = ["--driver", "qemu", "--accel", "tcg"]
    env = {"VMPLANE_CPU_OVERCOMMIT": "8"}
    proc = serve(tmp_path / "data", port, log, args, env)
    vm_id = None
    try:
        wait_ready(url, proc)
        c = httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": admin_key(tmp_path / "data")})
        tpl = next(t["id"] for t in c.get("/api/v1/templates").json()["items"] if t["name"] == "tiny-linux")
        r = c.post("/api/v1/vms", json={"name": "survivor", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
        vm_id = r.json()["vmIds"][0]
        deadline = time.monotonic() + 60
        while c.get(f"/api/v1/jobs/{r.json()['jobId']}").json()["state"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        before = qemu_processes_of(vm_id)
        assert len(before) == 1
        started = c.get(f"/api/v1/vms/{vm_id}").json()

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert qemu_processes_of(vm_id) == before  # the guest outlives the control plane

        proc = serve(tmp_path / "data", port, log, args, env)
        wait_ready(url, proc)
        vm = c.get(f"/api/v1/vms/{vm_id}").json()
        assert vm["status"] == "running" and vm["createdAt"] == started["createdAt"]
        deadline = time.monotonic() + 60
        while True:  # still controllable: the agent answers through the re-attached driver
            r = c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/proc/uptime"], "timeoutSec": 5})
            if r.status_code == 200 and r.json()["exitCode"] == 0:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        r = c.post(f"/api/v1/vms/{vm_id}/stop")
        deadline = time.monotonic() + 60
        while c.get(f"/api/v1/jobs/{r.json()['jobId']}").json()["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert c.get(f"/api/v1/vms/{vm_id}").json()["status"] == "stopped"
        assert qemu_processes_of(vm_id) == []
        r = c.delete(f"/api/v1/vms/{vm_id}")
        deadline = time.monotonic() + 60
        while c.get(f"/api/v1/jobs/{r.json()['jobId']}").json()["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        vm_id = None
    finally:
        proc.kill()
        proc.wait()
        if vm_id:  # never leave a guest running after a failed test
            subprocess.run(["pkill", "-f", vm_id], check=False)


def bootable_disk(path: Path, kernel: Path, initrd: Path) -> None:
    """A raw disk any BIOS boots: a FAT file system with syslinux, the kernel and initramfs
    (built without mounting anything, by mtools)."""
    cfg = path.with_suffix(".cfg")
    cfg.write_text("DEFAULT linux\nSERIAL 0 115200\nLABEL linux\n  KERNEL vmlinuz\n  APPEND initrd=initrd.img console=ttyS0 panic=-1\n")
    for argv in (
        ["mkfs.fat", "-C", str(path), "65536"],
        ["mcopy", "-i", str(path), str(kernel), "::vmlinuz"],
        ["mcopy", "-i", str(path), str(initrd), "::initrd.img"],
        ["mcopy", "-i", str(path), str(cfg), "::syslinux.cfg"],
        ["syslinux", "--install", str(path)],
    ):
        subprocess.run(argv, check=True, capture_output=True)


async def test_imported_disk_images_boot_and_bad_ones_fail(qemu_server: Server, tmp_path: Path) -> None:
    import shutil as _shutil

    from vmplane.images import tiny_dir
    from vmplane.images.tiny import INIT_START_LINE, load_tiny_image

    if not all(_shutil.which(t) for t in ("mkfs.fat", "mcopy", "syslinux")):
        require_qemu()  # (fails under VMPLANE_REQUIRE_QEMU=1, where scripts/install-qemu.sh installs them)
        pytest.skip("syslinux, mtools or dosfstools missing")
    s, c = qemu_server, qemu_server.client
    image = load_tiny_image(tiny_dir(s.rt.settings.resolved_image_cache()))
    assert image is not None
    disk = tmp_path / "bootable.raw"
    bootable_disk(disk, image.kernel, image.initrd)
    r = await c.post("/api/v1/templates", json={"name": "imported-raw", "sourceUrl": f"file://{disk}"})
    job = await s.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded", job
    tpl = (await c.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
    assert tpl["format"] == "qcow2" and tpl["sizeMb"] == 64  # the node converted it (drivers/qemu/intake.py)
    job = await s.create({"name": "from-import", "templateId": tpl["id"], "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]

    async def booted() -> bool:
        return INIT_START_LINE in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text

    await wait_for(booted, 60, "the imported disk to boot (BIOS, syslinux, kernel, init)")
    r = await c.delete(f"/api/v1/vms/{vm_id}")
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"

    broken = tmp_path / "broken.qcow2"
    broken.write_bytes(b"QFI\xfb" + b"\x00\x00\x00\x03" + b"\xff" * 4096)
    r = await c.post("/api/v1/templates", json={"name": "broken", "sourceUrl": f"file://{broken}"})
    job = await s.wait_job(r.json()["jobId"])
    assert job["state"] == "failed" and job["tasks"][0]["error"], job
    tpl = (await c.get(f"/api/v1/templates/{r.json()['templateId']}")).json()
    assert tpl["status"] == "error" and tpl["error"]


async def test_snapshot_of_a_running_guest_clones_and_reverts_its_disk(qemu_server: Server, caplog: pytest.LogCaptureFixture) -> None:
    s, c = qemu_server, qemu_server.client
    tpl = await tiny_template(s)
    job = await s.create({"name": "snap-src", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
    vm_id = job["tasks"][0]["resourceId"]

    async def run(vm: str, script: str) -> dict[str, Any]:
        async def answered() -> dict[str, Any] | None:
            r = await c.post(f"/api/v1/vms/{vm}/exec", json={"command": ["sh", "-c", script], "timeoutSec": 10})
            return r.json() if r.status_code == 200 and r.json()["exitCode"] == 0 else None

        return await wait_for(answered, 60, f"{script!r} in {vm}")

    await run(vm_id, "grep -q ' /mnt/disk ' /proc/mounts && echo original-bytes > /mnt/disk/data.txt && sync")
    r = await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "good"})
    snap_id = r.json()["snapshotId"]
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"  # live: never stopped
    assert "no file system freeze" not in caplog.text  # the guest agent froze its file systems
    assert (await run(vm_id, "touch /mnt/disk/thawed"))["exitCode"] == 0  # and thawed them
    await run(vm_id, "echo overwritten > /mnt/disk/data.txt && sync")

    clone = await s.create({"name": "snap-clone", "snapshotId": snap_id})
    assert clone["state"] == "succeeded", clone
    clone_id = clone["tasks"][0]["resourceId"]
    assert (await run(clone_id, "cat /mnt/disk/data.txt"))["stdout"] == "original-bytes\n"

    r = await c.post(f"/api/v1/vms/{vm_id}/revert", json={"snapshotId": snap_id})
    assert (await s.wait_job(r.json()["jobId"], timeout=90))["state"] == "succeeded"
    assert (await run(vm_id, "cat /mnt/disk/data.txt"))["stdout"] == "original-bytes\n"

    assert (await c.delete(f"/api/v1/snapshots/{snap_id}")).status_code == 409  # the clone builds on it
    for v in (clone_id, vm_id):
        r = await c.delete(f"/api/v1/vms/{v}")
        assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    r = await c.delete(f"/api/v1/snapshots/{snap_id}")
    assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    assert not list(Path(s.rt.data_dir).rglob(f"{snap_id}*"))


async def test_backup_and_restore_of_a_running_guest(qemu_server: Server) -> None:
    s, c = qemu_server, qemu_server.client
    if not s.rt.backup_store.available():
        require_qemu()
        pytest.skip("restic is not installed")
    tpl = await tiny_template(s)
    job = await s.create({"name": "bk-src", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
    vm_id = job["tasks"][0]["resourceId"]

    async def run(vm: str, script: str) -> dict[str, Any]:
        async def answered() -> dict[str, Any] | None:
            r = await c.post(f"/api/v1/vms/{vm}/exec", json={"command": ["sh", "-c", script], "timeoutSec": 20})
            return r.json() if r.status_code == 200 and r.json()["exitCode"] == 0 else None

        return await wait_for(answered, 60, f"{script!r} in {vm}")

    await run(vm_id, "grep -q ' /mnt/disk ' /proc/mounts && head -c 30000000 /dev/urandom > /mnt/disk/blob && md5sum /mnt/disk/blob > /mnt/disk/blob.md5 && sync")
    original = (await run(vm_id, "cat /mnt/disk/blob.md5"))["stdout"]

    async def backup(notes: str) -> dict[str, Any]:
        r = await c.post(f"/api/v1/vms/{vm_id}/backups", json={"notes": notes})
        assert r.status_code == 202, r.text
        second = await c.post(f"/api/v1/vms/{vm_id}/backups", json={"notes": "at the same time"})
        assert second.status_code == 409  # one backup or restore per VM at a time
        job = await s.wait_job(r.json()["jobId"], timeout=120)
        assert job["state"] == "succeeded", job
        return (await c.get(f"/api/v1/backups/{r.json()['backupId']}")).json()

    first = await backup("first")
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"  # live
    again = await backup("unchanged")
    assert first["logicalBytes"] == again["logicalBytes"] == 2 * 2**30
    assert again["storedBytes"] < 0.05 * first["storedBytes"]  # de-duplicated

    await run(vm_id, "head -c 3000000 /dev/urandom > /mnt/disk/blob && sync")
    r = await c.post(f"/api/v1/vms/{vm_id}/restore", json={"backupId": first["id"]})
    assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    assert (await run(vm_id, "md5sum /mnt/disk/blob"))["stdout"] == original

    listed = (await c.get(f"/api/v1/vms/{vm_id}/backups")).json()
    assert [b["id"] for b in listed["items"]] == [again["id"], first["id"]] and listed["backupInProgress"] is False

    # into another VM: too small a disk is refused, a large enough one gets the data
    small = await s.create({"name": "bk-small", "templateId": tpl, "start": False, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
    r = await c.post(f"/api/v1/backups/{first['id']}/restore", json={"targetVmId": small["tasks"][0]["resourceId"]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "targetVmId"
    other = await s.create({"name": "bk-other", "templateId": tpl, "start": False, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
    other_id = other["tasks"][0]["resourceId"]
    r = await c.post(f"/api/v1/backups/{first['id']}/restore", json={"targetVmId": other_id})
    assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    r = await c.post(f"/api/v1/vms/{other_id}/start")
    await s.wait_job(r.json()["jobId"], timeout=60)
    assert (await run(other_id, "md5sum /mnt/disk/blob"))["stdout"] == original
    storage = (await c.get("/api/v1/backups/storage")).json()
    assert storage["items"][0]["backups"] == 2 and storage["repositoryBytes"] < 2 * first["storedBytes"]

    # a corrupt chunk fails the restore loudly and leaves the VM as it was
    packs = sorted((s.rt.data_dir / "backups" / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    biggest = packs[-1]
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    r = await c.post(f"/api/v1/vms/{vm_id}/restore", json={"backupId": first["id"]})
    job = await s.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "failed" and "restore failed" in job["tasks"][0]["error"], job
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"
    assert (await run(vm_id, "md5sum /mnt/disk/blob"))["stdout"] == original


async def test_backup_schedule_runs_and_keeps_the_newest(qemu_server: Server) -> None:
    from vmplane import clock

    from ..api.test_schedules import make_due

    s, c = qemu_server, qemu_server.client
    if not s.rt.backup_store.available():
        require_qemu()
        pytest.skip("restic is not installed")
    job = await s.create({"name": "bk-sched", "templateId": await tiny_template(s), "resources": {"cpu": 1, "ramMb": 256, "diskGb": 1}})
    vm_id = job["tasks"][0]["resourceId"]
    r = await c.put(f"/api/v1/vms/{vm_id}/backup-schedule", json={"frequency": "weekly", "hourUtc": 3})
    assert r.status_code == 400 and r.json()["details"]["field"] == "dayOfWeek"
    r = await c.put(f"/api/v1/vms/{vm_id}/backup-schedule", json={"frequency": "weekly", "hourUtc": 3, "dayOfWeek": 0, "keepLast": 2})
    sch = r.json()
    assert r.status_code == 200 and sch["frequency"] == "weekly" and sch["nextRun"].endswith("T03:00:00Z")
    for n in range(1, 4):  # three due times
        await make_due(s, sch["scheduleId"], clock.now())
        await wait_for(
            lambda: _schedule_done(c, sch["scheduleId"], n), 90, f"scheduled backup run {n}"
        )
    await asyncio.sleep(1)

    async def kept() -> list[dict[str, Any]] | None:
        items = (await c.get(f"/api/v1/vms/{vm_id}/backups")).json()["items"]
        return items if len(items) == 2 else None

    items = await wait_for(kept, 60, "retention to leave 2 backups")
    assert all(i["status"] == "succeeded" and i["notes"] == "scheduled (weekly)" for i in items)
    assert (await c.get(f"/api/v1/vms/{vm_id}/backup-schedule")).json()["keepLast"] == 2
    assert (await c.delete(f"/api/v1/vms/{vm_id}/backup-schedule")).status_code == 204
    assert (await c.get(f"/api/v1/vms/{vm_id}/backup-schedule")).status_code == 404


async def _schedule_done(c: httpx.AsyncClient, schedule_id: str, n: int) -> bool:
    s = (await c.get(f"/api/v1/schedules/{schedule_id}")).json()
    return s["successCount"] >= n
