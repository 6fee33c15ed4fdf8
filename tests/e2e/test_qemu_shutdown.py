"""SIGTERM with a real guest's serial console open: `vmplane serve --driver qemu` with one tiny
guest, its console WebSocket, an event stream (SSE) and a `?waitReady=` long poll open, is
SIGTERMed. The console closes with 1001 (going away) and says why, the SSE stream's last event
says the server is going away and the response ends, the long poll answers the VM as it is, the process is gone well within 30 s (systemd's SIGKILL comes at 90 s),
its log says what it ended and that the guest keeps running on its node, and the guest does
(VMs outlive the control plane). tests/security/test_serve_limits.py does the same for event
WebSockets and HyperSDK's /ws on the sim driver."""

import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ..support import admin_key, free_port, qemu_processes_of, require_qemu, serve, wait_ready, wait_until
from .test_qemu_network import stop_server

pytestmark = pytest.mark.slow


def test_sigterm_closes_a_guest_console_1001_and_ends_sse(tmp_path: Path) -> None:
    require_qemu()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data, log = tmp_path / "data", tmp_path / "server.log"
    proc = serve(data, port, log, ["--driver", "qemu", "--accel", "tcg", "--log-level", "info"])
    stack = contextlib.ExitStack()
    try:
        wait_ready(url, proc, timeout=120)
        headers = {"X-API-Key": admin_key(data)}
        api = httpx.Client(base_url=f"{url}/api/v1", headers=headers, timeout=30)
        tiny = next(t for t in api.get("/templates").json()["items"] if t["name"] == "tiny-linux")
        r = api.post("/vms", json={"name": "going", "templateId": tiny["id"]})
        assert r.status_code == 202, r.text
        vm_id = r.json()["vmIds"][0]
        deadline = time.monotonic() + 120
        while (vm := api.get(f"/vms/{vm_id}").json())["status"] != "running":
            assert time.monotonic() < deadline and vm["status"] not in ("error", "stopped"), vm
            time.sleep(0.2)
        node = vm["nodeId"]

        sse: list[str] = []
        sse_ended = threading.Event()

        def follow() -> None:
            with httpx.stream("GET", f"{url}/api/v1/events", headers=headers, timeout=httpx.Timeout(5, read=None)) as resp:
                sse.extend(resp.iter_lines())
            sse_ended.set()

        threading.Thread(target=follow, daemon=True).start()
        polled: list[httpx.Response] = []  # a long poll for the guest's readiness (it boots under TCG for seconds yet)
        threading.Thread(target=lambda: polled.append(api.get(f"/vms/{vm_id}", params={"waitReady": "60"})), daemon=True).start()
        token = api.post(f"/vms/{vm_id}/console").json()
        console = stack.enter_context(connect(f"ws://127.0.0.1:{port}{token['websocketPath']}", open_timeout=10))
        console.send(b"\r")  # the guest's console is live: a key goes to it
        wait_until(lambda: sse, 10, "the SSE stream open")
        time.sleep(0.5)  # the long poll is waiting
        assert not sse_ended.is_set() and sse[0].startswith("retry:"), sse
        assert polled == [], "the guest was ready before the test could stop the server"

        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                console.recv(timeout=30)  # guest output, until the server closes it
        assert closed.value.rcvd is not None, "the server did not close the console"
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "the server is shutting down")
        assert sse_ended.wait(30), "the SSE stream did not end"
        last = json.loads(next(line for line in reversed(sse) if line.startswith("data:"))[5:])
        assert last == {"reason": "the server is shutting down", "goingAway": True}, sse[-4:]
        proc.wait(30)
        assert len(polled) == 1 and polled[0].status_code == 200, polled  # answered with the VM as it was
        assert polled[0].json()["guestReady"] is False, polled[0].json()
        took = time.monotonic() - start
        assert took < 30, took
        assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
        out = log.read_text()
        assert "shutting down: ending 2 open stream(s) of clients (1 console(s))" in out, out
        assert f"stopping: 1 VM keeps running on {node} (re-attached at the next start)" in out, out
        assert qemu_processes_of(vm_id), "the guest should outlive the control plane"
        print(f"SIGTERM to exit with a console and an event stream open: {took:.2f} s")
    finally:
        stack.close()
        stop_server(proc, data)  # then every process naming the data dir: the guest
