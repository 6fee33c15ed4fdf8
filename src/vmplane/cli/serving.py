"""`vmplane serve`: the main listener and, for each `--face NAME=HOST:PORT`, a listener that
serves that face at its root, all in one process around one application; and the uvicorn
configuration every listener (and the tests' servers) runs with: a header-read timeout,
`limit_concurrency`, and a shutdown that tells open streams to go away first."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from ..api.faces import FACES, listener_app
from ..config import Settings
from ..httpproto import header_timeout

if TYPE_CHECKING:
    from ..runtime import Runtime

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Listener:
    face: str | None
    """None: the main listener (every face under its prefix)"""
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_face(value: str) -> Listener:
    """`NAME=HOST:PORT` (HOST may be `[v6]`); ValueError says what is wrong."""
    name, sep, address = value.partition("=")
    if not sep or not name:
        raise ValueError(f"{value!r} is not NAME=HOST:PORT")
    if name not in FACES:
        raise ValueError(f"unknown face {name!r}; known: {', '.join(FACES)}")
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the address must be HOST:PORT with a port from 1 to 65535")
    return Listener(name, host, int(port))


def bind(listener: Listener) -> socket.socket:
    """A listening socket, or OSError naming the address."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(listener.host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.getaddrinfo(listener.host, listener.port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listener.host, listener.port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listener.address}: {exc.strerror or exc}") from None
    return sock


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a server's coroutine on uvloop, as `uvicorn.run` would: uvicorn's `Server.serve`
    inside a plain `asyncio.run` gets the stock event loop, which served a GET of one VM at a
    quarter of the rate (361 against 1,496 requests/s)."""
    import uvloop

    return uvloop.run(coro)


def server_config(app: Any, settings: Settings, log_level: str = "warning", **kw: Any) -> uvicorn.Config:
    """The uvicorn configuration of every vmplane listener: headers within
    `header_timeout_seconds`, at most `limit_concurrency` connections and requests at once
    (503 beyond), `graceful_shutdown_seconds` for running requests to finish on shutdown, no
    access log (request metrics are in /metrics)."""
    return uvicorn.Config(
        app, log_level=log_level, access_log=False, http=header_timeout(settings.header_timeout_seconds),
        limit_concurrency=settings.limit_concurrency,
        # uvicorn annotates an int, but hands the value to asyncio.wait_for, which takes a float
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


class Server(uvicorn.Server):
    """The main listener: on shutdown it first tells the runtime's open streams to go away
    (they end at once rather than hold the shutdown up), then runs `before_shutdown` (the face
    listeners stop), then uvicorn's own shutdown: running requests get
    `graceful_shutdown_seconds`, then the lifespan stops the runtime."""

    def __init__(self, config: uvicorn.Config, rt: Runtime, before_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self.rt = rt
        self.before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:  # no new connections while the streams end
            server.close()
        try:
            await self.rt.go_away()
        except Exception:
            logging.getLogger("vmplane").exception("ending the open streams failed")
        if self.before_shutdown is not None:
            await self.before_shutdown()
        await super().shutdown(sockets)


class _FaceServer(uvicorn.Server):
    """A face's listener: the main server owns signals (and the runtime's lifespan)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_all(app: Any, listeners: list[tuple[Listener, socket.socket]], log_level: str) -> bool:
    """Serve until the main server is told to stop (SIGINT/SIGTERM); face listeners start once
    the main one is up (its lifespan starts the runtime) and are stopped with it, before the
    runtime stops. False if the main server never started (its lifespan failed)."""
    (_, main_sock), *faces = listeners
    rt = app.state.rt
    others: list[tuple[_FaceServer, socket.socket]] = []
    tasks: list[asyncio.Task[None]] = []

    async def stop_faces() -> None:
        for server, _ in others:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)

    main = Server(server_config(app, rt.settings, log_level), rt, stop_faces)
    main_task = asyncio.create_task(main.serve(sockets=[main_sock]))
    while not main.started:
        if main_task.done():
            main_task.result()
            return False
        await asyncio.sleep(0.05)
    others += [(_FaceServer(server_config(listener_app(app, lis.face or ""), rt.settings, log_level, lifespan="off")), sock) for lis, sock in faces]
    tasks += [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in others]
    try:
        await main_task
    finally:
        await stop_faces()
    return True
