"""`vmplane serve`: the main listener and, for each `--face NAME=HOST:PORT`, a listener that
serves that face at its root, all in one process around one application; and the uvicorn
configuration every listener (and the tests' servers) runs with: a header-read timeout,
`limit_concurrency`, and a shutdown that tells open streams to go away first."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvicorn

from ..api.faces import FACES, listener_app
from ..config import Settings
from ..errors import Unauthorized
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
    as_key_file: Path | None = None
    """`as-key-file=PATH`: requests without credentials act as the API key in PATH"""
    allow_remote: bool = False
    """`allow-remote`: as-key-file on an address other than loopback, knowingly"""
    as_key: str | None = field(default=None, repr=False)
    """the key read from `as_key_file` (read_key_file)"""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_face(value: str) -> Listener:
    """`NAME=HOST:PORT[,as-key-file=PATH][,allow-remote]` (HOST may be `[v6]`; PATH has no
    comma); ValueError says what is wrong."""
    value, *options = value.split(",")
    key_file: Path | None = None
    allow_remote = False
    for option in options:
        opt, sep, arg = option.partition("=")
        if opt == "as-key-file" and sep and arg and key_file is None:
            key_file = Path(arg)
        elif option == "allow-remote":
            allow_remote = True
        else:
            raise ValueError(f"{option!r}: the options of a face listener are as-key-file=PATH (once) and allow-remote")
    if allow_remote and key_file is None:
        raise ValueError("allow-remote goes with as-key-file=PATH (it allows that key on an address other than loopback)")
    name, sep, address = value.partition("=")
    if not sep or not name:
        raise ValueError(f"{value!r} is not NAME=HOST:PORT")
    if name not in FACES:
        raise ValueError(f"unknown face {name!r}; known: {', '.join(FACES)}")
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: the address must be HOST:PORT with a port from 1 to 65535")
    return Listener(name, host, int(port), key_file, allow_remote)


KEY_FILE_MAX = 4096


def read_key_file(path: Path) -> str:
    """The API key in `path`, as `vmplane serve` writes one (admin-api-key): a regular file of
    the user this process runs as (or root) that no one else may read or write (mode 0600 or
    stricter, as ssh asks of a private key), holding one key on one line. ValueError says
    what is wrong."""
    try:  # O_NONBLOCK: a FIFO does not hang the start; fstat below refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"the key file {path} is not a regular file")
        if st.st_uid not in (os.geteuid(), 0):
            raise ValueError(f"the key file {path} belongs to uid {st.st_uid}, neither the user vmplane runs as ({os.geteuid()}) nor root")
        if st.st_mode & 0o077:
            raise ValueError(f"the key file {path} may be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        data = os.read(fd, KEY_FILE_MAX + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    key = data.strip()
    if len(data) > KEY_FILE_MAX or not key or not all(0x21 <= b < 0x7F for b in key):
        raise ValueError(f"the key file {path} must hold one API key on one line (printable ASCII, at most {KEY_FILE_MAX} bytes)")
    return key.decode("ascii")


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


def ready_lines(main: Listener, faces: list[Listener], settings: Settings) -> list[str]:
    """What `vmplane serve` says once it answers (the lifespan has started the runtime, the
    tiny image is built, the nodes are registered): where the web console is, where the key
    is, and, when they are not the CLI's defaults, how the CLI in another shell finds both."""
    url = f"http://{main.address}"
    key_file = settings.data_dir / "admin-api-key"
    if settings.insecure_no_auth:
        key = "no API key needed: --insecure-no-auth"
    elif key_file.is_file():
        key = f"API key in {key_file}"
    else:  # made by the first start of another data dir (replicas on one database)
        key = f"no key file in {settings.data_dir}: the owner key was written by the first start"
    lines = [f"vmplane is ready: {url}/ui/ ({key})"]
    lines += [
        f"face {lis.face} at the root of http://{lis.address}"
        + (f", acting as the key in {lis.as_key_file} for requests without credentials" if lis.as_key else "")
        for lis in faces
    ]
    env = []
    if url != "http://127.0.0.1:8080":
        env.append(f"VMPLANE_URL={url}")
    if not settings.insecure_no_auth and key_file.is_file() and _resolved(settings.data_dir) != _resolved(Path(".vmplane")):
        env.append(f"VMPLANE_DATA_DIR={_resolved(settings.data_dir)}")
    if env:
        lines.append(f"for the CLI in another shell: export {' '.join(env)}")
    return lines


def _resolved(path: Path) -> Path:
    return path.expanduser().resolve()


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
    for lis, _ in faces:
        if lis.as_key is not None:
            try:
                await rt.tenancy.principal_for_key(lis.as_key)
            except Unauthorized as exc:
                logging.getLogger("vmplane").error("--face %s: the key in %s does not authenticate (%s); stopping", lis.face, lis.as_key_file, exc.message)
                main.should_exit = True
                await main_task
                return False
    others += [(_FaceServer(server_config(listener_app(app, lis.face or "", lis.as_key), rt.settings, log_level, lifespan="off")), sock) for lis, sock in faces]
    tasks += [asyncio.create_task(server.serve(sockets=[sock])) for server, sock in others]
    for line in ready_lines(listeners[0][0], [lis for lis, _ in faces], rt.settings):
        logging.getLogger("vmplane").info("%s", line)
    try:
        await main_task
    finally:
        await stop_faces()
    return True
