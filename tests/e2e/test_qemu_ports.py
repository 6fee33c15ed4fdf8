"""A stopped VM's SSH port taken by another program: the start still works (the port is
re-picked, `vm.port_changed` says so) and `vmplane vm ssh` reaches that VM's guest, checked
against its own host key; each tiny-linux guest has its own host key, kept across its boots.
Two guests for all of it (the sim side: tests/api/test_port_reservation.py)."""

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import websockets

from ..api.test_events import collect, sse_events
from ..support import Server, require_qemu, tiny_template
from .test_qemu_cli import cli_env, require_ssh, run_cli

pytestmark = pytest.mark.slow


async def ready(s: Server, vm_id: str) -> dict[str, Any]:
    vm: dict[str, Any] = (await s.client.get(f"/api/v1/vms/{vm_id}", params={"waitReady": "240"}, timeout=270)).json()
    assert vm["guestReady"] and vm["ssh"]["hostKey"], vm
    return vm


async def test_a_taken_ssh_port_is_re_picked_and_each_guest_has_its_own_host_key(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    require_ssh()
    s = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    env = cli_env(s, tmp_path)
    tpl = await tiny_template(s)
    base = {"templateId": tpl, "resources": {"ramMb": 256, "diskGb": 2}, "sshKeys": [key.with_suffix(".pub").read_text().strip()]}
    job = await s.create([{**base, "name": "port-a"}, {**base, "name": "port-b"}], timeout=60)
    assert job["state"] == "succeeded", job
    a_id, b_id = (t["resourceId"] for t in job["tasks"])
    a, b = await ready(s, a_id), await ready(s, b_id)
    # each guest its own host key, pinned by vmplane from the guest's console
    assert a["ssh"]["hostKey"].startswith("ssh-ed25519 ") and b["ssh"]["hostKey"].startswith("ssh-ed25519 ")
    assert a["ssh"]["hostKey"] != b["ssh"]["hostKey"]
    assert a["ssh"]["port"] != b["ssh"]["port"]

    async def ssh(name: str, *command: str) -> tuple[int, str, str]:
        return await run_cli(env, "vm", "ssh", name, "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", *command, timeout=120)

    code, out, err = await ssh("port-a", "uname -n")
    assert (code, out) == (0, "port-a\n"), err
    assert not (tmp_path / ".ssh" / "known_hosts").exists()  # checked against the pinned key, nothing learnt on trust

    tok = (await s.client.post(f"/api/v1/vms/{a_id}/console")).json()  # taken while it runs, used once it is stopped
    code, _, err = await run_cli(env, "vm", "stop", "port-a", timeout=120)
    assert code == 0, err
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        async with websockets.connect(s.url.replace("http", "ws") + tok["websocketPath"]):
            pass
    assert refused.value.response.status_code == 409 and b"port-a is stopped" in refused.value.response.body
    old = a["ssh"]["port"]
    stranger = socket.socket()
    try:
        stranger.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do (our ssh's TIME_WAIT is there)
        stranger.bind(("127.0.0.1", old))
        stranger.listen()
        # a stopped VM: no ssh to whoever holds its port now, and no console
        code, _, err = await ssh("port-a", "true")
        assert code == 1 and "port-a is stopped; start it with `vmplane vm start port-a`" in err, err
        r = await s.client.post(f"/api/v1/vms/{a_id}/console")
        assert r.status_code == 409 and "port-a is stopped" in r.json()["error"], r.text

        code, _, err = await run_cli(env, "vm", "start", "port-a", timeout=240)
        assert code == 0, err
        moved = await ready(s, a_id)
        new = moved["ssh"]["port"]
        assert moved["status"] == "running" and new not in (old, b["ssh"]["port"])
        assert moved["ssh"]["hostKey"] == a["ssh"]["hostKey"]  # the guest's key lives on its disk: the same across boots
        events = await collect(sse_events(s.client, {"types": "vm.port_changed"}, {"Last-Event-ID": "0"}), 1)
        body = events[0]["data"]["data"]
        assert events[0]["data"]["resource"] == a_id
        assert (body["previousHostPort"], body["hostPort"], body["guestPort"]) == (old, new, 22), body

        code, out, err = await ssh("port-a", "uname -n")
        assert (code, out) == (0, "port-a\n"), err
        # the pin is strict: B's key for A's port is refused
        kh = tmp_path / "wrong_known_hosts"
        kh.write_text(f"[127.0.0.1]:{new} {b['ssh']['hostKey']}\n")
        proc = subprocess.run(
            ["ssh", "-p", str(new), "-o", f"UserKnownHostsFile={kh}", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
             "-o", "BatchMode=yes", "-i", str(key), "-l", "root", "127.0.0.1", "true"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in proc.stderr, proc.stderr
    finally:
        stranger.close()
    for name in ("port-a", "port-b"):
        code, _, err = await run_cli(env, "vm", "delete", name, "--force", timeout=120)
        assert code == 0, err
