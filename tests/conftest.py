"""Shared fixtures (the helpers behind them live in tests/support.py)."""

import ipaddress
import os
import socket
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from fastapi.dependencies import models as fastapi_dependency_models

from vmplane import procfs

from .support import Server, make_settings, new_pg_database, sqlite_with_schema


def _local_names() -> set[str]:
    names = {"localhost", "localhost.localdomain", socket.gethostname()}
    try:
        with open("/etc/hosts") as f:
            for line in f:
                names.update(line.split("#", 1)[0].split()[1:])
    except OSError:
        pass
    return {n.lower() for n in names}


@pytest.fixture(autouse=True, scope="session")
def _no_dns_queries() -> Iterator[None]:
    """Tests reach nothing but this machine: the servers they run in-process resolve the URLs
    users give them (the outbound policy, a fuzzer's random webhook URLs), so names that
    /etc/hosts does not answer fail here as an unknown name would, without a query leaving."""
    real, local = socket.getaddrinfo, _local_names()

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is None or name.lower().rstrip(".") in local:
            return real(host, *args, **kw)
        try:
            ipaddress.ip_address(name.strip("[]").split("%", 1)[0])
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (tests resolve no names outside /etc/hosts)") from None
        return real(host, *args, **kw)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.getaddrinfo = real  # type: ignore[assignment]


def _kill_left_running(directory: str) -> list[list[str]]:
    """Kill the processes (QEMU guests, dnsmasq, servers) whose command line mentions
    `directory`; their argv (procfs.processes_mentioning never lists this process)."""
    killed = procfs.processes_mentioning(directory + os.sep)
    for pid, _argv in killed:
        procfs.kill(pid)
    return [argv for _pid, argv in killed]


@pytest.fixture(autouse=True)
def _no_processes_left(tmp_path: Any) -> Iterator[None]:
    """VMs outlive their control plane on purpose: kill what a test left running from its
    directory (QEMU guests, dnsmasq, servers) so it does not eat the CPU of later tests."""
    yield
    _kill_left_running(str(tmp_path))


@pytest.fixture(autouse=True, scope="module")
def _no_processes_left_by_the_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same after each module, for what module-scoped fixtures started in directories of
    their own (a guest left running there would slow every later test): no test process
    outlives its module, so whatever still runs from the run's temporary directory is killed,
    and named in a warning."""
    yield
    for argv in _kill_left_running(str(tmp_path_factory.getbasetemp())):
        warnings.warn(f"killed a process the module left running: {' '.join(argv)[:200]}", stacklevel=1)


@pytest.fixture(autouse=True)
def _no_apps_left() -> Iterator[None]:
    """FastAPI keeps, in module-level LRU caches of 4,096 entries, the endpoint and dependency
    functions it has classified; vmplane's endpoints are closures over their app, so each cache
    entry pins a whole app (runtime, store, five faces' pydantic schemas: ~100 MB) for the rest of
    the run. One server in a process is no leak; hundreds of in-process test servers grew the
    test process past 5 GB and its garbage collections to seconds each. Forget them after each test."""
    yield
    for name in ("_is_gen_callable_cached", "_is_async_gen_callable_cached", "_is_coroutine_callable_cached"):
        cached = getattr(fastapi_dependency_models, name, None)
        if cached is not None:
            cached.cache_clear()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database at the newest revision, on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{sqlite_with_schema(tmp_path / 'store.db')}"
    return await new_pg_database(schema=True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def empty_database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """An empty database, on each backend (for the tests of migrations)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return await new_pg_database()


@pytest.fixture
async def server_factory(tmp_path: Any) -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        nodes = overrides.pop("nodes", None)
        s = await Server(make_settings(tmp_path, **overrides), nodes).start()
        servers.append(s)
        return s

    yield start
    for s in reversed(servers):
        await s.stop()


@pytest.fixture
async def server(server_factory: Any) -> Server:
    return await server_factory()
