"""The user's side on a real guest, through the `vmplane` command: `vm ssh` logs in with a key
the test makes, `vm exec` exits with the command's code, `vm console` attached through a
pseudo-terminal answers `uname -a` and detaches on Ctrl-]. One guest for all of it."""

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
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cli-test", "-f", str(key)], check=True)
    env = cli_env(s, tmp_path)
    tpl = await tiny_template(s)

    code, out, err = await run_cli(
        env, "vm", "create", "cli-guest", "--template", tpl, "--ram-mb", "256", "--disk-gb", "2", "--ssh-key", f"@{key}.pub", "--json", timeout=120
    )
    assert code == 0, err
    vm = (await s.client.get("/api/v1/vms", params={"name": "cli-guest"})).json()["items"][0]
    assert vm["status"] == "running"
    assert vm["ssh"]["host"] == "127.0.0.1" and vm["ssh"]["user"] == "root" and vm["ssh"]["hostKey"].startswith("ssh-ed25519 ")
    deadline = time.monotonic() + 90
    while BOOT_LINE not in (await s.client.get(f"/api/v1/vms/{vm['id']}/console/log")).text:
        assert time.monotonic() < deadline, "the guest did not boot"
        await asyncio.sleep(0.5)

    # ssh: our key, the guest's host key checked strictly against the one the API names
    code, out, err = await run_cli(
        env, "vm", "ssh", "cli-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "uname -n; id -u; exit 3"
    )
    assert (code, out) == (3, "cli-guest\n0\n"), err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()  # nothing learnt on trust
    # a key the guest does not know is refused
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    code, _, err = await run_cli(env, "vm", "ssh", vm["id"], "-i", str(other), "--", "-o", "BatchMode=yes", "true")
    assert code == 255 and "Permission denied" in err

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

    code, _, err = await run_cli(env, "vm", "delete", "cli-guest", timeout=120)
    assert code == 0, err


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
