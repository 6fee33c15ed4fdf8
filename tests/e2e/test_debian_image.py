"""`vmplane image build debian-12` end to end, and the whole list of issue 22 on its guest,
through the API and the `vmplane` command (VMPLANE_URL/VMPLANE_API_KEY), with two guests:

- the project's command builds the image (or finds it in the cache, ~/.cache/vmplane/images)
  and registers the shared template `debian-12` (`os: debian`, `loginUser: debian`);
- `vm create` (CLI) returns once the guest is ready: cloud-init done by then (hostname, key,
  user-data, root filesystem grown to the disk); `vm ssh` (no `--user`) logs in as `debian`
  and holds the guest to the host key recorded from its console; stats count the NIC (`ens*`)
  by MAC and the disk; the kernel hook regenerates the bootloader config on the booted guest;
- a live snapshot, and a second VM from it with the source's key and its own hostname and
  instance-id (and host key); a live backup;
- reboot, graceful shutdown, restore onto the stopped VM, start (`guestReady` false, then the
  `?waitReady=` long-poll answers ready), revert to the snapshot: each boot ready again, one
  `vm.guest_ready` event per boot;
- delete: no QEMU process, no file named by a VM's id, no process mentioning the data dir.
"""

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vmplane import procfs

from ..api.test_events import collect, sse_events
from ..support import Server, qemu_processes_of, require_qemu
from .test_qemu_cli import require_ssh, run_cli

pytestmark = pytest.mark.slow

USER_DATA = "#cloud-config\nruncmd:\n  - [sh, -c, 'echo from-user-data > /var/tmp/vmplane-marker']\n"
# a newer kernel "installed" on the booted guest: the hook must make it the default, and go back
# when it is removed (the copies are of the running kernel, so the config stays bootable)
HOOK_CHECK = r"""
set -e
cur=$(uname -r); new=6.1.0-999-cloud-amd64
grep -q "KERNEL /vmlinuz-$cur" /boot/syslinux.cfg
cp /boot/vmlinuz-$cur /boot/vmlinuz-$new; cp /boot/initrd.img-$cur /boot/initrd.img-$new
/etc/kernel/postinst.d/zz-vmplane-syslinux $new /boot/vmlinuz-$new >/dev/null
sed -n '/LABEL linux/,/LABEL previous/p' /boot/syslinux.cfg | grep -q "KERNEL /vmlinuz-$new"
sed -n '/LABEL previous/,$p' /boot/syslinux.cfg | grep -q "KERNEL /vmlinuz-$cur"
rm /boot/vmlinuz-$new /boot/initrd.img-$new
/etc/kernel/postrm.d/zz-vmplane-syslinux $new /boot/vmlinuz-$new >/dev/null
grep -q "KERNEL /vmlinuz-$cur" /boot/syslinux.cfg
! grep -q "$new" /boot/syslinux.cfg
echo hook-ok
"""
# traffic through the guest's NIC: the control plane's API document fetched from the guest
# through the user-mode network's gateway (the host's loopback); Debian has python3, no wget
GUEST_FETCH = """
import socket, struct, sys, urllib.request
gw = next(socket.inet_ntoa(struct.pack('<L', int(f[2], 16))) for f in map(str.split, open('/proc/net/route')) if f[1] == '00000000')
print(len(urllib.request.urlopen('http://%s:%s/openapi.json' % (gw, sys.argv[1]), timeout=60).read()))
"""
BOOT = 900.0
"""a Debian boot under TCG on a loaded 2-core machine: ~45-130 s idle, minutes when loaded"""


# an empty cache builds first (~2-3 min), then five Debian boots under TCG (two guests): allowed
# well past the suite's default 300 s
@pytest.mark.timeout(2400)
async def test_debian_12_the_whole_list_through_the_api_and_the_cli(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    require_ssh()
    started = time.monotonic()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=300)
    c, data_dir = s.client, Path(s.rt.data_dir)
    # the CLI's environment: the server, its owner key, HOME in tmp for ssh, the real image cache
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    env = {**os.environ, "VMPLANE_URL": s.url, "VMPLANE_API_KEY": s.admin_key, "HOME": str(tmp_path), "XDG_CACHE_HOME": cache, "COLUMNS": "200"}
    times: dict[str, float] = {}

    code, out, err = await run_cli(env, "image", "build", "debian-12", timeout=900)
    assert code == 0, out + err
    assert "debian-12:" in err  # progress, one line per stage (stderr is not a terminal)
    disk = Path(next(line.split()[1] for line in out.splitlines() if line.startswith("disk ")))
    assert disk.parent == Path(cache) / "vmplane" / "images" and disk.suffix == ".qcow2"
    times["build/cache"] = time.monotonic() - started
    tpl = (await c.get("/api/v1/templates/debian-12")).json()
    assert tpl["os"] == "debian" and tpl["shared"] is True, tpl
    assert tpl["loginUser"] == "debian"
    assert f"template debian-12 {tpl['id']}" in out

    # a second build of the same recipe is the cache's: instant, and the template stays
    code, out2, err2 = await run_cli(env, "image", "build", "debian-12", "--no-register", timeout=60)
    assert code == 0 and f"disk   {disk}" in out2 and "cached in" in err2, out2 + err2

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    vm_ids: list[str] = []

    async def vm_of(vm_id: str) -> dict[str, Any]:
        r = await c.get(f"/api/v1/vms/{vm_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def wait_ready(vm_id: str) -> dict[str, Any]:
        """The long-poll, asked again while the guest boots (at most 300 s an answer)."""
        deadline = time.monotonic() + BOOT
        while True:
            r = await c.get(f"/api/v1/vms/{vm_id}", params={"waitReady": "300"}, timeout=400)
            assert r.status_code == 200, r.text
            vm = dict(r.json())
            if vm["guestReady"] or vm["status"] not in ("starting", "rebooting", "running") or time.monotonic() > deadline:
                assert vm["guestReady"] is True and vm["status"] == "running", vm
                return vm

    async def run(vm_id: str, script: str, timeout: float = 60) -> str:
        """A shell command in the guest through its agent; its stdout (it must succeed)."""
        r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["sh", "-c", script], "timeoutSec": timeout}, timeout=timeout + 60)
        assert r.status_code == 200, r.text
        assert r.json()["exitCode"] == 0, (script, r.json())
        return str(r.json()["stdout"])

    async def cli(*args: str, timeout: float = 120) -> tuple[str, str]:
        code, out, err = await run_cli(env, *args, timeout=timeout)
        assert code == 0, (args, code, out, err)
        return out, err

    async def vm_ssh(vm: str, command: str) -> str:
        """`vmplane vm ssh` with no user: the VM's login user, the host key it recorded, strictly."""
        argv = ["vm", "ssh", vm, "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=60", command]
        for _ in range(3):  # a loaded TCG guest's sshd may be slow to send its banner: retried, nothing else
            code, out, err = await run_cli(env, *argv, timeout=180)
            if "timed out" not in err:
                break
        assert code == 0, (code, out, err)
        return out

    async def delete(name: str, vm_id: str) -> None:
        await cli("vm", "delete", name, "--force", timeout=300)
        assert (await c.get(f"/api/v1/vms/{vm_id}")).status_code == 404
        assert qemu_processes_of(vm_id) == []
        assert [p for p in data_dir.rglob("*") if vm_id in str(p)] == []

    try:
        # -- create through the CLI: it returns once the guest is ready -------------------------
        t0 = time.monotonic()
        out, err = await cli(
            "vm", "create", "deb-e2e", "--template", "debian-12", "--cpu", "1", "--ram-mb", "1024", "--disk-gb", "4",
            "--ssh-key", f"@{key}.pub", "--user-data", USER_DATA, timeout=BOOT + 300,
        )  # fmt: skip
        times["create->guestReady (CLI)"] = time.monotonic() - t0
        assert re.search(r"deb-e2e: guest ready \(\d+\.\d s\)", err), err
        vm = (await c.get("/api/v1/vms", params={"name": "deb-e2e"})).json()["items"][0]
        vm_id = vm["id"]
        vm_ids.append(vm_id)
        assert vm["status"] == "running" and vm["guestReady"] is True, vm
        # ready means cloud-init was done: its status says so the moment the CLI returns
        status = await run(vm_id, "cloud-init status --long", timeout=120)
        assert status.startswith("status: done") and "error" not in status.split("detail:")[0].lower(), status
        # cloud-init: hostname from meta-data, user-data ran, the root filesystem grew to the disk
        hostname, marker, size = (await run(vm_id, "hostname; cat /var/tmp/vmplane-marker; df -B1 --output=size / | tail -n1")).split()
        assert (hostname, marker) == ("deb-e2e", "from-user-data")
        assert int(size) > 3_500_000_000  # a 4 GB disk from a 2 GiB image: growpart + resize2fs

        # -- vm ssh with no --user: debian, and the host key the console showed, strictly ----------
        assert vm["ssh"]["user"] == "debian" and vm["ssh"]["hostKey"], vm["ssh"]
        host_keys = [" ".join(line.split()[:2]) for line in (await run(vm_id, "cat /etc/ssh/ssh_host_*_key.pub")).splitlines()]
        assert vm["ssh"]["hostKey"] in host_keys, (vm["ssh"], host_keys)  # the guest's own, from its console
        assert await vm_ssh("deb-e2e", "id -un; hostname; sudo -n true && echo sudo-ok") == "debian\ndeb-e2e\nsudo-ok\n"
        assert not (tmp_path / ".ssh" / "known_hosts").exists()  # nothing learnt on trust

        # -- stats: the NIC by its MAC (Debian calls it ens*), the disk by QEMU's counters ---------
        names = (await run(vm_id, "ls /sys/class/net")).split()
        nic = next(n for n in names if n.startswith("ens"))
        assert "eth0" not in names
        assert (await run(vm_id, f"cat /sys/class/net/{nic}/address")).strip() == vm["nics"][0]["mac"].lower()
        before = (await c.get(f"/api/v1/vms/{vm_id}/stats")).json()
        size = len((await c.get("/openapi.json")).content)
        r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["python3", "-c", GUEST_FETCH, str(s.port)], "timeoutSec": 120}, timeout=180)
        assert r.json()["exitCode"] == 0 and int(r.json()["stdout"]) == size, r.json()
        await run(vm_id, "dd if=/dev/urandom of=/var/tmp/blob bs=64k count=64 conv=fsync 2>/dev/null")
        # a user-mode NIC is counted by the guest agent, whose 2 s answer a loaded machine can
        # miss (then 0 until it is asked again, 30 s later): look until the bytes show
        deadline = time.monotonic() + 120
        while True:
            after = (await c.get(f"/api/v1/vms/{vm_id}/stats")).json()
            if after["netRxBytes"] - before["netRxBytes"] >= size or time.monotonic() > deadline:
                break
            await asyncio.sleep(2)
        assert after["netRxBytes"] - before["netRxBytes"] >= size, (before, after)
        assert after["netTxBytes"] > before["netTxBytes"], (before, after)  # the request and the ACKs
        assert after["diskWriteBytes"] - before["diskWriteBytes"] >= 64 * 65536, (before, after)
        assert after["diskReadBytes"] > 0, after

        # -- the kernel hook on the booted guest's /boot (the FAT partition syslinux boots) --------
        assert await run(vm_id, HOOK_CHECK) == "hook-ok\n"
        assert (await run(vm_id, "findmnt -no FSTYPE /boot; findmnt -no FSTYPE /")).split() == ["vfat", "ext4"]
        # the serial console: the kernel (console=ttyS0) and cloud-init printed there
        log = (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text
        assert "Linux version" in log and "Cloud-init v." in log and "deb-e2e login:" in log

        # -- live snapshot, then a live backup (a file between them, another after) ----------------
        r = await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "deb-snap"})
        assert r.status_code == 202, r.text
        snap_id = r.json()["snapshotId"]
        assert (await s.wait_job(r.json()["jobId"], timeout=300))["state"] == "succeeded"
        await run(vm_id, "echo x > /var/tmp/after-snapshot && sync")
        r = await c.post(f"/api/v1/vms/{vm_id}/backups", json={"notes": "e2e"})
        assert r.status_code == 202, r.text
        backup_id = r.json()["backupId"]
        assert (await s.wait_job(r.json()["jobId"], timeout=600))["state"] == "succeeded"
        await run(vm_id, "echo x > /var/tmp/after-backup && sync")
        assert (await vm_of(vm_id))["status"] == "running"  # live: it never stopped

        # -- a VM from the snapshot (no key given), booting while the source reboots ---------------
        r = await c.post("/api/v1/vms", json={"name": "deb-clone", "snapshotId": snap_id})
        assert r.status_code == 202, r.text
        clone_id = r.json()["vmIds"][0]
        vm_ids.append(clone_id)
        clone_job = r.json()["jobId"]
        t0 = time.monotonic()
        await cli("vm", "reboot", "deb-e2e", timeout=300)
        assert (await vm_of(vm_id))["guestReady"] is False  # from the moment the reboot was asked for
        await wait_ready(vm_id)
        times["reboot->guestReady"] = time.monotonic() - t0
        assert await vm_ssh(vm_id, "cat /var/tmp/after-backup") == "x\n"  # the recorded key still holds
        assert (await s.wait_job(clone_job, timeout=300))["state"] == "succeeded"
        clone = await wait_ready(clone_id)
        times["snapshot->clone guestReady (with a reboot beside it)"] = time.monotonic() - t0
        # the source's key (no new one given) on debian, its own hostname, instance-id, host key
        assert clone["ssh"]["user"] == "debian" and clone["ssh"]["hostKey"] not in (None, vm["ssh"]["hostKey"]), clone["ssh"]
        assert await vm_ssh("deb-clone", "id -un; hostname; cat /var/lib/cloud/data/instance-id") == f"debian\ndeb-clone\n{clone_id}\n"
        await delete("deb-clone", clone_id)  # done with it: the source boots three more times alone

        # -- graceful shutdown (CLI): the guest powers itself off --------------------------------
        t0 = time.monotonic()
        await cli("vm", "shutdown", "deb-e2e", timeout=400)
        times["shutdown (graceful)"] = time.monotonic() - t0
        vm = await vm_of(vm_id)
        assert vm["status"] == "stopped" and vm["guestReady"] is False, vm
        log = (await c.get(f"/api/v1/vms/{vm_id}/console/log", params={"bytes": "8192"})).text
        assert "reboot: Power down" in log, log[-2000:]  # the kernel's last line: not a hard stop

        # -- restore the backup onto the stopped VM: what was written after it is gone -----------
        r = await c.post(f"/api/v1/vms/{vm_id}/restore", json={"backupId": backup_id})
        assert r.status_code == 202, r.text
        assert (await s.wait_job(r.json()["jobId"], timeout=600))["state"] == "succeeded"
        assert (await vm_of(vm_id))["status"] == "stopped"

        # -- start (CLI, no wait): not ready at first, then the long-poll answers ready -----------
        t0 = time.monotonic()
        await cli("vm", "start", "deb-e2e", "--no-wait")
        vm = await vm_of(vm_id)
        assert vm["status"] in ("starting", "running") and vm["guestReady"] is False, vm
        await wait_ready(vm_id)
        times["start->guestReady"] = time.monotonic() - t0
        assert await run(vm_id, "cat /var/tmp/after-snapshot; test ! -e /var/tmp/after-backup && echo gone") == "x\ngone\n"

        # -- revert to the snapshot (running: stopped, reverted, started) ------------------------
        t0 = time.monotonic()
        r = await c.post(f"/api/v1/vms/{vm_id}/revert", json={"snapshotId": snap_id})
        assert r.status_code == 202, r.text
        assert (await s.wait_job(r.json()["jobId"], timeout=600))["state"] == "succeeded"
        await wait_ready(vm_id)
        times["revert->guestReady"] = time.monotonic() - t0
        assert await vm_ssh("deb-e2e", "cat /var/tmp/vmplane-marker; test ! -e /var/tmp/after-snapshot && echo gone") == "from-user-data\ngone\n"

        # -- resize the running VM: the disk grow reaches the root filesystem at once (growpart and
        # resize2fs through the agent); RAM waits for a restart (a guest reboot would not apply it)
        mem_before = int(await run(vm_id, "awk '/MemTotal/ {print $2}' /proc/meminfo"))
        r = await c.patch(f"/api/v1/vms/{vm_id}", json={"resources": {"ramMb": 1536, "diskGb": 5}})
        assert r.status_code == 202, r.text
        done = await s.wait_job(r.json()["jobId"], timeout=300)
        assert done["state"] == "succeeded", done
        log = (await c.get(f"/api/v1/jobs/{done['id']}/tasks/{done['tasks'][0]['id']}")).json()["log"]
        assert any("disk grown to 5 GiB; filesystem grown (/dev/vda2, ext4)" in line for line in log), log
        assert int(await run(vm_id, "df -B1 --output=size / | tail -n1")) > 4_400_000_000
        vm = await vm_of(vm_id)
        assert vm["pendingRestart"] is True and vm["pending"] == ["ramMb"], vm
        out, _ = await cli("vm", "list")
        assert "restart to apply" in out, out
        t0 = time.monotonic()
        await cli("vm", "restart", "deb-e2e", timeout=300)  # a power-cycle: a new QEMU with the new RAM
        await wait_ready(vm_id)
        times["restart (power-cycle)->guestReady"] = time.monotonic() - t0
        vm = await vm_of(vm_id)
        assert vm["pendingRestart"] is False and vm["pending"] == [], vm
        mem_after = int(await run(vm_id, "awk '/MemTotal/ {print $2}' /proc/meminfo"))
        assert mem_after > mem_before + 400_000, (mem_before, mem_after)  # kB: ~512 MiB more

        # one vm.guest_ready per boot: the source's create, reboot, start, revert and restart; the clone's
        events = await collect(sse_events(c, {"types": "vm.guest_ready"}, {"Last-Event-ID": "0"}), 6)
        assert sorted(e["data"]["resource"] for e in events) == sorted([vm_id] * 5 + [clone_id]), events

        # -- delete (CLI), then the snapshot and the backup: nothing left --------------------------
        await delete("deb-e2e", vm_id)
        for path in (f"/api/v1/snapshots/{snap_id}", f"/api/v1/backups/{backup_id}"):
            r = await c.delete(path)
            assert r.status_code == 202, r.text
            assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
        assert [p for p in data_dir.rglob("*") if snap_id in str(p)] == []
        assert procfs.processes_mentioning(str(data_dir)) == []  # no QEMU, no dnsmasq, nothing

        times["test total"] = time.monotonic() - started
        print("\ndebian-12: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    finally:
        for vm_id in vm_ids:
            if (await c.get(f"/api/v1/vms/{vm_id}")).status_code == 200:
                r = await c.delete(f"/api/v1/vms/{vm_id}")
                await s.wait_job(r.json()["jobId"], timeout=300)
        for pid, _argv in procfs.processes_mentioning(str(data_dir)):  # guests outlive the control plane by design
            procfs.kill(pid)
