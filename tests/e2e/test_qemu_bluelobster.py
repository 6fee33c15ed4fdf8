"""A Blue Lobster client against a real guest: plain httpx with a base URL and X-API-Key,
against `vmplane serve --driver qemu` at /compat/bluelobster. One TCG guest: launched with an
SSH key, power-cycled, backed up and restored, renamed, firewalled, measured, billed, deleted.
The native API is used only to look inside the guest (exec)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import admin_key, free_port, require_qemu, serve, wait_ready
from .test_qemu_fastvm import guest_pids

pytestmark = pytest.mark.slow

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBluelobsterE2eTestKeyBluelobsterE2eTestKey1 e2e@test"
OFFERINGS = """
[[regions]]
name = "us-east-dev"
description = "the test machine"

[[instance_types]]
name = "v1_cpu_tiny"
vcpus = 1
memory_gib = 1
storage_gib = 10
price_cents_per_hour = 2
"""


def task_done(c: httpx.Client, task_id: str, timeout: float = 240) -> dict[str, Any]:
    """Poll GET /api/v1/tasks/{id} as the contract tells clients to."""
    deadline = time.monotonic() + timeout
    while True:
        t = c.get(f"/api/v1/tasks/{task_id}").json()
        if t["status"] in ("COMPLETED", "FAILED"):
            assert t["status"] == "COMPLETED", t
            return t
        assert time.monotonic() < deadline, t
        time.sleep(0.5)


def sh(native: httpx.Client, vm: str, script: str) -> str:
    r = native.post(f"/api/v1/vms/{vm}/exec", json={"command": ["sh", "-c", script], "timeoutSec": 60})
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
    return r.json()["stdout"]


def test_bluelobster_client_on_a_real_guest(tmp_path: Path) -> None:
    require_qemu()
    port = free_port()
    log = tmp_path / "server.log"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "offerings.toml").write_text(OFFERINGS)
    proc = serve(tmp_path / "data", port, log, ["--driver", "qemu", "--accel", "tcg"])
    uuids: list[str] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120)
        key = {"X-API-Key": admin_key(tmp_path / "data")}
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}/compat/bluelobster", headers=key, timeout=120)
        native = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=key, timeout=120)

        avail = c.get("/api/v1/instances/available").json()["data"]
        assert [r["name"] for r in avail[0]["regions_with_capacity_available"]] == ["us-east-dev"]
        r = c.post("/api/v1/instances/launch-instance",
                   json={"region": "us-east-dev", "instance_type": "v1_cpu_tiny", "username": "ubuntu", "ssh_key": KEY, "name": "bl-e2e"})  # fmt: skip
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        vm = data["instance_ids"][0]
        uuids.append(vm)
        task_done(c, data["task_id"])
        details = c.get(f"/api/v1/instances/{vm}").json()
        assert details["power_status"] == "running" and details["template_name"] == "TINY-LINUX" and details["ip_address"]
        # the guest installs keys from its NoCloud seed while it boots (the agent answers before)
        assert KEY in sh(native, vm, "for i in $(seq 120); do [ -s /root/.ssh/authorized_keys ] && break; sleep 0.5; done; cat /root/.ssh/authorized_keys")
        sh(native, vm, "grep -q ' /mnt/disk ' /proc/mounts && echo before-backup > /mnt/disk/proof && sync")

        r = c.post(f"/api/v1/instances/{vm}/power-cycle")
        assert r.status_code == 200, r.text
        task_done(c, r.json()["task_id"])
        assert c.get(f"/api/v1/instances/{vm}").json()["power_status"] == "running"
        assert sh(native, vm, "cat /mnt/disk/proof") == "before-backup\n"

        r = c.post(f"/api/v1/instances/{vm}/backup")
        assert r.status_code == 200, r.text
        volid = r.json()["volid"]
        task_done(c, r.json()["task_id"])
        assert [b["volid"] for b in c.get(f"/api/v1/instances/{vm}/backups").json()["backups"]] == [volid]
        sh(native, vm, "echo after-backup > /mnt/disk/proof && sync")
        r = c.post(f"/api/v1/instances/{vm}/restore", json={"backup_volid": volid})
        assert r.status_code == 200, r.text
        task_done(c, r.json()["task_id"])
        assert sh(native, vm, "cat /mnt/disk/proof") == "before-backup\n"

        r = c.put(f"/api/v1/instances/{vm}/rename", json={"name": "bl-e2e-renamed"})
        assert r.status_code == 200 and r.json()["new_name"] == "bl-e2e-renamed", r.text
        r = c.post(f"/api/v1/instances/{vm}/firewall/rules", json={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH access"})
        assert r.status_code == 200 and r.json()["rule"]["pos"] == 0, r.text
        assert c.get(f"/api/v1/instances/{vm}/firewall").json()["rules"][0]["dport"] == "22"
        assert sh(native, vm, "echo still-reachable") == "still-reachable\n"

        st = c.get(f"/api/v1/instances/{vm}/stats").json()
        assert st["status"] == "running" and st["memory"]["used_bytes"] > 0 and st["uptime_seconds"] >= 0, st
        now = time.time()
        log_ = c.post("/api/v1/instances/log", json={"start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3600)),
                                                    "end_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 60))}).json()  # fmt: skip
        (rec,) = log_["instances"]
        assert rec["uuid"] == vm and rec["price_cents_per_hour"] == 2 and rec["total_hours_billed"] > 0

        r = c.delete(f"/api/v1/instances/{vm}")
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        assert c.get(f"/api/v1/instances/{vm}").status_code == 404
        assert guest_pids(uuids) == []
    finally:
        proc.kill()
        proc.wait()
        for pid in guest_pids(uuids):  # never leave a guest running after a failed test
            os.kill(pid, signal.SIGKILL)
