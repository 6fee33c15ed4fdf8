"""Test support for node agents: an agent's HTTP face around a driver, served by uvicorn on a
loopback port inside the test's event loop, and the `remote` driver that talks to it."""

import asyncio
import secrets
from pathlib import Path
from typing import Any

import uvicorn

from vmplane.agent.app import AgentState, create_agent_app
from vmplane.agent.images import ImageStore
from vmplane.drivers.base import HypervisorDriver
from vmplane.drivers.remote import RemoteDriver
from vmplane.drivers.remote_wire import CONTROL_KEY_PREFIX, digest
from vmplane.outbound import Policy, parse_allow

from .support import LOOPBACK_ALLOW, free_port

LOOPBACK = Policy(parse_allow(LOOPBACK_ALLOW))
"""The outbound policy of test agents: the test's servers are on loopback."""


class AgentServer:
    """`driver` served as a node agent would serve it (opened first, as the agent does)."""

    def __init__(self, driver: HypervisorDriver, data_dir: Path, node_id: str = "node-test0000") -> None:
        self.driver = driver
        self.key = CONTROL_KEY_PREFIX + secrets.token_urlsafe(24)
        self.state = AgentState(driver=driver, data_dir=data_dir, images=ImageStore(data_dir / "images", driver, LOOPBACK), key_digest=digest(self.key), node_id=node_id)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.node_id = node_id
        self._server = uvicorn.Server(uvicorn.Config(create_agent_app(self.state), host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"))
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> "AgentServer":
        self.state.data_dir.mkdir(parents=True, exist_ok=True)
        await self.driver.open()
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        return self

    def remote(self, **kw: Any) -> RemoteDriver:
        return RemoteDriver(self.node_id, self.url, self.key, self.driver.capabilities, serves_templates=False, **kw)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
        await self.driver.close()


class RunningAgent:
    """`vmplane agent` (the daemon itself, not a stand-in) run inside the test's event loop."""

    def __init__(self, control_plane: str, token: str | None, data_dir: Path, driver: str = "sim", hostname: str | None = None, accel: str = "tcg") -> None:
        from vmplane.agent.daemon import Agent, AgentConfig

        self.port = free_port()
        self.cfg = AgentConfig(
            control_plane=control_plane, join_token=token, listen_host="127.0.0.1", listen_port=self.port, driver=driver,
            data_dir=data_dir, hostname=hostname, accel=accel, outbound_allow=tuple(LOOPBACK_ALLOW),
        )  # fmt: skip
        self.agent = Agent(self.cfg)
        self.task: asyncio.Task[int] | None = None

    async def start(self, timeout: float = 30) -> "RunningAgent":
        """Start and wait until the node has joined (its id known)."""
        self.task = asyncio.create_task(self.agent.run(install_signals=False))
        deadline = asyncio.get_running_loop().time() + timeout
        while self.agent.state is None or self.agent.state.node_id is None or not hasattr(self.agent, "credential"):
            if self.task.done():
                raise AssertionError(f"the agent stopped with status {self.task.result()}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the agent did not join in time")
            await asyncio.sleep(0.02)
        return self

    @property
    def node_id(self) -> str:
        assert self.agent.state is not None and self.agent.state.node_id is not None
        return self.agent.state.node_id

    async def stop(self) -> int:
        """Stop as on SIGTERM (heartbeats end); returns the exit status."""
        assert self.task is not None
        self.agent.stopping.set()
        return await self.task


async def join_token(client: Any, **body: Any) -> str:
    r = await client.post("/api/v1/nodes/tokens", json=body)
    assert r.status_code == 201, r.text
    return r.json()["token"]
