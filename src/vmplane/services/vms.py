"""VMs: validate requests, reserve names, and submit create/update/delete/power jobs."""

from __future__ import annotations

import builtins
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, ids
from ..auth import Principal
from ..domain import BOOT_DEVICES, DEFAULT_RESOURCES, FIRMWARES, NewVm, Resources, Vm, VmStatus
from ..domain.names import NAME_RE, check_display_name
from ..domain.network import Firewall
from ..errors import Conflict, DriverError, InvalidRequest, InvalidState, NotFound, Reason
from ..placement import Demand
from ..store import guest as guest_q
from ..store import jobs as job_q
from ..store import networks as net_q
from ..store import nodes as node_q
from ..store import templates as tpl_q
from ..store import vms as vm_q
from ..vmstates import VmOp, allows, require_state
from . import pages, vm_names

if TYPE_CHECKING:
    from sqlalchemy import Row

    from ..config import Settings
    from ..jobs.engine import JobEngine
    from ..store import Store
    from .billing import Billing
    from .capacity import Capacity
    from .isos import IsoService
    from .jobs import JobService
    from .networks import NetworkService
    from .plugins import PluginService
    from .snapshots import SnapshotService
    from .tenancy import TenancyService


TAG_RE = re.compile(r"^[A-Za-z0-9_.:/=+-]{1,64}$")

POWER_JOBS: dict[str, str] = {"start": "vm-start", "stop": "vm-stop", "shutdown": "vm-shutdown", "reboot": "vm-reboot", "power-cycle": "vm-power-cycle"}
"""power action -> its job type (the states each may start from: vmstates.OPERATIONS)"""


class Owned(Protocol):
    """What `visible` reads of a record: whose it is."""

    @property
    def org_id(self) -> str | None: ...
    @property
    def team_id(self) -> str | None: ...


def visible(row: Owned, who: Principal) -> bool:
    """Resources of another organization, or of another team for a team-scoped credential,
    do not exist as far as the caller can tell."""
    return row.org_id == who.org_id and (who.team_id is None or row.team_id == who.team_id)


async def get_visible_vm(store: Store, ref: str, who: Principal) -> Vm:
    """A VM the caller may see (another organization's, or team's, answers 404): for the
    services that act on a VM and need no more of VmService than this."""
    row = await vm_q.find_vm(store, ref)
    if row is None or not visible(row, who):
        raise NotFound(f"VM {ref} does not exist")
    return row


def check_name(name: str, field_name: str = "name") -> None:
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"{field_name} {name!r} is not valid: use 1-63 letters, digits and '-', not starting or ending with '-'",
            field=field_name,
        )


SSH_KEY_RE = re.compile(r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]+( [^\r\n]*)?$")
AUTO_PORTS = range(20000, 40000)


def check_ssh_keys(keys: Sequence[str], where: str) -> None:
    for i, key in enumerate(keys):
        if len(key) > 8192 or not SSH_KEY_RE.match(key.strip()):
            raise InvalidRequest(f"{where}[{i}] is not an OpenSSH public key (e.g. 'ssh-ed25519 AAAA… user@host')", field=f"{where}[{i}]")


PCI_REF_RE = re.compile(r"^(?:[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]|[0-9a-f]{4}:[0-9a-f]{4})$")


def check_pci(refs: Sequence[str], where: str) -> None:
    if len(refs) > 8:
        raise InvalidRequest("a VM takes at most 8 PCI devices", field=where)
    for i, ref in enumerate(refs):
        if not PCI_REF_RE.match(ref):
            raise InvalidRequest(
                f"{where}[{i}] {ref!r} is neither a PCI address (0000:01:00.0) nor a vendor:device model (10de:2204), lower-case hex",
                field=f"{where}[{i}]",
            )
    addresses = [r for r in refs if len(r) == 12]  # models (vendor:device) may repeat
    if len(set(addresses)) != len(addresses):
        raise InvalidRequest(f"{where} names a device twice", field=where)


def port_is_free(port: int, proto: str, address: str = "127.0.0.1") -> bool:
    """True if nothing on this host holds `address`:port (a forwarded port's bind would work)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, kind) as s:
        if kind == socket.SOCK_STREAM:
            # as QEMU's slirp binds a forward: the TIME_WAIT of a connection to a VM just
            # stopped does not hold the port, a listener does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def check_tags(tags: Sequence[str], field_name: str = "tags") -> None:
    for i, tag in enumerate(tags):
        if not TAG_RE.match(tag):
            raise InvalidRequest(f"{field_name}[{i}] {tag!r} is not a valid tag (1-64 characters of A-Z a-z 0-9 _ . : / = + -)", field=f"{field_name}[{i}]")


def check_boot_order(order: Sequence[str], field_name: str = "bootOrder") -> tuple[str, ...]:
    if not isinstance(order, (list, tuple)) or not order or not all(isinstance(d, str) for d in order):
        raise InvalidRequest(f"{field_name} must list boot devices: {', '.join(BOOT_DEVICES)}", field=field_name)
    for i, device in enumerate(order):
        if device not in BOOT_DEVICES:
            raise InvalidRequest(f"{field_name}[{i}] {device!r} is not a boot device: {', '.join(BOOT_DEVICES)}", field=f"{field_name}[{i}]")
    if len(set(order)) != len(order):
        raise InvalidRequest(f"{field_name} names a device twice", field=field_name)
    return tuple(order)


def check_firmware(firmware: str, field_name: str = "firmware") -> str:
    if firmware not in FIRMWARES:
        raise InvalidRequest(f"{field_name} {firmware!r} is not one of {', '.join(FIRMWARES)}", field=field_name)
    return firmware


def _login_of(source_spec: Any) -> dict[str, str]:
    """The login user a VM from a snapshot takes: its source VM's when it had one (a VM from
    before templates knew theirs: its template's now, as any new VM)."""
    login = source_spec.get("loginUser") if isinstance(source_spec, dict) else None
    return {"loginUser": login} if isinstance(login, str) and login else {}


@dataclass(frozen=True)
class VmChange:
    name: str | None = None
    display_name: str | None = None
    tags: tuple[str, ...] | None = None
    cpu: int | None = None
    ram_mb: int | None = None
    disk_gb: int | None = None
    set_cdrom: bool = False
    """change the CD-ROM: to `cdrom` (an ISO's id or name), or empty it (None)"""
    cdrom: str | None = None
    boot_order: tuple[str, ...] | None = None
    firmware: str | None = None

    @property
    def boot_changes(self) -> bool:
        return self.set_cdrom or self.boot_order is not None or self.firmware is not None


@dataclass(frozen=True)
class _Resolved:
    """One VM of a create as `_prepare` leaves it: what its spec leaves open, decided."""

    spec: NewVm
    """the request as `_resolve` filled it in (a clone's template and node, say)"""
    id: str
    name: str | None
    """None: named after its display name, the name picked as it is inserted"""
    resources: Resources
    team_id: str | None
    networks: Sequence[Row[*tuple[Any, ...]]]
    """the networks it joins, one NIC each"""


class VmService:
    def __init__(self, *, store: Store, settings: Settings, engine: JobEngine, jobs: JobService, billing: Billing, capacity: Capacity, networks: NetworkService, plugins: PluginService, snapshots: SnapshotService, tenancy: TenancyService, isos: IsoService) -> None:
        self.store = store
        self.isos = isos
        self.settings = settings
        self.engine = engine
        self.jobs = jobs
        self.billing = billing
        self.capacity = capacity
        self.networks = networks
        self.plugins = plugins
        self.snapshots = snapshots
        self.tenancy = tenancy

    async def get(self, ref: str, who: Principal) -> Vm:
        """A VM the caller may see (another organization's, or team's, answers 404)."""
        return await get_visible_vm(self.store, ref, who)

    async def list(
        self, who: Principal, *, node: str | None, status: str | None, tag: str | None, name: str | None, limit: int, page_token: str | None
    ) -> tuple[Sequence[Vm], str | None]:
        if status is not None and status not in VmStatus.__members__.values():
            raise InvalidRequest(f"status {status!r} is not one of {', '.join(VmStatus)}", field="status")
        after = pages.decode("vms", page_token)
        rows = await vm_q.find_vms(
            self.store, node=node, status=status, tag=tag, name=name, after_seq=after, limit=limit + 1, org_id=who.org_id, team_id=who.team_id
        )
        token = pages.encode("vms", rows[limit - 1].seq) if len(rows) > limit else None
        return rows[:limit], token

    async def every(self, who: Principal) -> builtins.list[Vm]:
        """Every VM the caller may see, all pages (faces whose lists are not paged)."""
        rows: list[Vm] = []
        token = None
        while True:
            page, token = await self.list(who, node=None, status=None, tag=None, name=None, limit=500, page_token=token)
            rows += page
            if token is None:
                return rows

    async def by_name(self, name: str, who: Principal) -> Vm:
        """The VM the caller may see named `name` (faces that address VMs by name): names are
        unique within an organization, and only the caller's organization is searched."""
        if not name or len(name) > 63:
            raise NotFound(f"vm {name!r} not found")
        rows, _ = await self.list(who, node=None, status=None, tag=None, name=name, limit=1, page_token=None)
        if not rows:
            raise NotFound(f"vm {name!r} not found")
        return rows[0]

    async def create(self, specs: Sequence[NewVm], who: Principal, *, check_capacity: bool = True) -> tuple[str, builtins.list[str]]:
        """Reserve names and ids for every VM and submit one vm-create job with a task each.

        `check_capacity`: refuse (NoCapacity) VMs that the nodes could not take right now, all
        of them together, or (InvalidRequest, BEYOND_ANY_NODE) one bigger than any node, before
        anything is recorded, instead of leaving `error` VMs behind (the task's claim still
        decides: another create may take the room first). Every face's create checks."""
        new = await self._prepare(specs, who, check_capacity)
        async with self.store.write() as conn:
            rows = await self._insert(conn, new, who)
            job_id = await self.engine.submit(
                conn, "vm-create", who, [(r["id"], {"start": n.spec.start}) for r, n in zip(rows, new)]
            )
        self.engine.wakeup()
        return job_id, [r["id"] for r in rows]

    async def record(self, conn: AsyncConnection, spec: NewVm, who: Principal) -> dict[str, Any]:
        """Record one new VM (provisioning, on no node yet: names, quota, addresses, ports,
        billing) inside the caller's transaction, with no job: for work that defines the VM
        itself (an import, whose disk it brings). Validation as `create`'s."""
        new = await self._prepare([spec], who, False)
        return (await self._insert(conn, new, who))[0]

    def check_bulk(self, count: int, field: str = "body") -> None:
        """InvalidRequest naming `field` when one request asks for more than `max_bulk` VMs
        (faces call it before parsing each spec; `create` checks again)."""
        limit = self.settings.max_bulk
        if count > limit:
            raise InvalidRequest(f"{field}: at most {limit} VMs per request, this one asks for {count}", field=field, limit=limit)

    async def _prepare(self, specs: Sequence[NewVm], who: Principal, check_capacity: bool) -> builtins.list[_Resolved]:
        if not specs:
            raise InvalidRequest("give at least one VM to create", field="body")
        self.check_bulk(len(specs))
        resolved = [await self._resolve(s, who, i if len(specs) > 1 else None) for i, s in enumerate(specs)]
        vm_ids = [ids.new_id("vm") for _ in specs]
        names = [s.name if s.name is not None else None if s.display_name is not None else vm_id for (s, _), vm_id in zip(resolved, vm_ids)]
        seen: set[str] = set()
        for i, ((spec, _), name) in enumerate(zip(resolved, names)):
            where = f"[{i}].name" if len(specs) > 1 else "name"
            prefix = f"[{i}]." if len(specs) > 1 else ""
            if spec.display_name is not None:
                check_display_name(spec.display_name, f"{prefix}displayName")
            if name is not None:  # None: named after its display name, uniquely, as it is inserted
                check_name(name, where)
            check_tags(spec.tags, f"{prefix}tags")
            if spec.boot_order is not None:
                check_boot_order(spec.boot_order, f"{prefix}bootOrder")
            if spec.firmware is not None:
                check_firmware(spec.firmware, f"{prefix}firmware")
            check_ssh_keys(spec.extra.get("sshKeys", []), f"{prefix}sshKeys")
            guest_ports = [(e["port"], e["protocol"]) for e in spec.extra.get("expose", [])]
            if len(set(guest_ports)) != len(guest_ports):
                raise InvalidRequest("expose lists a guest port twice", field=f"{prefix}expose")
            if name is not None:
                if name in seen:
                    raise InvalidRequest(f"name {name!r} appears twice in the request", field=where)
                seen.add(name)
        teams = {s.team: await self.tenancy.team_id(who, s.team) for s, _ in resolved}
        networks: dict[tuple[str, ...], Sequence[Row[*tuple[Any, ...]]]] = {}
        for i, (s, _) in enumerate(resolved):
            prefix = f"[{i}]." if len(specs) > 1 else ""
            if s.networks not in networks:
                networks[s.networks] = await self.networks.resolve(s.networks, who, f"{prefix}networks")
            check_pci(s.pci, f"{prefix}devices.pciPassthrough")
        if check_capacity:
            await self.capacity.check([
                Demand(cpu=r.cpu, ram_mb=r.ram_mb, disk_gb=r.disk_gb, node_id=s.node_id, pci=s.pci,
                       cdrom=bool(s.cdrom) or s.boot_order is not None or s.firmware not in (None, "bios"))
                for s, r in resolved
            ])  # fmt: skip
        return [
            _Resolved(spec=s, id=vm_id, name=name, resources=r, team_id=teams[s.team], networks=networks[s.networks])
            for (s, r), vm_id, name in zip(resolved, vm_ids, names)
        ]

    async def _insert(self, conn: AsyncConnection, new: Sequence[_Resolved], who: Principal) -> builtins.list[dict[str, Any]]:
        now = clock.now()
        await self.tenancy.reserve(
            conn, who.org_id, vms=len(new), vcpu=sum(n.resources.cpu for n in new),
            ram_mb=sum(n.resources.ram_mb for n in new), disk_gb=sum(n.resources.disk_gb for n in new),
        )  # fmt: skip
        taken = await vm_q.names_taken(conn, [n.name for n in new if n.name is not None], who.org_id)  # names are the organization's own
        if taken:
            raise Conflict(f"a VM named {sorted(taken)[0]!r} already exists", reason=Reason.NAME_TAKEN, names=sorted(taken))
        template_refs = {n.spec.template_id for n in new if n.spec.template_id}
        templates = {}
        for ref in template_refs:
            tpl = await tpl_q.find_template(conn, ref, who.org_id)  # its own, else a shared one
            if tpl is None:
                raise InvalidRequest(f"templateId {ref!r} does not exist", field="templateId")
            if tpl.status != "ready":
                raise InvalidState(f"template {ref} is {tpl.status}, not ready", current=tpl.status, required="ready")
            templates[ref] = tpl
        for ref in {n.spec.node_id for n in new if n.spec.node_id}:
            if await node_q.get_node(conn, ref) is None:
                raise InvalidRequest(f"nodeId {ref!r} does not exist", field="nodeId")
        cdroms = {ref: (await self.isos.for_vm(conn, ref, who, "cdrom.isoId", importing=True)).id for ref in {n.spec.cdrom for n in new if n.spec.cdrom}}
        rows: builtins.list[dict[str, Any]] = []
        for n in new:
            spec = n.spec
            tpl = templates.get(spec.template_id) if spec.template_id else None
            rows.append(
                {
                    "id": n.id,
                    "uuid": ids.new_uuid(),
                    "name": n.name or "",  # a display name's: picked by vm_names.insert_named
                    "org_id": who.org_id,
                    "team_id": n.team_id,
                    "node_id": None,
                    "template_id": tpl.id if tpl is not None else None,
                    "snapshot_id": spec.snapshot,
                    "status": VmStatus.PROVISIONING.value,
                    "cpu": n.resources.cpu,
                    "ram_mb": n.resources.ram_mb,
                    "disk_gb": n.resources.disk_gb,
                    "tags": list(spec.tags),
                    "spec": {
                        "nodeId": spec.node_id,
                        **({"sourceName": tpl.name} if tpl is not None else {}),
                        **({"loginUser": tpl.login_user} if tpl is not None else {}),  # kept: a later template change leaves the VM's
                        **spec.extra,
                        **({"pciPassthrough": list(spec.pci)} if spec.pci else {}),
                        **({"bootOrder": list(spec.boot_order)} if spec.boot_order is not None else {}),
                        **({"firmware": spec.firmware} if spec.firmware is not None else {}),
                    },
                    "cdrom_iso_id": cdroms[spec.cdrom] if spec.cdrom else None,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        await self.networks.allocate(conn, [(r, n.networks) for r, n in zip(rows, new)])
        await vm_names.insert_named(conn, rows, [(n.name, n.spec.display_name) for n in new], who.org_id)
        await self._reserve_ports(conn, rows)
        for row, n in zip(rows, new):
            if n.spec.firewall is not None:
                await net_q.set_firewall(conn, row["id"], n.spec.firewall.to_wire(), now)
        await self.billing.allocated(conn, rows)
        return rows

    async def _resolve(self, spec: NewVm, who: Principal, index: int | None) -> tuple[NewVm, Resources]:
        """Fill in what a spec leaves to defaults; a VM from a snapshot takes the snapshot's
        template, node and resources, and its disk may only grow. Returns the spec and the
        VM's resources (the spec's, filled in)."""
        prefix = "" if index is None else f"[{index}]."
        if spec.plugin is not None:
            spec = await self._from_plugin(spec, who, f"{prefix}plugin")
        if spec.snapshot is None:
            firewall = spec.firewall
            want = spec.resources if spec.resources is not None else DEFAULT_RESOURCES
            if spec.disk_gb is not None:
                want = replace(want, disk_gb=spec.disk_gb)
            spec = replace(spec, resources=want)
        else:
            snap = await self.snapshots.for_new_vm(spec.snapshot, who)
            if spec.template_id is not None:
                raise InvalidRequest("give snapshotId or templateId, not both", field=f"{prefix}templateId")
            if spec.node_id is not None and spec.node_id != snap.node_id:
                raise InvalidRequest(f"snapshot {snap.id} lives on {snap.node_id}; its clones go there", field=f"{prefix}nodeId")
            r = snap.config["resources"]
            base = Resources(r["cpu"], r["ramMb"], r["diskGb"])
            want = spec.resources or base
            if spec.disk_gb is not None:
                want = replace(want, disk_gb=spec.disk_gb)
            if want.disk_gb < base.disk_gb:
                raise InvalidRequest(
                    f"resources.diskGb may only grow from the snapshot's {base.disk_gb} GB",
                    field=f"{prefix}resources.disk_gb", reason=Reason.CANNOT_SHRINK, minimum=base.disk_gb,
                )  # fmt: skip
            spec = replace(
                spec, resources=want, template_id=snap.template_id, node_id=snap.node_id, snapshot=snap.id,
                extra={**self.snapshots.seed_for(snap, spec.extra), "sourceName": snap.name, **_login_of((snap.config or {}).get("spec"))},
            )  # fmt: skip
            # a clone takes the firewall its source had when the snapshot was taken
            captured = snap.config.get("firewall")
            firewall = spec.firewall if spec.firewall is not None else (Firewall.from_wire(captured) if captured else None)
        if spec.ipv6_ingress is not None:
            firewall = spec.ipv6_ingress.apply_to(firewall or Firewall())
        return replace(spec, firewall=firewall), want

    async def _from_plugin(self, spec: NewVm, who: Principal, field_name: str) -> NewVm:
        assert spec.plugin is not None
        p = await self.plugins.for_new_vm(spec.plugin, who, field_name)
        if spec.snapshot is not None:
            raise InvalidRequest("a VM from a plugin boots the plugin's image, not a snapshot", field=field_name)
        extra = dict(spec.extra)
        extra["plugin"] = {"name": p.name, "runtime": p.runtime, "version": p.version, "shared": p.shared}
        if p.cloud_init and not extra.get("cloudInit"):
            extra["cloudInit"] = p.cloud_init
        expose = [dict(e) for e in extra.get("expose", [])]
        if not any(e["port"] == p.port and e.get("protocol", "tcp") == "tcp" for e in expose):
            expose.append({"port": p.port, "hostPort": None, "protocol": "tcp"})
        extra["expose"] = expose
        resources = spec.resources or replace(DEFAULT_RESOURCES, cpu=p.cpu, ram_mb=max(64, p.ram_mb))
        return replace(spec, resources=resources, template_id=spec.template_id or p.template_id, extra=extra)

    async def create_and_wait(self, spec: NewVm, who: Principal, timeout: float) -> Vm:
        """Create one VM and wait up to `timeout` seconds for it to be created: returns the VM
        (`running` if it was started in time, still `provisioning`/`starting` otherwise).

        For APIs whose create answers with the VM itself. A VM that no node can take is
        refused before anything is recorded (NoCapacity); one whose create fails within the
        wait is deleted and the failure raised (DriverError), so an error answer leaves nothing
        behind. A create that fails later leaves the VM in `error`, as every failed create."""
        job_id, (vm_id,) = await self.create([spec], who, check_capacity=True)
        outcome = await self.jobs.wait(job_id, timeout)
        if outcome.state == "cancelled":  # someone cancelled the job: a cancelled create leaves nothing
            raise Conflict("the VM's create was cancelled", vmId=vm_id)
        if outcome.failed:
            error = outcome.error("unknown error")
            await self.jobs.wait(await self.delete([vm_id], who), timeout)
            raise DriverError(f"the VM could not be created: {error}", vmId=vm_id)
        return await self.get(vm_id, who)

    async def rename(self, ref: str, name: str | None, who: Principal, *, display_name: str | None = None) -> Vm:
        """Rename a VM at once: a name lives only in the store (no job, no hypervisor call).

        `display_name` (faces whose names allow more than VM names) is the VM's display name
        from now on; without it the display name is the new name. With `name` None the name
        is derived from it as a create derives it (a VM whose name is already one of its
        candidates keeps it)."""
        if name is not None:
            check_name(name)
        if display_name is not None:
            check_display_name(display_name, "displayName")
        elif name is None:
            raise InvalidRequest("give a name or a display name", field="name")
        vm = await self.get(ref, who)
        require_state(VmOp.RENAME, vm.status, vm.id)
        for _ in range(vm_names.NAME_ATTEMPTS):
            async with self.store.write() as conn:
                fresh = await vm_q.get_vm(conn, vm.id)
                if fresh is None:
                    raise NotFound(f"VM {ref} does not exist")
                new_name = name if name is not None else await vm_names.derived_name(conn, display_name or "", fresh)
                spec = fresh.spec.with_(display_name=None if display_name in (None, new_name) else display_name)
                if new_name == fresh.name and spec == fresh.spec:
                    break
                if name is not None and new_name != fresh.name and await vm_q.names_taken(conn, [name], vm.org_id):
                    raise Conflict(f"a VM named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
                try:
                    async with conn.begin_nested():
                        await vm_q.set_vm(conn, vm.id, name=new_name, spec=spec.to_json(), updated_at=clock.now())
                except IntegrityError:
                    if name is not None:
                        raise Conflict(f"a VM named {name!r} was created at the same time", reason=Reason.NAME_TAKEN, field="name") from None
                    continue  # another VM took the derived name meanwhile: pick again
                break
        else:
            raise Conflict(vm_names.LOST_RACE, reason=Reason.NAME_TAKEN, field="name")
        return await self.get(vm.id, who)

    async def _reserve_ports(self, conn: AsyncConnection, rows: builtins.list[dict[str, Any]]) -> None:
        """Give each exposed guest port its host port (chosen when not asked for), uniquely."""
        taken: set[tuple[int, str]] | None = None
        candidates = iter(AUTO_PORTS)
        for row in rows:
            expose = row["spec"].get("expose") or []
            for e in expose:
                if e.get("hostPort") is None:
                    if taken is None:
                        taken = await guest_q.taken_ports(conn)
                    for port in candidates:
                        if (port, e["protocol"]) not in taken and port_is_free(port, e["protocol"]):
                            e["hostPort"] = port
                            taken.add((port, e["protocol"]))
                            break
                    else:
                        raise Conflict("no free host port left to forward to the guest")
            clash = await guest_q.reserve_ports(conn, row["id"], [(e["hostPort"], e["protocol"]) for e in expose])
            if clash is not None:
                raise Conflict(f"host port {clash} is already forwarded to another VM", field="expose")
            if expose:
                await vm_q.set_vm(conn, row["id"], spec=row["spec"])

    async def update(self, ref: str, change: VmChange, who: Principal) -> str:
        vm = await self.get(ref, who)
        if change.name is not None:
            check_name(change.name)
        if change.display_name is not None:
            check_display_name(change.display_name)
        if change.tags is not None:
            check_tags(change.tags)
        if change.disk_gb is not None and change.disk_gb < vm.disk_gb:
            raise InvalidRequest(f"resources.diskGb cannot shrink a disk ({vm.disk_gb} GB now)", field="resources.disk_gb", reason=Reason.CANNOT_SHRINK)
        if any(v is not None for v in (change.cpu, change.ram_mb, change.disk_gb)):
            require_state(VmOp.RESIZE, vm.status, vm.id)
        if change.boot_order is not None:
            check_boot_order(change.boot_order)
        if change.firmware is not None:
            check_firmware(change.firmware)
            if change.firmware != (vm.spec.firmware or "bios") and vm.status not in (VmStatus.STOPPED, VmStatus.ERROR):
                raise InvalidState(f"firmware: VM {vm.id} is {vm.status}; stop it to change its firmware", current=vm.status, required="stopped")
        payload: dict[str, Any] = {
            "name": change.name,
            "tags": list(change.tags) if change.tags is not None else None,
            "cpu": change.cpu,
            "ramMb": change.ram_mb,
            "diskGb": change.disk_gb,
        }
        if change.boot_order is not None:
            payload["bootOrder"] = list(change.boot_order)
        if change.firmware is not None:
            payload["firmware"] = change.firmware
        async with self.store.write() as conn:
            await self.tenancy.reserve(
                conn, vm.org_id, vcpu=max(0, (change.cpu or vm.cpu) - vm.cpu),
                ram_mb=max(0, (change.ram_mb or vm.ram_mb) - vm.ram_mb), disk_gb=max(0, (change.disk_gb or vm.disk_gb) - vm.disk_gb),
            )  # fmt: skip
            if change.name is not None and change.name != vm.name:
                if await vm_q.names_taken(conn, [change.name], vm.org_id):
                    raise Conflict(f"a VM named {change.name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
            fresh = await vm_q.get_vm(conn, vm.id) or vm
            if change.display_name is not None or (change.name is not None and fresh.spec.display_name is not None):
                # a label only: set at once (the name waits for the job); a new name alone is shown as it is
                shown = None if change.display_name in (None, change.name or fresh.name) else change.display_name
                await vm_q.set_vm(conn, vm.id, name=fresh.name, spec=fresh.spec.with_(display_name=shown).to_json(), updated_at=clock.now())
            if change.set_cdrom:  # the ISO checked (visible to the caller, ready) as the job is submitted
                payload["cdrom"] = {"isoId": (await self.isos.for_vm(conn, change.cdrom, who, "cdrom.isoId")).id if change.cdrom else None}
            job_id = await self.engine.submit(conn, "vm-update", who, [(vm.id, payload)])
        self.engine.wakeup()
        return job_id

    async def delete(self, refs: Sequence[str], who: Principal, *, partial: bool = False) -> str:
        """One vm-delete job, a task per VM (by id or uuid). A VM the caller cannot see
        (missing, another organization's or team's) raises NotFound, one being deleted
        InvalidState, and nothing is deleted; with `partial` (the native bulk delete: one
        task per resource, a job that may end `partial`) such a VM gets a task failed at
        submission with that error instead, under the id as given, and the others are
        deleted. The list itself (empty, too long, a VM twice) is judged either way."""
        if not refs:
            raise InvalidRequest("vmIds must name at least one VM", field="vmIds")
        self.check_bulk(len(refs), "vmIds")
        if len(set(refs)) != len(refs):
            raise InvalidRequest("vmIds names a VM twice", field="vmIds")
        async with self.store.write() as conn:
            rows = {r.id: r for r in await vm_q.get_vms(conn, list(refs)) if visible(r, who)}
            by_ref = {**rows, **{r.uuid: r for r in rows.values()}}
            missing = [r for r in refs if r not in by_ref]
            if missing and not partial:
                raise NotFound(f"VM {missing[0]} does not exist", vmIds=missing)
            items: builtins.list[tuple[str, dict[str, Any]]] = []
            refused: dict[str, str] = {}
            for ref in refs:
                vm = by_ref.get(ref)
                try:
                    if vm is None:
                        raise NotFound(f"VM {ref} does not exist")
                    require_state(VmOp.DELETE, vm.status, vm.id)
                except (NotFound, InvalidState) as exc:
                    if not partial:
                        raise
                    refused[vm.id if vm is not None else ref] = exc.message
                items.append((vm.id if vm is not None else ref, {}))
            if len({r for r, _ in items}) != len(items):
                raise InvalidRequest("vmIds names a VM twice (by its id and its uuid)", field="vmIds")
            job_id = await self.engine.submit(conn, "vm-delete", who, items, refused=refused)
        self.engine.wakeup()
        return job_id

    async def delete_once(self, ref: str, who: Principal) -> str | None:
        """Delete one VM; None when it is already being deleted (a second delete of the same
        VM is then done, as the FastVM and Volant contracts answer it)."""
        try:
            return await self.delete([ref], who)
        except InvalidState as exc:
            if exc.details.get("current") != VmStatus.DELETING:
                raise
            return None

    async def restart(self, ref: str, who: Principal) -> tuple[str | None, str]:
        """Stop the VM (unless it may start as it is) and start it again: a new VM process,
        which takes a changed config's resources. Both jobs are queued at once (the start runs
        after the stop), so the VM is never seen stopped with nothing to do. Returns the stop's
        job (None if none was needed) and the start's."""
        vm = await self.get(ref, who)
        stop = None if allows(VmOp.START, vm.status) else await self.power(vm.id, "stop", who)
        return stop, await self.power(vm.id, "start", who)

    async def power(self, ref: str, action: str, who: Principal, *, refusal_as_job: bool = False) -> str:
        """Submit a power action. A state that does not allow it raises InvalidState; with
        `refusal_as_job`, it is a job recorded as already failed with that reason instead
        (for contracts that answer every power action with a task)."""
        job_type = POWER_JOBS[action]
        vm = await self.get(ref, who)
        refused: dict[str, str] = {}
        async with self.store.write() as conn:
            pending = await job_q.active_task_for(conn, [vm.id])
            # With earlier work still queued on the VM, judge the request when its turn comes.
            if not pending:
                try:
                    require_state(action, vm.status, vm.id)
                except InvalidState as exc:
                    if not refusal_as_job:
                        raise
                    refused[vm.id] = exc.message
            job_id = await self.engine.submit(conn, job_type, who, [(vm.id, {"action": action})], refused=refused)
        self.engine.wakeup()
        return job_id
