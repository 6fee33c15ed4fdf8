"""The user's side on a real guest, through the `vmplane` command: `vm ssh` logs in with a key
the test makes, `vm exec` exits with the command's code, `vm console` attached through a
pseudo-terminal answers `uname -a` and detaches on Ctrl-]. The SSH port
stays through a firewall change, a control-plane restart and stop/start. One guest for all of it."""

import asyncio
import os
import pty
import shutil
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from ..support import Server, require_qemu, tiny_template

pytestmark = pytest.mark.slow

BOOT_LINE = "vmplane-tiny: boot complete"


def require_ssh() -> None:
    """ssh and ssh-keygen come with QEMU (scripts/install-qemu.sh installs openssh-client)."""
    if shutil.which("ssh") and shutil.which("ssh-keygen"):
        return
    if os.environ.get("VMPLANE_REQUIRE_QEMU") == "1":
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but ssh/ssh-keygen (openssh-client) are not installed")
    pytest.skip("openssh-client is not installed")


VMPLANE = [str(Path(sys.executable).with_name("vmplane"))] if Path(sys.executable).with_name("vmplane").exists() else [
    sys.executable, "-c", "from vmplane.cli import main; main()"
]  # fmt: skip
"""the installed command (`python -m vmplane.cli.main` warns on stderr, which the test reads)"""


def cli_env(s: Server, tmp_path: Path) -> dict[str, str]:
    # HOME in tmp: whatever ssh would write (it should write nothing) stays in the test's directory
    return {**os.environ, "VMPLANE_URL": s.url, "VMPLANE_API_KEY": s.admin_key, "HOME": str(tmp_path)}


async def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *VMPLANE, *args, env=env,
        stdin=subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_ssh_exec_and_console_through_the_cli(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    require_ssh()
    s = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    key, cloud_key, other = (tmp_path / n for n in ("id_ed25519", "cloud", "other"))
    for k in (key, cloud_key, other):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k.name, "-f", str(k)], check=True)
    user_data = f"#cloud-config\nssh_authorized_keys:\n  - {cloud_key.with_suffix('.pub').read_text().strip()}\n"
    env = cli_env(s, tmp_path)
    tpl = await tiny_template(s)

    code, out, err = await run_cli(
        env, "vm", "create", "cli-guest", "--template", tpl, "--ram-mb", "256", "--disk-gb", "2", "--ssh-key", f"@{key}.pub",
        "--user-data", user_data, "--json", timeout=120
    )
    assert code == 0, err
    vm = (await s.client.get("/api/v1/vms", params={"name": "cli-guest"})).json()["items"][0]
    assert vm["status"] == "running"
    # the guest makes its own host key at first boot and prints it: vmplane pins it once the guest is ready
    vm = (await s.client.get(f"/api/v1/vms/{vm['id']}", params={"waitReady": "240"}, timeout=270)).json()
    assert vm["ssh"]["host"] == "127.0.0.1" and vm["ssh"]["user"] == "root" and vm["ssh"]["hostKey"].startswith("ssh-ed25519 ")
    assert (await s.client.get(f"/api/v1/templates/{tpl}")).json()["loginUser"] == "root"  # vmplane's own guest: root, whose ssh.user this is
    await booted(s, vm["id"], times=1)

    # ssh: our key, the guest's host key checked strictly against the one the API names
    code, out, err = await run_cli(
        env, "vm", "ssh", "cli-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "uname -n; id -u; exit 3"
    )
    assert (code, out) == (3, "cli-guest\n0\n"), err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()  # nothing learnt on trust
    # the key from the user's own cloud-config works too; a key the guest does not know is refused
    code, out, err = await run_cli(env, "vm", "ssh", vm["id"], "-i", str(cloud_key), "--", "-o", "BatchMode=yes", "echo", "cloud")
    assert (code, out) == (0, "cloud\n"), err
    code, _, err = await run_cli(env, "vm", "ssh", vm["id"], "-i", str(other), "--", "-o", "BatchMode=yes", "true")
    assert code == 255 and "Permission denied" in err
    # the forward is one of the VM's forwarded ports: an explicit DROP of port 22 closes it
    drop = {"enabled": True, "rules": [{"type": "in", "action": "DROP", "proto": "tcp", "dport": "22"}]}
    r = await s.client.put(f"/api/v1/vms/{vm['id']}/firewall", json=drop)
    assert (await s.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    code, _, err = await run_cli(env, "vm", "ssh", "cli-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "true")
    assert code == 255 and "refused" in err
    r = await s.client.put(f"/api/v1/vms/{vm['id']}/firewall", json={"enabled": True, "rules": []})
    done = await s.wait_job(r.json()["jobId"])
    assert done["state"] == "succeeded", done

    # exec: output on the right streams, the command's exit code
    code, out, err = await run_cli(env, "vm", "exec", "cli-guest", "--", "sh", "-c", "echo to-out; echo to-err >&2; exit 5")
    assert (code, out, err) == (5, "to-out\n", "to-err\n")

    # console: a pseudo-terminal as the user's terminal; raw mode; Ctrl-] detaches and restores it
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*VMPLANE, "vm", "console", "cli-guest"],
        env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    try:
        await asyncio.to_thread(read_until, master, b"Press Ctrl-]", 30)
        os.write(master, b"uname -a\r")
        await asyncio.to_thread(read_until, master, b"Linux cli-guest", 30)  # the answer, not the echo
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ICANON and not raw[3] & termios.ECHO  # raw while attached
        os.write(master, b"\x1d")
        assert await asyncio.to_thread(proc.wait, 15) == 0
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)

    # a restarted control plane (the guest runs on): the same port, SSH again
    await s.stop()
    s = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)  # the same data dir
    env = cli_env(s, tmp_path)
    assert (await s.client.get(f"/api/v1/vms/{vm['id']}")).json()["ssh"] == vm["ssh"]
    code, out, err = await run_cli(env, "vm", "ssh", "cli-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "cat", "/proc/uptime")
    assert code == 0 and float(out.split()[0]) > 5, err  # the same guest, not a new boot

    # resize through the CLI, with units: pending on the running guest, applied by the stop/start below
    code, out, err = await run_cli(env, "vm", "resize", "cli-guest", "--cpu", "2", "--ram-mb", "384M", timeout=120)
    assert (code, out) == (0, "cli-guest: 2 vCPUs and 384 MiB RAM after restart; `vmplane vm restart cli-guest`\n"), err

    # stop and start: the same port, SSH again (the firewall enabled, no rule: policy ACCEPT)
    code, out, err = await run_cli(env, "vm", "stop", "cli-guest", timeout=120)
    assert (code, out) == (0, "cli-guest is stopped\n"), err
    code, _, err = await run_cli(env, "vm", "start", "cli-guest", timeout=120)
    assert code == 0, err
    assert (await s.client.get(f"/api/v1/vms/{vm['id']}")).json()["ssh"] == vm["ssh"]
    await booted(s, vm["id"], times=2)  # the serial log goes on across starts
    code, out, err = await run_cli(env, "vm", "ssh", "cli-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "echo", "again")
    assert (code, out) == (0, "again\n"), err
    code, out, err = await run_cli(env, "vm", "exec", "cli-guest", "--", "sh", "-c", "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo")
    cpus, mem = out.splitlines()
    assert code == 0 and cpus == "2" and 256 * 1024 < int(mem.split()[1]) <= 384 * 1024, (out, err)  # the resize, in the guest

    code, _, err = await run_cli(env, "vm", "delete", "cli-guest", "--force", timeout=120)
    assert code == 0, err


async def booted(s: Server, vm_id: str, times: int) -> None:
    """Wait until the serial log shows the guest's boot line `times` times (sshd runs by then)."""
    deadline = time.monotonic() + 90
    while (await s.client.get(f"/api/v1/vms/{vm_id}/console/log")).text.count(BOOT_LINE) < times:
        assert time.monotonic() < deadline, "the guest did not boot"
        await asyncio.sleep(0.3)


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    import select

    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen; got {seen[-500:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen
