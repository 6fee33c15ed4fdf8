"""A Volant client against real guests: plain httpx on the root of `vmplane serve --driver qemu
--face volant=…` (Volant's CLI uses absolute paths), with the key in X-Volant-API-Key. A
deployment of 3 tiny TCG guests (256 MiB each) reaches 3 ready, a deleted replica is
recreated under its name, a scale to 1 removes the highest; the SSE stream shows it all in
Volant's format."""

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import admin_key, free_port, require_qemu, serve, wait_ready, wait_until

pytestmark = pytest.mark.slow


def qemu_alive(pid: int) -> bool:
    try:
        return "qemu-system" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def guest_mem_kib(native: httpx.Client, name: str, timeout: float = 180) -> int:
    """MemTotal inside the guest, read through its agent once it has booted."""
    vm_id = native.get("/api/v1/vms", params={"name": name}).json()["items"][0]["id"]

    def read() -> int | None:
        r = native.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["awk", "/^MemTotal:/ {print $2}", "/proc/meminfo"], "timeoutSec": 10})
        return int(r.json()["stdout"]) if r.status_code == 200 and r.json()["exitCode"] == 0 else None

    return wait_until(read, timeout, f"{name} to boot", every=0.5)


def guest_cmdline(native: httpx.Client, name: str) -> str:
    vm_id = native.get("/api/v1/vms", params={"name": name}).json()["items"][0]["id"]
    r = native.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["cat", "/proc/cmdline"], "timeoutSec": 10})
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
    return r.json()["stdout"]


def test_deployment_of_real_guests_and_the_event_stream(tmp_path: Path) -> None:
    require_qemu()
    port, face_port = free_port(), free_port()
    env = {"VMPLANE_CPU_OVERCOMMIT": "8", "VMPLANE_DISK_OVERCOMMIT": "8"}  # 3 guests on 2 cores
    proc = serve(tmp_path / "data", port, tmp_path / "server.log", ["--driver", "qemu", "--accel", "tcg", "--face", f"volant=127.0.0.1:{face_port}"], env)
    lines: list[str] = []
    stop = threading.Event()
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, timeout=180)
        key = admin_key(tmp_path / "data")
        c = httpx.Client(base_url=f"http://127.0.0.1:{face_port}", headers={"X-Volant-API-Key": key}, timeout=120)
        assert c.get("/healthz").json() == {"status": "ok"}

        def listen() -> None:
            with httpx.Client(timeout=httpx.Timeout(10, read=None)) as s, s.stream("GET", f"http://127.0.0.1:{face_port}/api/v1/events/vms", params={"api_key": key}) as r:
                for line in r.iter_lines():
                    lines.append(line)
                    if stop.is_set():
                        return

        def listen_quietly() -> None:
            try:
                listen()
            except httpx.HTTPError:  # the server went away at the end
                pass

        threading.Thread(target=listen_quietly, daemon=True).start()
        wait_until(lambda: lines, 10, "the stream to open", every=0.5)

        t0 = time.monotonic()
        r = c.post("/api/v1/deployments", json={"name": "web", "replicas": 3, "config": {"resources": {"cpu_cores": 1, "memory_mb": 256}, "kernel_cmdline": "volant.deployment=web"}})
        assert r.status_code == 201, r.text

        def ready(n: int) -> Callable[[], Any]:
            def check() -> Any:
                d = c.get("/api/v1/deployments/web").json()
                vms = c.get("/api/v1/vms").json()
                ok = d["ready_replicas"] == n and len(vms) == n and all(v["status"] == "running" for v in vms)
                return vms if ok else None

            return check

        vms = wait_until(ready(3), 240, "3 ready replicas", every=0.5)
        print(f"[timing] 3 replicas running {time.monotonic() - t0:.1f} s after the create")
        assert [v["name"] for v in sorted(vms, key=lambda v: v["name"])] == ["web-1", "web-2", "web-3"]
        for v in vms:
            assert v["memory_mb"] == 256 and isinstance(v["pid"], int) and qemu_alive(v["pid"]) and Path(v["serial_socket"]).exists(), v
        web2 = next(v for v in vms if v["name"] == "web-2")
        native = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=60)
        for name in ("web-1", "web-2", "web-3"):  # real guests that booted, with the config's memory
            assert 200 * 1024 < guest_mem_kib(native, name) <= 256 * 1024
        assert "volant.deployment=web" in guest_cmdline(native, "web-1")  # the config's kernel_cmdline reached the guest
        assert vms[0]["kernel_cmdline"].endswith(" volant.deployment=web")
        print(f"[timing] 3 guests booted (agent answers) {time.monotonic() - t0:.1f} s after the create")

        # a replica deleted by hand is recreated under its name (a new VM: new id, new process)
        t0 = time.monotonic()
        assert c.delete("/api/v1/vms/web-2").status_code == 204
        assert not qemu_alive(web2["pid"])
        vms = wait_until(lambda: (v := ready(3)()) and next(x for x in v if x["name"] == "web-2")["id"] != web2["id"] and v, 180, "web-2 recreated", every=0.5)
        print(f"[timing] web-2 recreated and running {time.monotonic() - t0:.1f} s after its delete")
        assert 200 * 1024 < guest_mem_kib(native, "web-2") <= 256 * 1024

        # scale to 1: the highest go first
        assert c.patch("/api/v1/deployments/web", json={"replicas": 1}).json()["desired_replicas"] == 1
        vms = wait_until(ready(1), 120, "1 replica", every=0.5)
        assert [v["name"] for v in vms] == ["web-1"]
        gone = [v["pid"] for v in vms if v["name"] != "web-1"]
        assert not any(qemu_alive(p) for p in gone)

        # a config change of resources: recorded at once, taken by the guest at its restart
        r = c.patch("/api/v1/vms/web-1/config", json={"resources": {"memory_mb": 320}})
        assert r.status_code == 200 and r.json()["restart_required"] is True and r.json()["version"] == 2, r.text
        restarted = c.post("/api/v1/vms/web-1/restart")
        assert restarted.status_code == 200 and restarted.json()["memory_mb"] == 320 and restarted.json()["status"] == "running", restarted.text
        assert 256 * 1024 < guest_mem_kib(native, "web-1") <= 320 * 1024
        assert [h["version"] for h in c.get("/api/v1/vms/web-1/config/history").json()] == [2, 1]
        assert [v["name"] for v in c.get("/api/v1/vms").json()] == ["web-1"]  # restarted, not replaced

        time.sleep(1)
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: ")]
        kinds = [x[7:] for x in lines if x.startswith("event: ")]
        assert kinds == [e["type"] for e in events] and not any(x.startswith("id:") for x in lines)
        seen = [(e["type"], e["name"]) for e in events]
        for name in ("web-1", "web-2", "web-3"):
            assert ("VM_CREATED", name) in seen and ("VM_RUNNING", name) in seen, name
        assert seen.count(("VM_DELETED", "web-2")) == 2 and ("VM_DELETED", "web-3") in seen  # by hand, then the scale-down
        assert seen.count(("VM_CREATED", "web-2")) == 2
        running = [e for e in events if e["type"] == "VM_RUNNING"]
        assert all(e["status"] == "running" and e["timestamp"].endswith("Z") for e in running)
        assert any(isinstance(e.get("pid"), int) for e in running)

        assert c.delete("/api/v1/deployments/web").status_code == 204
        wait_until(lambda: c.get("/api/v1/vms").json() == [], 60, "the last replica deleted", every=0.5)
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
