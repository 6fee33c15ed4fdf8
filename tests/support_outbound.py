"""Test support for the outbound policy: loopback HTTP servers that record every request they
get (a stand-in "metadata service", a redirecting mirror), a resolver patched in-process that
answers a name differently from one lookup to the next, and a guard that makes any connection
to an address outside 127.0.0.0/8 and ::1 raise inside the test process, so that a bug in the
policy cannot send a packet anywhere."""

import ipaddress
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

SECRET = "ami-secret-7f3k-AKIAXXXXMETADATA"
"""What the stand-in metadata service answers: it must never show up anywhere."""


class Recorder:
    """An HTTP server on `host` (a loopback address) answering every request with `status`,
    `headers` and `body`, and recording (method, path, Host header) of each."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, status: int = 200, body: bytes = SECRET.encode(), headers: dict[str, str] | None = None) -> None:
        self.hits: list[tuple[str, str, str]] = []
        self.status, self.body, self.headers = status, body, headers or {"Content-Type": "application/json"}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.hits.append((self.command, self.path, self.headers.get("Host", "")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self.send_response(recorder.status)
                for k, v in recorder.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                self.wfile.write(recorder.body)

            do_GET = do_POST = do_PUT = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def recorders() -> Any:
    made: list[Recorder] = []

    def make(*args: Any, **kw: Any) -> Recorder:
        made.append(Recorder(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


@pytest.fixture
def metadata(recorders: Any) -> Recorder:
    """A loopback "cloud metadata service" that records every request it gets."""
    return recorders(body=f'{{"token": "{SECRET}"}}'.encode())


class FakeDns:
    """socket.getaddrinfo for some names answers from a script: the n-th lookup of a name gets
    the n-th address given for it (the last one from then on); other names resolve for real."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.script: dict[str, list[str]] = {}
        self.lookups: dict[str, int] = {}

    def set(self, name: str, *addresses: str) -> None:
        self.script[name] = list(addresses)
        self.lookups[name] = 0

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in self.script:
            return self.real(host, port, family, type, proto, flags)
        n = self.lookups[name]
        self.lookups[name] = n + 1
        ip = ipaddress.ip_address(self.script[name][min(n, len(self.script[name]) - 1)])
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        sockaddr = (str(ip), int(port or 0)) if ip.version == 4 else (str(ip), int(port or 0), 0, 0)
        return [(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)]


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    dns = FakeDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    return dns


class Escaped(AssertionError):
    """A connection to an address outside loopback was attempted."""


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Connections to anything but 127.0.0.0/8 and ::1 raise (and are listed) instead of
    leaving the machine."""
    tried: list[Any] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
            if not ip.is_loopback:
                tried.append(address)
                raise Escaped(f"a connection to {address} was attempted")

    def connect(sock: socket.socket, address: Any) -> None:
        guard(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        guard(sock, address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return tried


PUBLIC = "93.184.215.14"
"""A public address the fake resolver hands out when a name must pass at request time; the
guard makes sure nothing ever connects to it."""
