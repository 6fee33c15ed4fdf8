"""A FastVM client against real guests: plain httpx with a base URL and X-API-Key, against
`vmplane serve --driver qemu --face fastvm=…` — both at /compat/fastvm of the main listener
and at the root of the face's own listener. Two TCG guests in all (the source and its clone)."""

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from ..support import admin_key, free_port, require_qemu, serve, wait_ready

pytestmark = pytest.mark.slow


def running(c: httpx.Client, vm_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll GET /v1/vms/{id} until `running`, as the contract tells clients to after a 202."""
    deadline = time.monotonic() + timeout
    while True:
        vm = c.get(f"/v1/vms/{vm_id}").json()
        if vm["status"] == "running":
            return vm
        assert vm["status"] == "provisioning" and time.monotonic() < deadline, vm
        time.sleep(0.25)


def created(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (201, 202), r.text
    return r.json()


def sh(c: httpx.Client, vm_id: str, script: str) -> dict[str, Any]:
    r = c.post(f"/v1/vms/{vm_id}/exec", json={"command": ["sh", "-c", script], "timeoutSec": 30})
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
    return r.json()


def guest_pids(uuids: list[str]) -> list[int]:
    """QEMU processes of these VMs (each carries `-uuid <uuid>`)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "qemu-system" in cmd and any(u in cmd for u in uuids):
            found.append(int(proc.name))
    return found


def test_fastvm_client_on_real_guests(tmp_path: Path) -> None:
    require_qemu()
    port, face_port = free_port(), free_port()
    log = tmp_path / "server.log"
    # c1m2 asks for 2 GiB and 10 GiB per guest: overcommit lets small test machines hold two
    env = {"VMPLANE_CPU_OVERCOMMIT": "8", "VMPLANE_RAM_OVERCOMMIT": "8", "VMPLANE_DISK_OVERCOMMIT": "8"}
    proc = serve(tmp_path / "data", port, log, ["--driver", "qemu", "--accel", "tcg", "--face", f"fastvm=127.0.0.1:{face_port}"], env)
    uuids: list[str] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=120)
        key = {"X-API-Key": admin_key(tmp_path / "data")}
        c = httpx.Client(base_url=f"http://127.0.0.1:{port}/compat/fastvm", headers=key, timeout=120)
        root = httpx.Client(base_url=f"http://127.0.0.1:{face_port}", headers=key, timeout=120)  # drops the path

        vm = created(c.post("/v1/vms", json={"machineType": "c1m2", "name": "fastvm-e2e"}))
        uuids.append(vm["id"])
        vm = running(c, vm["id"])
        assert (vm["cpu"], vm["memoryMiB"], vm["diskGiB"], vm["machineName"], vm["sourceName"]) == (1, 2048, 10, "c1m2", "tiny-linux")
        out = sh(c, vm["id"], "uname -a")
        assert out["stdout"].startswith("Linux ") and out["timedOut"] is False, out
        assert int(sh(c, vm["id"], "awk '/^MemTotal:/ {print $2}' /proc/meminfo")["stdout"]) > 1800 * 1024  # 2 GiB
        sh(c, vm["id"], "grep -q ' /mnt/disk ' /proc/mounts && echo before-snapshot > /mnt/disk/proof && sync")

        # the serial console through the face's own listener, at the path it hands out
        tok = root.post(f"/v1/vms/{vm['id']}/console-token").json()
        with connect(f"ws://127.0.0.1:{face_port}{tok['websocketPath']}?session={tok['token']}") as ws:
            ws.send("echo console-$((40+2))\n")
            seen = b""
            deadline = time.monotonic() + 30
            while b"console-42" not in seen and time.monotonic() < deadline:
                msg = ws.recv(timeout=30)
                seen += msg if isinstance(msg, bytes) else msg.encode()
        assert b"console-42" in seen

        r = c.post("/v1/snapshots", json={"vmId": vm["id"], "name": "golden"})
        assert r.status_code == 201, r.text
        snap = r.json()
        assert snap["status"] == "ready" and snap["vmId"] == vm["id"] and snap["firewall"] == {"mode": "restricted", "ingress": []}

        clone = created(c.post("/v1/vms", json={"snapshotId": snap["id"], "name": "fastvm-clone"}))
        uuids.append(clone["id"])
        clone = running(c, clone["id"])
        assert clone["sourceName"] == "golden" and clone["diskGiB"] == 10
        assert sh(c, clone["id"], "cat /mnt/disk/proof")["stdout"] == "before-snapshot\n"

        # a restricted IPv6 policy, set through the root listener; IPv4 (exec) is untouched
        policy = {"mode": "restricted", "ingress": [{"protocol": "tcp", "portStart": 22, "sourceCidrs": ["2001:db8::/32"], "description": "ssh"}]}
        r = root.put(f"/v1/vms/{clone['id']}/firewall", json=policy)
        assert r.status_code == 200, r.text
        assert r.json()["firewall"] == {"mode": "restricted", "ingress": [{**policy["ingress"][0], "portEnd": 22}]}  # type: ignore[dict-item]
        assert root.get(f"/v1/vms/{clone['id']}").json()["firewall"] == r.json()["firewall"]
        assert sh(c, clone["id"], "echo still-reachable")["stdout"] == "still-reachable\n"

        q = root.get("/v1/org/quotas").json()
        assert q["usage"] == {"vcpu": 2, "memoryMiB": 4096, "diskGiB": 20, "snapshotCount": 1}, q
        assert all(q["limits"][k] >= q["usage"][k] for k in q["usage"])
        assert sorted(v["name"] for v in root.get("/v1/vms").json()) == ["fastvm-clone", "fastvm-e2e"]

        for client, target in ((root, clone), (c, vm)):
            assert client.delete(f"/v1/vms/{target['id']}").json() == {"id": target["id"], "deleted": True}
        assert c.delete(f"/v1/snapshots/{snap['id']}").json() == {"id": snap["id"], "deleted": True}
        assert c.get("/v1/vms").json() == [] and c.get("/v1/snapshots").json() == []
        assert guest_pids(uuids) == []
    finally:
        proc.kill()
        proc.wait()
        for pid in guest_pids(uuids):  # never leave a guest running after a failed test
            os.kill(pid, signal.SIGKILL)

