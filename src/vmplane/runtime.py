"""The Runtime wires one vmplane process together: store, nodes, job engine, services."""

import asyncio
import logging
import secrets
import socket
from pathlib import Path
from typing import Any

from . import clock, ids
from .backupstore import BackupStore
from .config import Settings
from .datadir import make_private
from .domain import VmStatus
from .drivers.base import HypervisorDriver, PowerState
from .drivers.qemu import confine as qemu_confine
from .drivers.qemu import pick_accel
from .drivers.registry import build_qemu_driver, build_sim_nodes, pick_driver_kind
from .events.bus import EventBus
from .images import ImageBuildError, TinyImage, build_tiny_image, tiny_dir
from .images.tiny import DISK_SIZE
from .jobs.deps import HandlerDeps
from .jobs.engine import JobEngine
from .jobs.handlers import all_handlers
from .outbound import Outbound
from .replicas import ReplicaHooks, Replicas, ServedRegistry, assign_node_ids, home_of
from .services import scopes
from .services.agents import AgentService
from .services.backups import BackupService
from .services.billing import Billing
from .services.capacity import Capacity
from .services.cluster import ClusterService
from .services.deployments import DeploymentService
from .services.guest import GuestService
from .services.imports import ImportService
from .services.ingress import IngressService
from .services.isos import IsoService
from .services.jobs import JobService
from .services.moves import MoveService
from .services.networks import NetworkService
from .services.plugins import PluginService
from .services.readiness import ReadinessService
from .services.schedules import Replay, ScheduleService
from .services.secrets import KEY_FILE as SECRETS_KEY_FILE
from .services.secrets import SecretBox
from .services.snapshots import SnapshotService
from .services.stats_history import StatsHistory
from .services.templates import TemplateService
from .services.tenancy import TenancyService
from .services.uploads import Uploads
from .services.vmconfig import VmConfigService
from .services.vms import VmService
from .services.vsphere import VsphereService
from .services.webhook_delivery import WebhookDelivery
from .services.webhooks import WebhookService
from .store import Store
from .store import events as ev_q
from .store import idempotency as idem_q
from .store import jobs as job_q
from .store import meta as meta_q
from .store import nodes as node_q
from .store import templates as tpl_q
from .store import tenancy as t_q
from .store import vms as vm_q
from .store.coordination import EVENTS_CHANNEL, SINGLETON_NS, STARTUP_KEY, TASKS_CHANNEL, Coordinator
from .store.isos import ISOS_DIR
from .streams import StreamLimits

log = logging.getLogger("vmplane")
TINY_TEMPLATE = "tiny-linux"


class Runtime:
    """The composition root: builds each collaborator once, in dependency order, and hands
    each exactly what it uses. Faces reach the services through it."""

    def __init__(self, settings: Settings, nodes: list[tuple[str, HypervisorDriver]] | None = None, *, replay: Replay) -> None:
        """`nodes` overrides the drivers that settings would build (tests, embedding);
        `replay` sends a schedule's request to the native API of this process (app.py)."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir).resolve()
        self.images_dir = self.data_dir / "images"
        self.isos_dir = self.data_dir / ISOS_DIR
        self.secret_box = SecretBox(self.data_dir / SECRETS_KEY_FILE)
        """seals what vmplane must keep but never show (webhook secrets, vCenter credentials)"""
        self.store = store = Store(settings.resolved_database_url(), secret_box=self.secret_box)
        self.coordinator = Coordinator(store.url) if store.dialect == "postgresql" else None
        """PostgreSQL: the session replicas coordinate through (locks, LISTEN/NOTIFY)"""
        self.replicas = replicas = Replicas(store, settings, self.coordinator)
        self.registry = registry = ServedRegistry(replicas)
        self.outbound = outbound = Outbound(settings, node_q.agent_urls_of(store))
        """the one way to fetch a URL on a user's behalf (outbound.py)"""
        self.capacity = capacity = Capacity(store, settings)
        capacity.scope = replicas.placement_scope
        self.engine = engine = JobEngine(store, settings, all_handlers())
        engine.not_here = replicas.not_here
        self.events = EventBus(store)
        if self.coordinator is not None:  # work and events of the other replicas, the moment they commit
            self.coordinator.listen(EVENTS_CHANNEL, self.events.poke)
            self.coordinator.listen(TASKS_CHANNEL, engine.wakeup)
            self.coordinator.on_connected += [self.events.poke, engine.wakeup]
        self.streams = StreamLimits(settings.max_streams_per_credential, settings.max_streams_per_org)
        """open event streams and consoles per credential and organization"""
        self.backup_store = BackupStore(
            settings.backup_dir or self.data_dir / "backups", self.data_dir / "backup-repo-password"
        )
        schedules_due = asyncio.Event()
        """set: the scheduler looks at its timetable now (tenancy's sweeps disable schedules)"""

        self.billing = billing = Billing(store=store, settings=settings)
        self.tenancy = tenancy = TenancyService(store=store, settings=settings, data_dir=self.data_dir, schedules_changed=schedules_due.set)
        self.jobs = jobs = JobService(store=store, engine=engine, events=self.events)
        self.cluster = cluster = ClusterService(store=store, settings=settings, capacity=capacity)
        self.agents = AgentService(
            store=store, settings=settings, registry=registry, capacity=capacity, secret_box=self.secret_box,
            reconcile=self.reconcile, register_tiny_template=self._register_tiny_template,
        )  # fmt: skip
        self.moves = MoveService(store=store, engine=engine, cluster=cluster)
        self.guest = guest = GuestService(store=store, registry=registry, streams=self.streams)
        self.readiness = ReadinessService(store=store, registry=registry, bus=self.events)
        """watches each boot until the guest is ready; the `waitReady` long-poll"""
        self.stats_history = StatsHistory(store=store, settings=settings, registry=registry, leadership=replicas)
        """records running VMs' and nodes' stats every few seconds; their history"""
        self.vsphere = vsphere = VsphereService(store=store, outbound=outbound, secret_box=self.secret_box)
        self.networks = networks = NetworkService(store=store, settings=settings, engine=engine, tenancy=tenancy)
        self.imports = imports = ImportService(
            store=store, settings=settings, data_dir=self.data_dir, engine=engine, networks=networks, outbound=outbound,
            registry=registry, vsphere=vsphere,
        )  # fmt: skip
        self.uploads = uploads = Uploads(settings.max_download_bytes)
        """files callers send as request bodies, under one set of limits (services/uploads.py)"""
        self.templates = templates = TemplateService(
            store=store, settings=settings, engine=engine, imports=imports, outbound=outbound, tenancy=tenancy, images_dir=self.images_dir,
            home=lambda: replicas.home, uploads=uploads,
        )  # fmt: skip
        self.isos = IsoService(
            store=store, settings=settings, engine=engine, outbound=outbound, tenancy=tenancy, uploads=uploads, isos_dir=self.isos_dir,
        )  # fmt: skip
        self.snapshots = snapshots = SnapshotService(store=store, engine=engine, networks=networks, tenancy=tenancy)
        self.plugins = plugins = PluginService(
            store=store, settings=settings, outbound=outbound, registry=registry, leadership=replicas, templates=templates, tenancy=tenancy
        )
        self.vms = vms = VmService(
            store=store, settings=settings, engine=engine, jobs=jobs, billing=billing, capacity=capacity, networks=networks,
            plugins=plugins, snapshots=snapshots, tenancy=tenancy, isos=self.isos,
        )  # fmt: skip
        self.vm_configs = vm_configs = VmConfigService(store=store, vms=vms, templates=templates)
        self.backups = backups = BackupService(store=store, engine=engine, registry=registry, backup_store=self.backup_store, vms=vms)
        self.schedules = ScheduleService(store=store, leadership=replicas, tenancy=tenancy, backups=backups, replay=replay, wake=schedules_due)
        self.deployments = DeploymentService(
            store=store, vms=vms, templates=templates, vm_configs=vm_configs, leadership=replicas, ready=lambda: self.ready
        )
        self.ingress = IngressService(store=store, networks=networks)
        self.webhooks = WebhookService(store=store, outbound=outbound, secret_box=self.secret_box, tenancy=tenancy)
        self.webhook_delivery = WebhookDelivery(
            store, outbound, owner=engine.owner, signing=self.webhooks.signing,
            concurrency=settings.webhook_concurrency, backoff_base=settings.webhook_backoff_seconds,
        )  # fmt: skip
        self.handler_deps = HandlerDeps(
            store=store, settings=settings, registry=registry, home=replicas, capacity=capacity, billing=billing,
            networks=networks, guest=guest, imports=imports, vsphere=vsphere, vms=vms, outbound=outbound,
            backup_store=self.backup_store, data_dir=self.data_dir, images_dir=self.images_dir,
        )  # fmt: skip
        """what job handlers work with (given to the engine when it starts)"""
        self.internal_token = secrets.token_urlsafe(32)
        """proves a request came from this process (schedules' replays; api/identity.py)"""
        self._maintenance: asyncio.Task[None] | None = None
        self._heartbeats: asyncio.Task[None] | None = None
        self.ready = False
        self.stopping = asyncio.Event()
        """set when the server begins to shut down: event streams and consoles end (go_away)"""
        self.consoles = 0
        """console WebSockets open (wsconsole.bridge)"""
        self.driver_kind, self.driver_reason = ("custom", "drivers given by the caller")
        self._nodes = nodes
        self._tiny: TinyImage | None = None

    async def _build_nodes(self) -> list[tuple[str, HypervisorDriver]]:
        if self._nodes is not None:
            return self._nodes
        if self.settings.sim_nodes == 0:  # a control plane of agents only
            self.driver_kind, self.driver_reason = "none", "--sim-nodes 0: no local node; nodes join with `vmplane agent`"
            log.warning("no local node (--sim-nodes 0): nodes join with `vmplane agent`")
            return []
        kind, reason = pick_driver_kind(self.settings)
        self.driver_kind, self.driver_reason = kind, reason
        if kind == "sim":
            log.warning("driver: sim (%s)", reason)
            return build_sim_nodes(self.settings, self.data_dir / "sim")
        log.info("driver: qemu (%s)", reason)
        image = await self.tiny_image()
        if image is None:
            accel, why = ("tcg", "no probe image to test KVM with") if self.settings.accel == "auto" else (self.settings.accel, "--accel")
        else:
            accel, why = await pick_accel(self.settings.accel, image)
        log.warning("accelerator: %s (%s)", accel, why)
        driver = build_qemu_driver(self.settings, self.data_dir / "qemu", socket.gethostname(), accel)
        return [("node-1", driver)]

    async def tiny_image(self) -> "TinyImage | None":
        """The tiny guest image, built once into the shared cache (None if it cannot be)."""
        if self._tiny is not None:
            return self._tiny
        dest = tiny_dir(self.settings.resolved_image_cache())

        def progress(pct: int, message: str) -> None:
            log.info("building tiny-linux image: %3d%% %s", pct, message)

        try:
            self._tiny = await asyncio.to_thread(build_tiny_image, dest, progress)
        except (ImageBuildError, OSError) as exc:
            log.error("cannot build the tiny-linux image, so it will not be offered: %s", exc)
            return None
        return self._tiny

    async def _register_tiny_template(self) -> None:
        """Make sure the default template `tiny-linux` exists and points at the cached image."""
        image = await self.tiny_image()
        if image is None:
            return
        now = clock.now()
        values = {
            "os": "linux",
            "status": "ready",
            "format": "qcow2",
            "size_mb": DISK_SIZE // 2**20,
            "image_path": str(image.disk),
            "boot": {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}
            | ({"sshHostKey": image.ssh_host_key} if image.ssh_host_key else {}),  # VMs show it with their `ssh`
            "source_url": f"file://{image.disk}",
            "error": None,
            "updated_at": now,
        }
        async with self.store.write() as conn:
            tpl = await tpl_q.find_template(conn, TINY_TEMPLATE, None)  # the shared one
            if tpl is None:
                await tpl_q.insert_template(conn, {"id": ids.new_id("tpl"), "name": TINY_TEMPLATE, "node_id": None, "created_at": now, **values})
                log.info("registered template %s", TINY_TEMPLATE)
            elif tpl.image_path != values["image_path"] or tpl.boot != values["boot"] or tpl.status != "ready":
                await tpl_q.set_template(conn, tpl.id, **values)

    async def start(self) -> None:
        make_private(self.data_dir)  # umask 0o077 for this process; 0700/0600 in the data dir
        qemu_confine.configure(self.settings.qemu_confine, self.settings.qemu_user)
        self.images_dir.mkdir(parents=True, exist_ok=True)
        await self.store.open()
        if self.coordinator is not None:
            await self.coordinator.open()
            async with self.coordinator.locked(SINGLETON_NS, STARTUP_KEY):  # replicas start one at a time
                local = await self._prepare_store()
        else:
            local = await self._prepare_store()
        for node_id, driver in local:
            self.registry.add(node_id, driver)
        await self.events.start()
        hooks = ReplicaHooks(
            serve_node=self._serve_node, work_ready=self.engine.wakeup, leading=self.schedules.wake,
            running_resources=self.engine.running_resources,
        )  # fmt: skip
        await self.replicas.start(local, home_of(self.data_dir), hooks)
        if any(d.capabilities.real_vms for _, d in local):
            await self._register_tiny_template()
        if swept := await self.templates.sweep_uploads():
            log.info("removed %d upload(s) a stopped server left half-written", len(swept))
        if swept := await self.isos.sweep():
            log.info("removed %d ISO upload(s) or download(s) a stopped server left half-written", len(swept))
        await self.agents.start()  # remote nodes in the registry before tasks run on them
        await self.engine.start(self.handler_deps)
        await self.readiness.start()
        self.stats_history.start()
        await self.webhook_delivery.start()
        await self.schedules.start()
        self.plugins.start()
        await self.deployments.start()  # reconciles only on the leader, once ready
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")
        self._heartbeats = asyncio.create_task(self._beat(), name="node-heartbeats")
        self.ready = True
        log.info("started: %d node(s), store %s", len(self.replicas.serving), self.store.dialect)

    async def _prepare_store(self) -> list[tuple[str, HypervisorDriver]]:
        """Facts of the installation, the bootstrap organization, usage counters; returns
        this process's local nodes (ids assigned per data dir when replicas share the store)."""
        now = clock.now()
        async with self.store.write() as conn:
            await meta_q.ensure(conn, "cluster_id", ids.new_id("cluster"))
            await meta_q.ensure(conn, "created_at", str(now))
        key_file = await self.tenancy.bootstrap()
        await self.networks.ensure_default()
        if key_file:
            log.warning("created the owner API key of the bootstrap organization: %s (mode 0600)", key_file)
        local = await self._build_nodes()
        async with self.store.write() as conn:
            if self.coordinator is not None and self._nodes is None:
                assigned = await assign_node_ids(conn, home_of(self.data_dir), [n for n, _ in local])
                local = [(node_id, driver) for node_id, (_, driver) in zip(assigned, local)]
            await node_q.recompute_usage(conn, now)
        return local

    async def _serve_node(self, node_id: str, driver: HypervisorDriver) -> None:
        """A node this process now serves: record it, and its VMs' states as its driver tells."""
        await self.cluster.register_node(node_id, driver)
        await self.reconcile([(node_id, driver)])

    async def reconcile(self, nodes: list[tuple[str, HypervisorDriver]] | None = None) -> None:
        """Bring stored VM states in line with what each hypervisor reports (VMs outlive us).

        VMs with work queued or running are left to that work. `nodes`: only these.
        """
        now = clock.now()
        for node_id, driver in self.registry.items() if nodes is None else nodes:
            actual = {r.vm_id: r for r in await driver.list_vms()}
            async with self.store.read() as conn:
                rows = await vm_q.vms_on_node(conn, node_id)
                busy = await job_q.active_task_for(conn, [r.id for r in rows])
            changes: list[tuple[str, dict[str, Any]]] = []
            for vm in rows:
                if vm.id in busy or vm.status in (VmStatus.PROVISIONING, VmStatus.ERROR):
                    continue
                runtime = actual.get(vm.id)
                if runtime is None:
                    changes.append((vm.id, {"status": VmStatus.ERROR.value, "error": f"{node_id} no longer has this VM", "started_at": None}))
                elif runtime.state == PowerState.RUNNING and vm.status != VmStatus.RUNNING:
                    changes.append((vm.id, {"status": VmStatus.RUNNING.value, "started_at": runtime.started_at, "running_spec": runtime.running_spec}))
                elif runtime.state != PowerState.RUNNING and vm.status != VmStatus.STOPPED:
                    error = runtime.error if runtime.state == PowerState.CRASHED else None
                    changes.append((vm.id, {"status": VmStatus.ERROR.value if error else VmStatus.STOPPED.value, "error": error, "started_at": None}))
            unowned = set(actual) - {r.id for r in rows}
            if unowned:
                log.warning("node %s runs VMs vmplane has no record of (left alone): %s", node_id, ", ".join(sorted(unowned)))
            if changes:
                async with self.store.write() as conn:
                    for vm_id, values in changes:
                        await vm_q.set_status(conn, vm_id, values.pop("status"), updated_at=now, **values)
                log.warning("reconciled %d VM(s) on %s with the hypervisor", len(changes), node_id)

    async def _maintain(self) -> None:
        """Housekeeping every minute: event and audit retention, expired idempotency keys (by
        the leading replica), this process's API key use."""
        while True:
            try:
                now = clock.now()
                if self.replicas.leader:
                    async with self.store.write() as conn:
                        await ev_q.prune(conn, before=now - self.settings.event_retention_days * 86400, keep_last=self.settings.event_retention_max)
                        await idem_q.forget_older_than(conn, now - 86400)
                        await t_q.prune_audit(conn, before=now - self.settings.audit_retention_days * 86400)
                    await scopes.sweep_expired(self.store, self.schedules.wake)  # schedules, webhooks, deployments of keys that expired
                await self.tenancy.flush_key_use()
            except Exception:
                log.exception("housekeeping failed")
            await asyncio.sleep(60)

    async def _beat(self) -> None:
        """The local nodes' heartbeat: every `heartbeat_seconds` (an agent's cadence), one
        update of the nodes this process serves, so a node's `heartbeatAt` says when the
        process serving it last was alive (not when it started). Not per request: a timer."""
        while True:
            await asyncio.sleep(self.agents.heartbeat_seconds)
            try:
                await self.cluster.heartbeat(self.replicas.serving)
            except Exception as exc:  # the store is away for a moment: the next beat tries again
                log.warning("node heartbeat failed (will retry): %s", exc)

    async def go_away(self, wait: float = 3.0) -> None:
        """The server is shutting down: tell every open event stream and console to go away
        (SSE streams end, WebSockets close with 1001), and wait up to `wait` seconds for them
        to close, so that no open stream holds the shutdown up."""
        self.ready = False
        log.info("shutting down: ending %d open stream(s) of clients (%d console(s))", self.streams.open, self.consoles)
        self.stopping.set()
        self.events.go_away()
        deadline = asyncio.get_running_loop().time() + wait
        while (self.events.subscriber_count or self.consoles) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        if self.events.subscriber_count or self.consoles:
            log.warning("%d event stream(s) and %d console(s) still open at shutdown", self.events.subscriber_count, self.consoles)

    async def _log_vms_left_running(self) -> None:
        """Say what stopping leaves behind, node by node: VMs outlive the control plane
        (re-attached at the next start), simulated ones do not. "stopping: 3 VMs keep running
        on node-1 (re-attached at the next start)"."""
        running: dict[str, int] = {}
        simulated: dict[str, int] = {}
        for node_id, driver in self.registry.items():
            if not driver.capabilities.local:
                continue  # its agent keeps them, and is not stopping
            try:
                n = sum(1 for r in await driver.list_vms() if r.state == PowerState.RUNNING)
            except Exception as exc:
                log.warning("cannot tell which VMs of %s run: %s", node_id, exc)
                continue
            if n:
                (running if driver.capabilities.real_vms else simulated)[node_id] = n
        vms, where, many = _vms_on_nodes(running)
        line = f"stopping: {vms} {'keep' if many else 'keeps'} running {where}" + (" (re-attached at the next start)" if running else "")
        if simulated:
            vms, where, many = _vms_on_nodes(simulated, "simulated ")
            line += f"; {vms} {where} {'end' if many else 'ends'} with this process"
        log.warning("%s", line)

    async def stop(self) -> None:
        self.ready = False
        self.stopping.set()
        try:
            await self._log_vms_left_running()
        except Exception:
            log.exception("counting the VMs left running failed")
        await self.replicas.stop_looking()  # a stopping replica takes no node over
        for task in (self._maintenance, self._heartbeats):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self.tenancy.failed_auths.stop()
        await self.schedules.stop()
        await self.plugins.stop()
        await self.deployments.stop()
        await self.engine.stop()
        await self.readiness.stop()
        await self.stats_history.stop()
        await self.agents.stop()
        await self.webhook_delivery.stop()
        await self.events.stop()
        await self.replicas.stop()
        if self.coordinator is not None:
            await self.coordinator.close()
        await self.store.close()



def _vms_on_nodes(counts: dict[str, int], kind: str = "") -> tuple[str, str, bool]:
    """("3 VMs", "on node-1", plural), ("4 VMs", "(3 on node-1, 1 on node-2)", True), ("no VMs", "on this host", True)."""
    total = sum(counts.values())
    if not total:
        return f"no {kind}VMs", "on this host", True
    where = f"on {next(iter(counts))}" if len(counts) == 1 else "(" + ", ".join(f"{n} on {node}" for node, n in counts.items()) + ")"
    return f"{total} {kind}VM{'s' if total != 1 else ''}", where, total != 1
