"""Slow clients, SIGTERM with streams open, and keys in logs, against a real `vmplane serve`
process (its output captured)."""

import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from ..support import admin_key, free_port, serve, wait_ready

pytestmark = pytest.mark.slow

LIMITS = {
    "VMPLANE_HEADER_TIMEOUT_SECONDS": "2", "VMPLANE_BODY_TIMEOUT_SECONDS": "2", "VMPLANE_GRACEFUL_SHUTDOWN_SECONDS": "5",
    "VMPLANE_LIMIT_CONCURRENCY": "16",
}  # fmt: skip


class Served:
    def __init__(self, tmp: Path, env: dict[str, str] | None = None, face: bool = False) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        self.data = tmp / "data"
        args = ["--driver", "sim", "--log-level", "info"]
        if face:
            self.face_port = free_port()
            args += ["--face", f"hypersdk=127.0.0.1:{self.face_port}"]
        self.proc = serve(self.data, self.port, self.log, args, env={**LIMITS, **(env or {})})
        wait_ready(self.url, self.proc)
        self.key = admin_key(self.data)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    s = Served(tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


def _trickle(port: int, data: bytes, every: float, give_up: float) -> tuple[bytes, float, int]:
    """Send `data` one byte every `every` seconds; returns what the server answered, when
    (seconds from the start) it closed the connection, and how many bytes were sent."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(every)
    start = time.monotonic()
    got, sent = b"", 0
    try:
        for i in range(len(data)):
            try:
                sock.sendall(data[i : i + 1])
                sent += 1
            except OSError:
                break
            try:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            except TimeoutError:
                pass
            if time.monotonic() - start > give_up:
                break
        else:  # all sent: wait for the answer
            sock.settimeout(give_up)
            while chunk := sock.recv(4096):
                got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sock.close()
    return got, time.monotonic() - start, sent


def test_headers_sent_one_byte_at_a_time_are_cut_off(served: Served) -> None:
    request = b"GET /api/v1/vms HTTP/1.1\r\nHost: x\r\nX-API-Key: " + served.key.encode() + b"\r\n\r\n"
    got, after, sent = _trickle(served.port, request, every=0.5, give_up=20)
    assert got.startswith(b"HTTP/1.1 408"), got
    assert 1.5 < after < 5, after  # the 2 s header deadline, not the client's pace
    assert sent < len(request)
    # on a kept-alive connection too: a first request, then the next one trickled
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while not first.endswith(b"}"):  # the whole first answer (headers and body)
        first += sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")
    start = time.monotonic()
    sock.settimeout(0.5)
    answer = b""
    for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
        try:
            sock.sendall(bytes([byte]))
            answer += sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer:
            break
    assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5, answer
    sock.close()
    assert httpx.get(f"{served.url}/readyz").status_code == 200  # the server is fine


def test_a_body_sent_one_byte_at_a_time_is_cut_off(served: Served) -> None:
    body = json.dumps({"name": "slow"}).encode() + b" " * 40
    head = (
        f"POST /api/v1/vms HTTP/1.1\r\nHost: x\r\nX-API-Key: {served.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(head)
    start = time.monotonic()
    got = b""
    sock.settimeout(0.5)
    for byte in body:
        try:
            sock.sendall(bytes([byte]))
            got += sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if got:
            break
    sock.close()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert time.monotonic() - start < 5
    vms = httpx.get(f"{served.url}/api/v1/vms", headers={"X-API-Key": served.key}).json()["items"]
    assert vms == []  # nothing was created


def test_connections_beyond_limit_concurrency_get_503(served: Served) -> None:
    held = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(16)]
    try:
        r = httpx.get(f"{served.url}/api/v1/vms", headers={"X-API-Key": served.key})
        assert r.status_code == 503, r.text
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"{served.url}/api/v1/vms", headers={"X-API-Key": served.key}).status_code == 200


def test_api_key_in_a_websocket_url_never_reaches_the_log(served: Served) -> None:
    base = served.url.replace("http", "ws")
    with connect(f"{base}/api/v1/events/ws?apiKey={served.key}&types=vm.*") as ws:  # an old client
        assert json.loads(ws.recv())["kind"] == "status"
    with connect(f"{base}/compat/hypersdk/ws?api_key={served.key}") as ws:
        assert json.loads(ws.recv())["type"] == "status"
    ticket = httpx.post(f"{served.url}/api/v1/ws-tickets", headers={"X-API-Key": served.key}).json()["ticket"]
    with connect(f"{base}/api/v1/events/ws?wsTicket={ticket}") as ws:
        assert json.loads(ws.recv())["kind"] == "status"
    with pytest.raises(Exception):  # a refused one is logged too
        with connect(f"{base}/api/v1/events/ws?apiKey=vmp_guessed{served.key[-6:]}") as ws:
            ws.recv()
    time.sleep(0.5)
    out = served.output()
    assert "/api/v1/events/ws?apiKey=[redacted]&types=vm.*" in out  # uvicorn did log the line...
    assert served.key not in out and served.key[4:] not in out  # ...never the key
    assert ticket not in out and f"vmp_guessed{served.key[-6:]}" not in out


def test_sigterm_ends_open_streams_and_exits_within_30s(tmp_path: Path) -> None:
    s = Served(tmp_path, face=True)
    stack = contextlib.ExitStack()
    try:
        headers = {"X-API-Key": s.key}
        sse_lines: list[str] = []
        sse_ended = threading.Event()

        def follow() -> None:  # as `vmplane events` does
            with httpx.stream("GET", f"{s.url}/api/v1/events", headers=headers, timeout=httpx.Timeout(5, read=None)) as r:
                for line in r.iter_lines():
                    sse_lines.append(line)
            sse_ended.set()

        threading.Thread(target=follow, daemon=True).start()
        ws = stack.enter_context(connect(s.url.replace("http", "ws") + "/api/v1/events/ws", additional_headers=headers))
        assert json.loads(ws.recv())["kind"] == "status"
        face_ws = stack.enter_context(connect(f"ws://127.0.0.1:{s.face_port}/ws", additional_headers=headers))  # HyperSDK's, on its own listener
        assert json.loads(face_ws.recv())["type"] == "status"
        time.sleep(0.5)
        assert sse_lines and sse_lines[0].startswith("retry:")
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        codes = []
        for conn in (ws, face_ws):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    conn.recv(timeout=30)
            codes.append(closed.value.rcvd.code if closed.value.rcvd else None)
        assert codes == [1001, 1001], codes  # going away
        assert sse_ended.wait(30)  # the SSE stream ended
        assert any("shutting down" in line for line in sse_lines), sse_lines
        s.proc.wait(30)
        took = time.monotonic() - start
        assert took < 30, took
        assert s.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled, as `uvicorn.run` does
        out = s.output()
        assert "stopping: no VMs keep running on this host" in out and "ending 3 open stream(s) of clients (0 console(s))" in out
        for port in (s.port, s.face_port):  # every listener is closed
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
    finally:
        stack.close()
        s.stop()
