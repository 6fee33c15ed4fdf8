"""Guest readiness on a real guest (tiny-linux on the qemu driver): create → `waitReady` →
ready once the guest's boot is complete (agent + `cloud-init status` done), false again when
stopped and ready again after a start, and after a reboot, one `vm.guest_ready` event per boot; the SSH host key
the guest printed on its console is recorded and `vm ssh` holds the guest to it. One guest."""

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from ..api.test_events import collect, sse_events
from ..support import Server, qemu_processes_of, require_qemu, tiny_template
from .test_qemu_cli import cli_env, require_ssh, run_cli

pytestmark = pytest.mark.slow


async def vm_of(s: Server, vm_id: str, **params: Any) -> dict[str, Any]:
    r = await s.client.get(f"/api/v1/vms/{vm_id}", params=params, timeout=400)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_ready_after_boot_host_key_recorded_and_checked(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    require_ssh()
    s = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    key, fake = tmp_path / "id_ed25519", tmp_path / "fake_host"
    for k in (key, fake):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", k.name, "-f", str(k)], check=True)
    fake_pub = fake.with_suffix(".pub").read_text().split()
    # the guest prints its own host-key block on its console at boot, as cloud-init does; a
    # later block (here one the test made, printed by user-data) changes nothing: the first wins
    user_data = (
        "#!/bin/sh\n{ echo '-----BEGIN SSH HOST KEY KEYS-----'; echo 'not a key'; "
        f"echo '{fake_pub[0]} {fake_pub[1]} root@guest'; echo '-----END SSH HOST KEY KEYS-----'; }} >/dev/console\n"
    )
    tpl = await tiny_template(s)
    t0 = time.monotonic()
    r = await s.client.post("/api/v1/vms", json={
        "name": "rdy-guest", "templateId": tpl, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2},
        "sshKeys": [key.with_suffix(".pub").read_text().strip()], "cloudInit": {"userData": user_data},
    })  # fmt: skip
    assert r.status_code == 202, r.text
    vm_id = r.json()["vmIds"][0]
    try:
        vm = await vm_of(s, vm_id, waitReady="300")
        ready_after = time.monotonic() - t0
        print(f"\ncreate -> guestReady (tiny-linux, TCG): {ready_after:.1f} s")
        assert vm["status"] == "running" and vm["guestReady"] is True, vm
        log = (await s.client.get(f"/api/v1/vms/{vm_id}/console/log")).text
        assert "vmplane-tiny: boot complete" in log  # ready means the whole boot, user-data included
        assert vm["ssh"]["hostKey"].startswith("ssh-ed25519 ") and vm["ssh"]["hostKey"] != f"{fake_pub[0]} {fake_pub[1]}"
        assert f"{vm['ssh']['hostKey']} root@rdy-guest" in log  # from the console, comment dropped

        env = cli_env(s, tmp_path)
        code, out, err = await run_cli(
            env, "vm", "ssh", "rdy-guest", "-i", str(key), "--", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "true"
        )
        assert code == 0, (code, out, err)  # held to the pinned key, which is the guest's

        code, out, err = await run_cli(env, "vm", "stop", "rdy-guest", timeout=120)
        assert code == 0, err
        assert (await vm_of(s, vm_id))["guestReady"] is False
        t1 = time.monotonic()
        code, out, err = await run_cli(env, "vm", "start", "rdy-guest", timeout=400)  # waits for the guest
        assert code == 0 and "rdy-guest: guest ready" in err, err
        print(f"start -> guestReady (tiny-linux, TCG, through the CLI): {time.monotonic() - t1:.1f} s")
        assert (await vm_of(s, vm_id))["guestReady"] is True
        # a reboot: not ready from the moment it is asked for (the guest's own reboot takes a
        # while, its agent answering meanwhile) until the new boot is
        r = await s.client.post(f"/api/v1/vms/{vm_id}/reboot")
        await s.wait_job(r.json()["jobId"], timeout=120)
        assert (await vm_of(s, vm_id))["guestReady"] is False
        vm = await vm_of(s, vm_id, waitReady="300")
        assert vm["guestReady"] is True and vm["status"] == "running"
        events = await collect(sse_events(s.client, {"types": "vm.guest_ready"}, {"Last-Event-ID": "0"}), 3)
        assert [e["data"]["resource"] for e in events] == [vm_id] * 3  # once per boot
    finally:
        r = await s.client.delete(f"/api/v1/vms/{vm_id}")
        await s.wait_job(r.json()["jobId"], timeout=120)
    assert qemu_processes_of(vm_id) == []
