"""`vmplane agent`: the node daemon. Opens the local driver, serves it (`agent.app`), joins the
control plane (a join token the first time; the node credential it then keeps in
`<data-dir>/agent.json`, mode 0600, afterwards), says hello at every start (address,
capacity, capabilities: the control plane reconciles the node's VMs) and heartbeats.

The agent's VMs outlive it, as they outlive a control plane: stopping the agent stops serving,
not the guests. When the control plane refuses the credential (revoked), the agent stops with
exit status 3; start it again with a new `--join-token` to join under the same node id.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import uvicorn

from .. import __version__
from ..aio import wait_event
from ..config import Settings
from ..datadir import make_private
from ..drivers.base import HypervisorDriver
from ..drivers.qemu import confine, pick_accel
from ..drivers.registry import build_qemu_driver
from ..drivers.remote_wire import CONTROL_PREFIX, digest
from ..drivers.sim import SimDriver, SimFaults
from ..http_clients import link_client
from ..httpproto import header_timeout
from ..images import ImageBuildError, build_tiny_image, tiny_dir
from ..outbound import Policy, parse_allow
from .app import AgentState, create_agent_app, describe, write_private
from .images import ControlPlaneLink, ImageStore

log = logging.getLogger("vmplane.agent")

CREDENTIAL_FILE = "agent.json"
RETRY_MAX = 10.0


class AgentRefused(Exception):
    """The control plane refused this agent for good (bad token, revoked credential)."""


@dataclass
class AgentConfig:
    control_plane: str
    join_token: str | None
    listen_host: str
    listen_port: int
    driver: str
    data_dir: Path
    advertise_url: str | None = None
    hostname: str | None = None
    accel: str = "auto"
    outbound_allow: tuple[str, ...] | None = None
    """CIDRs a template's source URL may lead to although the outbound policy refuses them
    (None: VMPLANE_OUTBOUND_ALLOW from the environment, as the control plane reads it)"""

    @property
    def url(self) -> str:
        """Where the control plane reaches this agent."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        host = self.listen_host
        if _unspecified(host):
            host = socket.getfqdn()
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.listen_port}"

    @property
    def migration_address(self) -> str:
        """Where live migrations into this node listen (the listen address, else the advertised host)."""
        if not _unspecified(self.listen_host):
            return self.listen_host
        return urlparse(self.url).hostname or "127.0.0.1"


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.data_dir = cfg.data_dir.resolve()
        self.stopping = asyncio.Event()
        self.boot_id = secrets.token_hex(8)
        self.state: AgentState | None = None
        self.heartbeat_seconds = 2.0

    # -- the local driver ------------------------------------------------------------------

    async def build_driver(self) -> HypervisorDriver:
        settings = Settings(data_dir=self.data_dir, driver=self.cfg.driver, accel=self.cfg.accel)
        hostname = self.cfg.hostname or socket.gethostname()
        if self.cfg.driver == "sim":
            return SimDriver(
                hostname=hostname, cpu=settings.sim_node_cpu, ram_mb=settings.sim_node_ram_mb, disk_gb=settings.sim_node_disk_gb,
                latency=settings.sim_latency_ms / 1000, state_dir=self.data_dir / "sim",
                faults=SimFaults(name_pattern=settings.sim_fail_pattern, fraction=settings.sim_fail_fraction, seed=settings.sim_fail_seed),
                overcommit=(settings.cpu_overcommit, settings.ram_overcommit, settings.disk_overcommit),
                sysfs_root=settings.sysfs_root if settings.pci_allowlist else None, pci_allowlist=tuple(settings.pci_allowlist),
                call_log=settings.sim_call_log,
            )  # fmt: skip
        if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
            raise AgentRefused("qemu-system-x86_64 and qemu-img are not installed here; install them, or run --driver sim (simulated VMs)")
        accel = self.cfg.accel
        if accel == "auto":
            try:
                image = await asyncio.to_thread(build_tiny_image, tiny_dir(settings.resolved_image_cache()))
                accel, why = await pick_accel("auto", image)
            except (ImageBuildError, OSError) as exc:
                accel, why = "tcg", f"no probe image to test KVM with ({exc})"
            log.warning("accelerator: %s (%s)", accel, why)
        return build_qemu_driver(settings, self.data_dir / "qemu", hostname, accel, migration_address=self.cfg.migration_address)

    def outbound_policy(self) -> Policy:
        """What a template's source URL may lead to when this agent fetches it."""
        allow = self.cfg.outbound_allow if self.cfg.outbound_allow is not None else Settings(data_dir=self.data_dir).outbound_allow
        return Policy(parse_allow(allow))

    # -- the credential file ----------------------------------------------------------------

    @property
    def credential_file(self) -> Path:
        return self.data_dir / CREDENTIAL_FILE

    def load_credential(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.credential_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise AgentRefused(f"{self.credential_file} is unreadable: {exc}") from exc
        if data.get("controlPlane") != self.cfg.control_plane.rstrip("/"):
            log.warning("%s is for %s, not %s: joining anew", self.credential_file, data.get("controlPlane"), self.cfg.control_plane)
            return None
        if not isinstance(data, dict):
            raise AgentRefused(f"{self.credential_file} is unreadable: not a JSON object")
        return data

    # -- talking to the control plane --------------------------------------------------------

    async def _post(self, client: httpx.AsyncClient, path: str, token: str, body: Any = None) -> dict[str, Any]:
        resp = await client.post(CONTROL_PREFIX + path, json=body or {}, headers={"Authorization": f"Bearer {token}"})
        if resp.status_code in (401, 403, 409):
            try:
                why = resp.json().get("error") or resp.text
            except ValueError:
                why = resp.text
            raise AgentRefused(f"the control plane refused {path.strip('/')}: {why}")
        resp.raise_for_status()
        return dict(resp.json())

    async def _describe(self) -> dict[str, Any]:
        assert self.state is not None
        return {**await describe(self.state.driver), "agentUrl": self.cfg.url, "bootId": self.boot_id, "version": __version__}

    async def join(self, client: httpx.AsyncClient) -> None:
        """Hello with the stored credential, or register with the join token."""
        assert self.state is not None
        stored = self.load_credential()
        if stored is not None:
            try:
                out = await self._post(client, "/hello", stored["credential"], await self._describe())
                self._joined(stored, out)
                log.warning("node %s: said hello to %s", stored["nodeId"], self.cfg.control_plane)
                return
            except AgentRefused as exc:
                if not self.cfg.join_token:
                    raise AgentRefused(f"{exc}. Join again with --join-token (a new token from `vmplane node token create`)") from None
                log.warning("%s; joining again with the join token", exc)
        if not self.cfg.join_token:
            raise AgentRefused(f"this node has not joined yet ({self.credential_file} does not exist): give --join-token")
        body = await self._describe()
        if stored is not None:
            body["nodeId"] = stored["nodeId"]
        out = await self._post(client, "/register", self.cfg.join_token, body)
        record = {
            "nodeId": out["nodeId"], "controlPlane": self.cfg.control_plane.rstrip("/"), "credential": out["credential"],
            "controlPlaneKeySha256": digest(out["controlPlaneKey"]),
        }  # fmt: skip
        write_private(self.credential_file, record)
        self._joined(record, out)
        log.warning("joined %s as node %s (credential in %s, mode 0600)", self.cfg.control_plane, out["nodeId"], self.credential_file)

    def _joined(self, record: dict[str, Any], out: dict[str, Any]) -> None:
        assert self.state is not None
        self.state.key_digest = record["controlPlaneKeySha256"]
        self.state.node_id = record["nodeId"]
        self.state.images.link = ControlPlaneLink(self.cfg.control_plane.rstrip("/"), record["credential"])
        self.heartbeat_seconds = float(out.get("heartbeatSeconds") or self.heartbeat_seconds)
        self.credential = record["credential"]

    async def beat(self, client: httpx.AsyncClient) -> None:
        """Heartbeats until stopped; a refused one ends the agent (credential revoked)."""
        failing = False
        while not self.stopping.is_set():
            try:
                out = await self._post(client, "/heartbeat", self.credential, {"bootId": self.boot_id})
                self.heartbeat_seconds = float(out.get("heartbeatSeconds") or self.heartbeat_seconds)
                if failing:
                    log.warning("heartbeats reach %s again", self.cfg.control_plane)
                failing = False
            except httpx.HTTPError as exc:
                if not failing:
                    log.warning("heartbeat to %s failed (will keep trying): %s", self.cfg.control_plane, exc)
                failing = True
            await wait_event(self.stopping, self.heartbeat_seconds)

    # -- running ------------------------------------------------------------------------------

    async def run(self, install_signals: bool = True) -> int:
        """Serve until SIGINT/SIGTERM (or `stopping` is set); the exit status: 0, or 3 when
        the control plane refused this node."""
        make_private(self.data_dir)  # umask 0o077 for this process; 0700/0600 in the data dir (its credential too)
        settings = Settings(data_dir=self.data_dir)
        confine.configure(settings.qemu_confine, settings.qemu_user)
        with _exclusive(self.data_dir / "agent.lock"):
            driver = await self.build_driver()
            await driver.open()
            images = ImageStore(self.data_dir / "images", driver, self.outbound_policy())
            self.state = AgentState(driver=driver, data_dir=self.data_dir, images=images)
            app = create_agent_app(self.state)
            sock = _listen(self.cfg.listen_host, self.cfg.listen_port)
            server = _QuietServer(uvicorn.Config(
                app, lifespan="off", log_level=logging.getLevelName(log.getEffectiveLevel()).lower(), access_log=False,
                http=header_timeout(HEADER_TIMEOUT),  # a client trickling its headers does not hold a connection
            ))  # fmt: skip
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            if install_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, self.stopping.set)
            log.warning("node agent (%s driver) serving on %s, data in %s", driver.capabilities.kind, self.cfg.url, self.data_dir)
            status = 0
            try:
                async with link_client(base_url=self.cfg.control_plane.rstrip("/"), timeout=httpx.Timeout(15.0, connect=5.0)) as client:
                    delay = 0.5
                    while not self.stopping.is_set():
                        try:
                            await self.join(client)
                            break
                        except httpx.HTTPError as exc:
                            log.warning("cannot reach the control plane at %s (retrying in %.0f s): %s", self.cfg.control_plane, delay, exc)
                            await wait_event(self.stopping, delay)
                            delay = min(RETRY_MAX, delay * 2)
                    if not self.stopping.is_set():
                        await self.beat(client)
            except AgentRefused as exc:
                log.error("%s", exc)
                status = 3
            finally:
                server.should_exit = True
                await serving
                await driver.close()
            return status


HEADER_TIMEOUT = 10.0
"""seconds a client has to send a request's headers (httpproto.HeaderTimeoutProtocol)"""


class _QuietServer(uvicorn.Server):
    """The agent owns signals (uvicorn's own handlers would stop only the server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(512)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One agent per data dir: two would fight over the same VMs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentRefused(f"another agent runs on {path.parent}") from None
        yield
    finally:
        os.close(fd)
