"""Shared fixtures (the helpers behind them live in tests/support.py)."""

from typing import Any, AsyncIterator

import pytest

from .support import Server, make_settings, new_pg_database


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
