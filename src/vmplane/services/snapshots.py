"""Snapshots: capture a VM's disk (live or offline) with its configuration and firewall; create
VMs from them (copy-on-write clones, which take the captured firewall); revert a VM to one. A
snapshot that VMs were cloned from cannot be deleted (409) until those VMs are: their disks are
overlays on it. Snapshots are found by id or uuid.

A VM made from a snapshot keeps its source's SSH keys and cloud-init documents (`carried_seed`)
unless its request gives its own: each given field replaces the source's (keys are not added
to the source's). Its seed still names the VM itself: its own instance-id (cloud-init runs
its per-instance modules again and applies the keys) and hostname.

A snapshot's name is display text (`domain.names.check_display_name`, as a VM's display name: "before upgrade" is a name): it
reaches no file path, command line or qcow2 tag — the node keeps the image as
`snapshots/<id>.qcow2` (drivers/qemu/snapshots.py) — only job logs and answers."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row

from .. import clock, ids
from ..auth import Principal
from ..domain.names import check_display_name
from ..errors import Conflict, InvalidRequest, InvalidState, NotFound
from ..store import snapshots as snap_q
from .vms import get_visible_vm, visible

if TYPE_CHECKING:
    from ..jobs.engine import JobEngine
    from ..store import Store
    from .networks import NetworkService
    from .tenancy import TenancyService

IDENTITY_KEYS = ("instance-id", "instance_id", "local-hostname", "local_hostname", "hostname")
"""meta-data keys that name a VM: a clone's seed names the clone, never its source"""
_IDENTITY_LINE = re.compile(r"^[\"']?(?:" + "|".join(map(re.escape, IDENTITY_KEYS)) + r")[\"']?[ \t]*:.*(?:\n|$)", re.MULTILINE)


def carried_seed(source_spec: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` (a new VM's request) with what its seed takes from the snapshot's VM
    (`source_spec`, its stored spec when the snapshot was taken): its `sshKeys` unless the
    request gives keys, its `cloudInit` unless the request gives one, less the meta-data keys
    that name the source VM (the new VM's own id and name are its instance-id and hostname)."""
    out = dict(extra)
    keys = source_spec.get("sshKeys")
    if not out.get("sshKeys") and isinstance(keys, list) and keys:
        out["sshKeys"] = list(keys)
    cloud = source_spec.get("cloudInit")
    if not out.get("cloudInit") and isinstance(cloud, dict) and cloud:
        cloud = dict(cloud)
        meta = cloud.get("metaData")
        if isinstance(meta, dict):
            cloud["metaData"] = {k: v for k, v in meta.items() if k not in IDENTITY_KEYS}
        elif isinstance(meta, str):
            cloud["metaData"] = _IDENTITY_LINE.sub("", meta)
        out["cloudInit"] = cloud
    return out


class SnapshotService:
    def __init__(self, *, store: Store, engine: JobEngine, networks: NetworkService, tenancy: TenancyService) -> None:
        self.store = store
        self.engine = engine
        self.networks = networks
        self.tenancy = tenancy

    async def get(self, snapshot_id: str, who: Principal) -> Row[*tuple[Any, ...]]:
        """A snapshot (by id or uuid) the caller may see."""
        async with self.store.read() as conn:
            row = await snap_q.get_snapshot(conn, snapshot_id)
        if row is None or not visible(row, who):
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return row

    async def list(self, who: Principal, vm_id: str | None = None) -> Sequence[Row[*tuple[Any, ...]]]:
        async with self.store.read() as conn:
            return await snap_q.list_snapshots(conn, who.org_id, who.team_id, vm_id)

    async def create(self, vm_ref: str, name: str | None, who: Principal) -> tuple[str, str]:
        """Submit a snapshot-create job; returns (job id, snapshot id). Without a name the
        snapshot is named after its id."""
        snap_id = ids.new_id("snap")
        name = snap_id if name is None else name
        check_display_name(name, "name")
        vm = await get_visible_vm(self.store, vm_ref, who)
        if vm.node_id is None:
            raise InvalidState(f"VM {vm.id} is {vm.status}; it has no disk to snapshot yet", current=vm.status)
        now = clock.now()
        async with self.store.write() as conn:
            config = {
                "resources": {"cpu": vm.cpu, "ramMb": vm.ram_mb, "diskGb": vm.disk_gb},
                "templateId": vm.template_id,
                "tags": vm.tags,
                "spec": vm.spec.to_json(),
                "firewall": (await self.networks.firewall_of(conn, vm.id)).to_wire(),
            }
            await self.tenancy.reserve(conn, vm.org_id, snapshots=1)
            await snap_q.insert_snapshot(
                conn,
                {"id": snap_id, "uuid": ids.new_uuid(), "org_id": vm.org_id, "team_id": vm.team_id, "vm_id": vm.id, "vm_uuid": vm.uuid, "vm_name": vm.name,
                 "node_id": vm.node_id, "template_id": vm.template_id, "name": name, "status": "creating",
                 "size_bytes": 0, "config": config, "created_at": now, "updated_at": now},  # fmt: skip
            )
            job_id = await self.engine.submit(conn, "snapshot-create", who, [(vm.id, {"snapshotId": snap_id})])
        self.engine.wakeup()
        return job_id, snap_id

    async def rename(self, snapshot_id: str, name: str, who: Principal) -> Row[*tuple[Any, ...]]:
        check_display_name(name, "name")
        snap = await self.get(snapshot_id, who)
        async with self.store.write() as conn:
            await snap_q.set_snapshot(conn, snap.id, name=name, updated_at=clock.now())
        return await self.get(snap.id, who)

    async def delete(self, snapshot_id: str, who: Principal) -> str:
        snap = await self.get(snapshot_id, who)
        async with self.store.write() as conn:
            users = await snap_q.dependents(conn, snap.id)
            if users:
                raise Conflict(f"snapshot {snap.id} backs the disks of {users} VM(s) cloned from it; delete them first", vms=users)
            if snap.status == "creating":
                raise InvalidState(f"snapshot {snap.id} is still being taken", current="creating")
            await snap_q.set_snapshot(conn, snap.id, status="deleting", updated_at=clock.now())
            job_id = await self.engine.submit(conn, "snapshot-delete", who, [(snap.id, {})])
        self.engine.wakeup()
        return job_id

    async def revert(self, vm_ref: str, snapshot_id: str, who: Principal) -> str:
        vm = await get_visible_vm(self.store, vm_ref, who)
        snap = await self.get(snapshot_id, who)
        if snap.vm_id != vm.id:
            raise InvalidRequest(f"snapshot {snap.id} is of VM {snap.vm_id}, not {vm.id}", field="snapshotId")
        if snap.status != "ready":
            raise InvalidState(f"snapshot {snap.id} is {snap.status}, not ready", current=snap.status)
        async with self.store.write() as conn:
            job_id = await self.engine.submit(conn, "vm-revert", who, [(vm.id, {"snapshotId": snap.id})])
        self.engine.wakeup()
        return job_id

    @staticmethod
    def seed_for(snap: Row[*tuple[Any, ...]], extra: Mapping[str, Any]) -> dict[str, Any]:
        """A new VM's request `extra` with the seed fields it takes from snapshot `snap`
        (`carried_seed`)."""
        return carried_seed(snap.config.get("spec") or {}, extra)

    async def for_new_vm(self, snapshot_id: str, who: Principal) -> Row[*tuple[Any, ...]]:
        snap = await self.get(snapshot_id, who)
        if snap.status != "ready":
            raise InvalidState(f"snapshot {snap.id} is {snap.status}, not ready", current=snap.status)
        return snap
