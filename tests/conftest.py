"""Shared fixtures (the helpers behind them live in tests/support.py)."""

import os
from typing import Any, AsyncIterator, Iterator

import pytest

from vmplane.drivers.qemu import procfs

from .support import Server, make_settings, new_pg_database


@pytest.fixture(autouse=True)
def _no_processes_left(tmp_path: Any) -> Iterator[None]:
    """VMs outlive their control plane on purpose: kill what a test left running from its
    directory (QEMU guests, dnsmasq, servers) so it does not eat the CPU of later tests."""
    yield
    marker = str(tmp_path) + os.sep
    for pid, _argv in procfs.processes_mentioning(marker):
        if pid != os.getpid():
            procfs.kill(pid)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
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
