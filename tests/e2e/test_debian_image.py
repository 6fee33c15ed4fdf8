"""`vmplane image build debian-12` end to end: the project's command builds the image (or finds
it in the cache, ~/.cache/vmplane/images) and registers the shared template; one guest boots
from it on the qemu driver with an SSH key and user-data, and we check that cloud-init applied
the hostname, the key (ssh as `debian` through the forwarded port) and the user-data, that the
root filesystem grew to the VM's disk, that the kernel hook regenerates the bootloader config
on the booted guest, that the guest agent answers, and that the serial console shows the boot."""

import asyncio
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

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


async def poll(predicate: Any, timeout: float, what: str, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# an empty cache builds first (~2-3 min), then a Debian boot under TCG (~2-4 min on a loaded
# 2-core machine): more than the suite's default 300 s
@pytest.mark.timeout(1200)
async def test_debian_12_built_registered_booted_and_configured(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    require_ssh()
    started = time.monotonic()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=30)
    c = s.client
    # the CLI's environment: the server, its owner key, HOME in tmp for ssh, the real image cache
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    env = {**os.environ, "VMPLANE_URL": s.url, "VMPLANE_API_KEY": s.admin_key, "HOME": str(tmp_path), "XDG_CACHE_HOME": cache}

    code, out, err = await run_cli(env, "image", "build", "debian-12", timeout=900)
    assert code == 0, out + err
    assert "debian-12:" in err  # progress, one line per stage (stderr is not a terminal)
    disk = Path(next(line.split()[1] for line in out.splitlines() if line.startswith("disk ")))
    assert disk.parent == Path(cache) / "vmplane" / "images" and disk.suffix == ".qcow2"
    built = time.monotonic()
    tpl = (await c.get("/api/v1/templates/debian-12")).json()
    assert tpl["os"] == "debian" and tpl["shared"] is True, tpl
    assert tpl["loginUser"] == "debian"
    assert f"template debian-12 {tpl['id']}" in out

    # a second build of the same recipe is the cache's: instant, and the template stays
    code, out2, err2 = await run_cli(env, "image", "build", "debian-12", "--no-register", timeout=60)
    assert code == 0 and f"disk   {disk}" in out2 and "cached in" in err2, out2 + err2

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    r = await c.post("/api/v1/vms", json={
        "name": "deb-e2e", "templateId": tpl["id"], "resources": {"cpu": 1, "ramMb": 1024, "diskGb": 4},
        "sshKeys": [key.with_suffix(".pub").read_text().strip()], "cloudInit": {"userData": USER_DATA},
    })  # fmt: skip
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=180)
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    try:

        async def run(*command: str, timeout: float = 30) -> dict[str, Any] | None:
            r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": list(command), "timeoutSec": timeout}, timeout=timeout + 60)
            return r.json() if r.status_code == 200 else None

        async def agent() -> dict[str, Any] | None:
            return await run("true", timeout=5)

        await poll(agent, 400, "the guest agent")
        agent_at = time.monotonic()

        async def cloud_init_done() -> str | None:
            r = await run("cloud-init", "status")
            return r["stdout"] if r and "status: done" in r["stdout"] else None

        await poll(cloud_init_done, 400, "cloud-init status: done")
        done_at = time.monotonic()
        r = await run("cloud-init", "status", "--long")
        assert r is not None and "error" not in r["stdout"].split("detail:")[0].lower(), r

        # cloud-init: hostname from meta-data, user-data ran, the root filesystem grew to the disk
        r = await run("sh", "-c", "hostname; cat /var/tmp/vmplane-marker; df -B1 --output=size / | tail -n1")
        assert r is not None and r["exitCode"] == 0, r
        hostname, marker, size = r["stdout"].split()
        assert (hostname, marker) == ("deb-e2e", "from-user-data")
        assert int(size) > 3_500_000_000  # a 4 GB disk from a 2 GiB image: growpart + resize2fs

        # the key: ssh as debian through the VM's forwarded port
        vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
        ssh = vm["ssh"]
        argv = ["ssh", "-i", str(key), "-p", str(ssh["port"]), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}", "-o", "ConnectTimeout=60",
                f"debian@{ssh['host']}", "id -un; hostname; sudo -n true && echo sudo-ok"]  # fmt: skip

        async def ssh_login() -> tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            sout, serr = await asyncio.wait_for(proc.communicate(), 120)
            return proc.returncode or 0, sout.decode(), serr.decode()

        # (a loaded TCG guest may be slow to send sshd's banner: a timed-out attempt is retried)
        for _ in range(3):
            code, sout, serr = await ssh_login()
            if "timed out" not in serr:
                break
        assert (code, sout) == (0, "debian\ndeb-e2e\nsudo-ok\n"), serr

        # the kernel hook on the booted guest's /boot (the FAT partition syslinux boots)
        r = await run("sh", "-c", HOOK_CHECK, timeout=60)
        assert r is not None and (r["exitCode"], r["stdout"]) == (0, "hook-ok\n"), r
        r = await run("sh", "-c", "findmnt -no FSTYPE /boot; findmnt -no FSTYPE /")
        assert r is not None and r["stdout"].split() == ["vfat", "ext4"], r

        # the serial console: the kernel (console=ttyS0) and cloud-init printed there
        log = (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text
        assert "Linux version" in log and "Cloud-init v." in log and "deb-e2e login:" in log

        print(
            f"\ndebian-12: build/cache {built - started:.0f} s, create->agent {agent_at - built:.0f} s, "
            f"create->cloud-init done {done_at - built:.0f} s, test total {time.monotonic() - started:.0f} s"
        )
    finally:
        r = await c.delete(f"/api/v1/vms/{vm_id}")
        assert (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    assert qemu_processes_of(vm_id) == []
    assert [p for p in Path(s.rt.data_dir).rglob("*") if vm_id in str(p)] == []
