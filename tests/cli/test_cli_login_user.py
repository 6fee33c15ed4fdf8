"""`vmplane vm ssh` logs in as the VM's login user (its template's `loginUser`), `--user`
overrides it; `vmplane vm import --login-user` sets it. Against a sim server, with a fake `ssh`
first on PATH that records the command line it was given (a real guest: tests/e2e/test_qemu_cli.py)."""

import asyncio
import json
import os
import sys
from pathlib import Path

from vmplane.domain import SshForward
from vmplane.store import vms as vm_q

from ..support import Server

FAKE_SSH = """#!/bin/sh
printf '%s\\n' "$@" > "$FAKE_SSH_ARGV"
exit 7
"""


async def vmplane(server: Server, env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "VMPLANE_API_KEY": server.admin_key, "VMPLANE_URL": server.url, **env},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_vm_ssh_logs_in_as_the_login_user(server: Server, tmp_path: Path) -> None:
    img = tmp_path / "deb.raw"
    img.write_bytes(b"\x55" * 4096)
    r = await server.client.post("/api/v1/templates", json={"name": "deb", "os": "debian", "sourceUrl": f"file://{img}"})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    job = await server.create({"name": "deb-vm", "templateId": "deb"})
    vm_id = job["tasks"][0]["resourceId"]
    async with server.rt.store.write() as conn:  # the forward the qemu driver records (sim nodes make none)
        vm = await vm_q.get_vm(conn, vm_id)
        assert vm is not None
        await vm_q.set_vm(conn, vm_id, spec=vm.spec.with_(ssh=SshForward(22022, "ssh-ed25519 AAAAhostkey")).to_json())

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    argv_file = tmp_path / "argv"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SSH_ARGV": str(argv_file)}

    code, _, err = await vmplane(server, env, "vm", "ssh", "deb-vm", "--", "-o", "BatchMode=yes", "id -un")
    assert code == 7, err  # ssh's own status
    argv = argv_file.read_text().splitlines()
    at = argv.index("-l")
    assert argv[at + 1 : at + 3] == ["debian", "127.0.0.1"] and argv[-3:] == ["-o", "BatchMode=yes", "id -un"], argv
    assert argv[argv.index("-p") + 1] == "22022"

    code, _, err = await vmplane(server, env, "vm", "ssh", "deb-vm", "--user", "root", "--", "true")
    assert code == 7, err
    argv = argv_file.read_text().splitlines()
    assert argv[argv.index("-l") + 1] == "root", argv


async def test_vm_import_takes_the_login_user(server: Server, tmp_path: Path) -> None:
    code, out, err = await vmplane(server, {}, "vm", "import", "http://127.0.0.1:9/x.qcow2", "--login-user", "Not Valid", "--json")
    assert code != 0 and "--login-user" in err and "user name" in err, (out, err)
    code, out, err = await vmplane(server, {}, "vm", "import", "http://127.0.0.1:9/x.qcow2", "--login-user", "centos", "--no-wait", "--json")
    assert code == 0, err
    imp = (await server.client.get("/api/v1/imports")).json()["items"][0]
    assert imp["options"]["loginUser"] == "centos" and imp["jobId"] == json.loads(out)["jobId"]
