"""The core built by hand, as runtime.py builds it but without the Runtime or an app: the
SQLite store in a tmp dir, one `sim` node, and each service given exactly what it uses.
Tests here call services and the job engine directly, no HTTP."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from vmplane.auth import ADMIN_USER, DEFAULT_ORG, Principal, Role
from vmplane.backupstore import BackupStore
from vmplane.config import Settings
from vmplane.drivers.registry import NodeRegistry
from vmplane.drivers.sim import SimDriver
from vmplane.events.bus import EventBus
from vmplane.jobs.deps import HandlerDeps
from vmplane.jobs.engine import JobEngine
from vmplane.jobs.handlers import all_handlers
from vmplane.outbound import Outbound
from vmplane.replicas import Replicas
from vmplane.services.billing import Billing
from vmplane.services.capacity import Capacity
from vmplane.services.cluster import ClusterService
from vmplane.services.guest import GuestService
from vmplane.services.imports import ImportService
from vmplane.services.isos import IsoService
from vmplane.services.jobs import JobService
from vmplane.services.networks import NetworkService
from vmplane.services.plugins import PluginService
from vmplane.services.secrets import SecretBox
from vmplane.services.snapshots import SnapshotService
from vmplane.services.templates import TemplateService
from vmplane.services.tenancy import TenancyService
from vmplane.services.uploads import Uploads
from vmplane.services.vms import VmService
from vmplane.services.vsphere import VsphereService
from vmplane.store import Store
from vmplane.streams import StreamLimits

NODE = "node-1"


@dataclass
class Core:
    settings: Settings
    store: Store
    driver: SimDriver
    engine: JobEngine
    deps: HandlerDeps
    events: EventBus
    jobs: JobService
    tenancy: TenancyService
    vms: VmService
    owner: Principal
    """the owner of the bootstrap organization"""
    templates: TemplateService
    replicas: Replicas


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[Core]:
    data = tmp_path / "data"
    settings = Settings(data_dir=data, driver="sim", sim_nodes=1, lease_seconds=5.0)
    box = SecretBox(data / "secret.key")
    store = Store(f"sqlite:///{data / 'vmplane.db'}", secret_box=box)
    await store.open()
    replicas = Replicas(store, settings, None)  # no coordinator: this process serves every node
    registry = NodeRegistry()
    outbound = Outbound(settings, store)
    capacity = Capacity(store, settings)
    engine = JobEngine(store, settings, all_handlers())
    events = EventBus(store)
    billing = Billing(store=store, settings=settings)
    tenancy = TenancyService(store=store, settings=settings, data_dir=data, schedules_changed=lambda: None)
    jobs = JobService(store=store, engine=engine, events=events)
    cluster = ClusterService(store=store, settings=settings, capacity=capacity)
    guest = GuestService(store=store, registry=registry, streams=StreamLimits(10, 10))
    vsphere = VsphereService(store=store, outbound=outbound, secret_box=box)
    networks = NetworkService(store=store, settings=settings, engine=engine, tenancy=tenancy)
    imports = ImportService(
        store=store,
        settings=settings,
        data_dir=data,
        engine=engine,
        networks=networks,
        outbound=outbound,
        registry=registry,
        vsphere=vsphere,
    )
    uploads = Uploads(settings.max_download_bytes)
    templates = TemplateService(
        store=store, settings=settings, engine=engine, imports=imports, outbound=outbound, tenancy=tenancy, images_dir=data / "images",
        home=lambda: replicas.home, uploads=uploads,
    )  # fmt: skip
    isos = IsoService(
        store=store, settings=settings, engine=engine, outbound=outbound, tenancy=tenancy, uploads=uploads, isos_dir=data / "isos"
    )
    snapshots = SnapshotService(store=store, engine=engine, networks=networks, tenancy=tenancy)
    plugins = PluginService(
        store=store, settings=settings, outbound=outbound, registry=registry, leadership=replicas, templates=templates, tenancy=tenancy
    )
    vms = VmService(
        store=store, settings=settings, engine=engine, jobs=jobs, billing=billing, capacity=capacity, networks=networks,
        plugins=plugins, snapshots=snapshots, tenancy=tenancy, isos=isos,
    )  # fmt: skip
    deps = HandlerDeps(
        store=store, settings=settings, registry=registry, home=replicas, capacity=capacity, billing=billing, networks=networks,
        guest=guest, imports=imports, vsphere=vsphere, vms=vms, outbound=outbound,
        backup_store=BackupStore(data / "backups", data / "backup-repo-password"), data_dir=data, images_dir=data / "images",
    )  # fmt: skip

    await tenancy.bootstrap()
    await networks.ensure_default()
    driver = SimDriver(hostname=NODE, cpu=8, ram_mb=8192, disk_gb=100, latency=0.001)
    await driver.open()
    registry.add(NODE, driver)
    await cluster.register_node(NODE, driver)
    await events.start()  # as the runtime does once its nodes are known: JobService.wait hears a job end
    owner = Principal(DEFAULT_ORG, ADMIN_USER, "admin", Role.OWNER)
    yield Core(settings, store, driver, engine, deps, events, jobs, tenancy, vms, owner, templates, replicas)
    await engine.stop()
    await events.stop()
    await store.close()
