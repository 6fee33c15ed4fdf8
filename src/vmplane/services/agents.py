"""Node agents, as the control plane sees them: join tokens, registration, node credentials,
heartbeats, the node monitor (missed heartbeats → `offline`, VMs `unknown`; back → reconciled)
and the template files agents download.

Secrets: a join token (`vmj_…`) and a node credential (`vmn_…`) are stored only as SHA-256
digests. The key the control plane presents to an agent (`vmk_…`) is derived, never stored:
HMAC-SHA-256 of the node id and its credential id under a secret of the installation (meta
`agent_key_secret`, shared by the replicas); the agent keeps only its digest. Revoking a
node's credential therefore cuts both directions at once.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import DEFAULT_ORG, Principal
from ..domain import NodeStatus
from ..drivers import remote_wire as wire
from ..drivers.base import Capabilities
from ..drivers.remote import RemoteDriver
from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthorized
from ..store import agents as ag_q
from ..store import events as ev_q
from ..store import meta as meta_q
from ..store import nodes as node_q
from ..store import templates as tpl_q
from ..store import tenancy as t_q

if TYPE_CHECKING:
    from ..config import Settings
    from ..drivers.base import HypervisorDriver
    from ..drivers.registry import NodeRegistry
    from ..store import Store
    from .capacity import Capacity
    from .secrets import SecretBox

log = logging.getLogger("vmplane.agents")

SECRET_KEY = "agent_key_secret"


def unseal_key_secret(box: Any, stored: str) -> str:
    """The stored agent key secret in clear (hex); one kept in clear by a store migrated
    without the data dir's key (migration 0018) is returned as it is."""
    if len(stored) == 64 and all(c in "0123456789abcdef" for c in stored):
        return stored
    return str(box.open(stored)["agentKeySecret"])
TOKEN_MAX_SECONDS = 366 * 86400
TEMPLATE_FILES = ("disk", "kernel", "initrd")


def operator_only(who: Principal) -> None:
    if not who.operator:
        raise Forbidden("only operators (owners and admins of the bootstrap organization) manage nodes")


class AgentService:
    def __init__(
        self,
        *,
        store: Store,
        settings: Settings,
        registry: NodeRegistry,
        capacity: Capacity,
        secret_box: SecretBox,
        reconcile: Callable[[list[tuple[str, HypervisorDriver]]], Awaitable[None]],
        register_tiny_template: Callable[[], Awaitable[None]],
    ) -> None:
        """`reconcile(nodes)`: bring the stored states of these nodes' VMs in line with their
        drivers; `register_tiny_template()`: offer the tiny guest (runtime.Runtime's)."""
        self.store = store
        self.settings = settings
        self.registry = registry
        self.capacity = capacity
        self.secret_box = secret_box
        self.reconcile = reconcile
        self.register_tiny_template = register_tiny_template
        self._secret: bytes | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._tiny: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._remotes: dict[str, RemoteDriver] = {}
        """the drivers of remote nodes this service put in the registry (and keeps up to date)"""

    RECONCILE_TRIES = 10
    RECONCILE_RETRY_SECONDS = 2.0

    @property
    def offline_seconds(self) -> float:
        return float(self.settings.node_offline_seconds)

    @property
    def heartbeat_seconds(self) -> float:
        """How often agents are told to beat: five beats fit in the offline timeout."""
        return max(0.2, min(5.0, self.offline_seconds / 5))

    # -- join tokens (operators) -------------------------------------------------------------

    async def create_token(self, who: Principal, *, description: str, one_time: bool, expires_in: float | None) -> tuple[Row[Any], str]:
        operator_only(who)
        if len(description) > 256:
            raise InvalidRequest("description has at most 256 characters", field="description")
        if expires_in is not None and not 0 < expires_in <= TOKEN_MAX_SECONDS:
            raise InvalidRequest(f"expiresInSeconds must be from 1 to {TOKEN_MAX_SECONDS}", field="expiresInSeconds")
        token = wire.JOIN_TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = clock.now()
        token_id = ids.new_id("jtok")
        row = {
            "id": token_id, "digest": wire.digest(token), "prefix": token[:10], "description": description,
            "one_time": one_time, "uses": 0, "created_by": who.user_name, "created_at": now,
            "expires_at": None if expires_in is None else now + expires_in, "last_used_at": None, "revoked_at": None,
        }  # fmt: skip
        async with self.store.write() as conn:
            await ag_q.insert_token(conn, row)
            stored = await ag_q.get_token(conn, token_id)
        assert stored is not None
        return stored, token

    async def tokens(self, who: Principal) -> Sequence[Row[Any]]:
        operator_only(who)
        async with self.store.read() as conn:
            return await ag_q.list_tokens(conn)

    async def revoke_token(self, who: Principal, token_id: str) -> None:
        operator_only(who)
        async with self.store.write() as conn:
            if await ag_q.get_token(conn, token_id) is None:
                raise NotFound(f"join token {token_id} does not exist")
            await ag_q.revoke_token(conn, token_id, clock.now())

    # -- keys --------------------------------------------------------------------------------

    async def _key_secret(self) -> bytes:
        """The installation's secret the control-plane keys derive from, stored sealed with
        the data dir's key (the database alone would give the key to every agent)."""
        if self._secret is None:
            box = self.secret_box
            async with self.store.write() as conn:
                value = await meta_q.ensure(conn, SECRET_KEY, box.seal({"agentKeySecret": secrets.token_hex(32)}))
            self._secret = bytes.fromhex(unseal_key_secret(box, value))
        return self._secret

    async def control_key(self, node_id: str, credential_id: str) -> str:
        mac = hmac.new(await self._key_secret(), f"{node_id}:{credential_id}".encode(), "sha256").hexdigest()
        return wire.CONTROL_KEY_PREFIX + mac

    async def _node_for(self, credential: str | None) -> Row[Any]:
        """The node whose agent sent this credential (401 otherwise)."""
        if not credential or not credential.startswith(wire.CREDENTIAL_PREFIX):
            raise Unauthorized("a node credential is required (Authorization: Bearer vmn_…)")
        async with self.store.read() as conn:
            node = await ag_q.node_by_credential(conn, wire.digest(credential))
        if node is None:
            raise Unauthorized("unknown or revoked node credential")
        return node

    # -- what agents call ---------------------------------------------------------------------

    async def register(self, token: str | None, body: Any, remote: str | None) -> dict[str, Any]:
        """A new node joins with a join token (or a node whose credential was revoked joins
        again under its old id); answers its credential and the key it will be called with."""
        if not token or not token.startswith(wire.JOIN_TOKEN_PREFIX):
            raise Unauthorized("a join token is required (Authorization: Bearer vmj_…); create one with `vmplane node token create`")
        async with self.store.read() as conn:
            tok = await ag_q.token_by_digest(conn, wire.digest(token))
        now = clock.now()
        if tok is None or tok.revoked_at is not None or (tok.expires_at is not None and tok.expires_at <= now) or (tok.one_time and tok.uses):
            async with self.store.write() as conn:
                await self._audit(conn, "join token refused", tok.id if tok else None, 401, remote)
            raise Unauthorized("the join token is unknown, revoked, expired, or already used")
        agent_url, info, caps = parse_agent(body)
        wanted = body.get("nodeId")
        if wanted is not None:
            wire.check_id(wanted, "nodeId")
        credential = wire.CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        credential_id = ids.new_id("cred")
        async with self.store.write() as conn:
            if not await ag_q.spend_token(conn, tok.id, now):  # another node got there first
                raise Unauthorized("the join token is unknown, revoked, expired, or already used")
            node_id = wanted or ids.new_id("node")
            existing = await node_q.get_node(conn, node_id)
            if existing is not None and (existing.driver != ag_q.REMOTE or existing.credential_digest is not None):
                raise Conflict(f"node {node_id} is already joined; revoke its credential first to join it again", field="nodeId")
            row = node_row(node_id, agent_url, info, caps, now)
            row.update(credential_id=credential_id, credential_digest=wire.digest(credential))
            if existing is None:
                row["cordoned"] = False
            await node_q.upsert_node(conn, row)
            await ev_q.emit(conn, "node.online", node_id, {"id": node_id, "hostname": info.hostname, "driver": ag_q.REMOTE}, None)
            await self._audit(conn, f"node {node_id} joined with token {tok.id}", tok.id, 201, remote)
        log.warning("node %s (%s, %s) joined from %s", node_id, info.hostname, caps.kind, agent_url)
        self._offer_tiny(caps)
        await self.sync()
        self.capacity.invalidate()
        if existing is not None:
            self._reconcile_soon(node_id)
        return {
            "nodeId": node_id, "credential": credential, "controlPlaneKey": await self.control_key(node_id, credential_id),
            "heartbeatSeconds": self.heartbeat_seconds,
        }  # fmt: skip

    async def hello(self, credential: str | None, body: Any) -> dict[str, Any]:
        """An agent (re)started: its address, capacity and capabilities; its VMs are reconciled."""
        node = await self._node_for(credential)
        agent_url, info, caps = parse_agent(body)
        now = clock.now()
        row = node_row(node.id, agent_url, info, caps, now)
        async with self.store.write() as conn:
            await node_q.upsert_node(conn, row)
            await ev_q.emit(conn, "node.online", node.id, {"id": node.id, "hostname": info.hostname, "driver": ag_q.REMOTE}, None)
        self._offer_tiny(caps)
        await self.sync()
        self.capacity.invalidate()
        self._reconcile_soon(node.id)
        return {"nodeId": node.id, "heartbeatSeconds": self.heartbeat_seconds}

    async def heartbeat(self, credential: str | None) -> dict[str, Any]:
        node = await self._node_for(credential)
        async with self.store.write() as conn:
            back = await ag_q.heartbeat(conn, node.id, clock.now())
            if back:
                await ev_q.emit(conn, "node.online", node.id, {"id": node.id, "hostname": node.hostname, "driver": ag_q.REMOTE}, None)
        if back:
            log.warning("node %s is back online", node.id)
            await self.sync()
            self.capacity.invalidate()
            self._reconcile_soon(node.id)
        return {"heartbeatSeconds": self.heartbeat_seconds}

    async def template_file(self, credential: str | None, template_id: str, name: str) -> Path:
        """A file of a ready template, for an agent to download."""
        await self._node_for(credential)
        if name not in TEMPLATE_FILES:
            raise NotFound(f"templates have no file {name!r}")
        async with self.store.read() as conn:
            tpl = await tpl_q.get_template(conn, template_id)
        if tpl is None or tpl.status != "ready" or tpl.image_path is None:
            raise NotFound(f"template {template_id} has no image")
        path = tpl.image_path if name == "disk" else (tpl.boot or {}).get(name)
        if not path or not Path(path).is_file():
            raise NotFound(f"template {template_id} has no {name}")
        return Path(path)

    # -- credentials (operators) -----------------------------------------------------------------

    async def revoke_credential(self, who: Principal, node_id: str) -> None:
        """The node's agent can no longer call in, nor be called: the node is offline at once
        and its VMs unknown. It joins again with a new join token (same node id, its VMs)."""
        operator_only(who)
        now = clock.now()
        async with self.store.write() as conn:
            node = await node_q.get_node(conn, node_id)
            if node is None or node.driver != ag_q.REMOTE:
                raise NotFound(f"node {node_id} is not a node run by an agent")
            await ag_q.set_node(conn, node_id, credential_id=None, credential_digest=None, updated_at=now)
            await self._go_offline(conn, node_id, None, now, "its credential was revoked")
        await self.sync()
        log.warning("credential of node %s revoked by %s", node_id, who.user_name)

    # -- the node monitor ---------------------------------------------------------------------

    async def start(self) -> None:
        """Remote nodes into the registry; the VMs of those that are online are reconciled
        (in the background: an agent may be slow to answer)."""
        self._started = time.monotonic()
        await self.sync()
        async with self.store.read() as conn:
            online = [n.id for n in await ag_q.remote_nodes(conn) if n.status == NodeStatus.ONLINE.value and n.credential_digest]
        for node_id in online:
            self._reconcile_soon(node_id)
        self._task = asyncio.create_task(self._monitor(), name="node-monitor")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._tiny, *self._reconciling.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for driver in self._remotes.values():
            await driver.close()

    async def _monitor(self) -> None:
        interval = max(0.1, min(1.0, self.offline_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the node monitor failed (will retry)")

    async def check(self) -> None:
        """Mark nodes offline whose heartbeats stopped, and bring the registry in line."""
        now = clock.now()
        # after a control-plane restart agents get one timeout to reach us again
        if time.monotonic() - self._started >= self.offline_seconds:
            silent_since = now - self.offline_seconds
            async with self.store.read() as conn:
                stale = [n for n in await ag_q.remote_nodes(conn) if n.status == NodeStatus.ONLINE.value and (n.heartbeat_at or 0) < silent_since]
            for n in stale:
                async with self.store.write() as conn:
                    why = f"no heartbeat for {now - (n.heartbeat_at or now):.1f} s"
                    if await self._go_offline(conn, n.id, silent_since, now, why):
                        log.error("node %s is offline: %s", n.id, why)
        await self.sync()

    async def _go_offline(self, conn: AsyncConnection, node_id: str, silent_since: float | None, now: float, why: str) -> bool:
        if not await ag_q.mark_offline(conn, node_id, silent_since, now):
            return False
        unknown = await ag_q.vms_unknown(conn, node_id, now)
        await ev_q.emit(conn, "node.offline", node_id, {"id": node_id, "reason": why, "vmsUnknown": len(unknown)}, None)
        self.capacity.invalidate()
        return True

    async def sync(self) -> None:
        """The registry has a remote driver for every joined node, up to date, and marked
        offline exactly when the store says so (other replicas may have decided it)."""
        async with self.store.read() as conn:
            rows = await ag_q.remote_nodes(conn)
        for row in rows:
            await self._sync_one(row)

    async def _sync_one(self, row: Row[Any]) -> None:
        reg = self.registry
        key = await self.control_key(row.id, row.credential_id) if row.credential_id else "vmk_revoked"
        try:
            caps = wire.capabilities_from_wire(row.capabilities or {})
        except InvalidRequest:
            log.error("node %s has unreadable capabilities; re-register its agent", row.id)
            return
        driver = self._remotes.get(row.id)
        if driver is not None:
            if (driver.url, driver.key, driver.capabilities) != (row.agent_url, key, wire.remote_capabilities(caps)):
                driver.update(row.agent_url or "", key, caps)
        elif row.id not in reg:  # (a node of this process's own is no remote node)
            driver = RemoteDriver(row.id, row.agent_url or "http://0.0.0.0:1", key, caps)
            await driver.open()
            reg.add(row.id, driver)
            self._remotes[row.id] = driver
        if driver is not None:
            if row.credential_digest is None:
                driver.set_offline("its credential was revoked")
            elif row.status != NodeStatus.ONLINE.value:
                driver.set_offline(f"no heartbeat since {clock.rfc3339(row.heartbeat_at)}")
            else:
                driver.set_offline(None)

    def _offer_tiny(self, caps: Capabilities) -> None:
        """A qemu node can run the tiny guest: register the `tiny-linux` template (built once)
        as a control plane with a local qemu node does, in the background."""
        if not caps.real_vms or self._tiny is not None:
            return

        async def run() -> None:
            try:
                await self.register_tiny_template()
            except Exception:
                log.exception("registering the tiny-linux template failed")

        self._tiny = asyncio.create_task(run(), name="tiny-template")

    def _reconcile_soon(self, node_id: str) -> None:
        """Reconcile the node's VMs with what its agent reports, in the background (the agent
        is waiting for our answer to its heartbeat)."""
        running = self._reconciling.get(node_id)
        if running is not None and not running.done():
            return

        async def run() -> None:
            # Tried again while it fails: an agent that restarted answers before it has joined
            # again ("this node has not joined a control plane yet"), and a node reconciled
            # only once kept its VMs `unknown` until its next return (found by the chaos soak).
            for attempt in range(1, self.RECONCILE_TRIES + 1):
                try:
                    driver = self.registry.driver(node_id)
                    await self.reconcile([(node_id, driver)])
                    return
                except Exception as exc:
                    last = attempt == self.RECONCILE_TRIES
                    log.warning("reconciling node %s failed%s: %s", node_id, " (giving up)" if last else "; trying again", exc)
                if not last:
                    await asyncio.sleep(self.RECONCILE_RETRY_SECONDS)

        self._reconciling[node_id] = asyncio.create_task(run(), name=f"reconcile-{node_id}")

    async def _audit(self, conn: AsyncConnection, what: str, token_id: str | None, status: int, remote: str | None) -> None:
        await t_q.add_audit(conn, [{
            "ts": clock.now(), "org_id": DEFAULT_ORG, "actor": f"node agent ({what})", "credential": token_id, "method": "POST",
            "route": wire.CONTROL_PREFIX + "/register", "path": wire.CONTROL_PREFIX + "/register", "status": status,
            "outcome": "success" if status < 400 else "denied", "remote": remote,
        }])  # fmt: skip


def parse_agent(body: Any) -> tuple[str, Any, Capabilities]:
    """(agent URL, NodeInfo, Capabilities) of a registration or hello body."""
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    url = body.get("agentUrl")
    wrong_url = "agentUrl must be http(s)://HOST:PORT"
    if not isinstance(url, str):
        raise InvalidRequest(wrong_url, field="agentUrl")
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.hostname or u.port is None or u.path not in ("", "/") or u.query:
        raise InvalidRequest(wrong_url, field="agentUrl")
    info = wire.node_info_from_wire(body.get("node"))
    caps = wire.capabilities_from_wire(body.get("capabilities"))
    if caps.kind not in ("qemu", "sim"):
        raise InvalidRequest(f"agents run qemu or sim, not {caps.kind!r}", field="capabilities.kind")
    return url.rstrip("/"), info, caps


def node_row(node_id: str, agent_url: str, info: Any, caps: Capabilities, now: float) -> dict[str, Any]:
    return {
        "id": node_id,
        "hostname": info.hostname,
        "driver": ag_q.REMOTE,
        "status": NodeStatus.ONLINE.value,
        "cpu_total": info.cpu,
        "ram_mb_total": info.ram_mb,
        "disk_gb_total": info.disk_gb,
        "labels": {**info.labels, "networkTypes": ",".join(sorted(caps.network_types)), "hypervisor": caps.kind},
        "pci_devices": [d.to_wire() for d in info.pci_devices],
        "agent_url": agent_url,
        "capabilities": wire.capabilities_to_wire(caps),
        "created_at": now,
        "updated_at": now,
        "heartbeat_at": now,
    }
