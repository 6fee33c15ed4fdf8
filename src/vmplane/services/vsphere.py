"""vSphere discovery and control (pyvmomi): VMs of a vCenter or ESXi host, their hardware and
disks, graceful shutdown, power off, CD-ROM removal; stored connection profiles whose
credentials are kept encrypted (services/secrets.py) and never shown; and the two ways a VM's
disks leave vSphere for an import (the NFC export lease, and datastore downloads).

Every call to vCenter runs in a worker thread (pyvmomi blocks). Credentials given ad hoc are
used for the call and not kept; `Connection` never shows its password in a repr or a log.

A vCenter URL passes the outbound policy (outbound.py) when it is given and again at every
connection: pyvmomi is handed the checked address (TLS still names and verifies the URL's
host, and `Host` carries it), so a name that changes its answer is not followed. Disk
downloads (datastore files, and the export lease's `deviceUrl`s, wherever they point) go
through the policy's client, at most `VMPLANE_MAX_DOWNLOAD_BYTES` each; nothing a server
answered is repeated in an error.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, urlparse

import httpx
from sqlalchemy import Row

from .. import clock, ids, outbound
from ..auth import Principal
from ..domain.vsphere import BytesProgress, Connection, ExportedDisk, VsphereDisk, VsphereNic, VsphereVm, VsphereVmInfo, split_url
from ..errors import Conflict, InvalidRequest, InvalidState, NotFound, Reason, VmplaneError
from ..store import vsphere as vsp_q
from .secrets import SecretBox

if TYPE_CHECKING:
    from ..outbound import Outbound
    from ..store import Store


PROFILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
CHUNK = 1 << 20
T = TypeVar("T")


class VcenterError(VmplaneError):
    """vCenter answered with a fault vmplane cannot act on (the message names it)."""

    reason = Reason.VCENTER_FAILED


@dataclass
class VsphereProfile:
    id: str
    name: str
    url: str
    insecure: bool
    created_at: float
    updated_at: float
    created_by: str

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id, "name": self.name, "url": self.url, "insecure": self.insecure, "createdBy": self.created_by,
            "createdAt": clock.rfc3339(self.created_at), "updatedAt": clock.rfc3339(self.updated_at),
        }  # fmt: skip


def _profile(row: Row[Any]) -> VsphereProfile:
    return VsphereProfile(row.id, row.name, row.url, bool(row.insecure), row.created_at, row.updated_at, row.created_by)


class VsphereService:
    """rt.vsphere: connection profiles, discovery and control of vSphere VMs, disk export."""

    def __init__(self, *, store: Store, outbound: Outbound, secret_box: SecretBox) -> None:
        self.store = store
        self.outbound = outbound
        self.box = secret_box

    # -- connection profiles -------------------------------------------------------------

    async def create_profile(self, who: Principal, *, name: str, url: str, username: str, password: str, insecure: bool = False) -> VsphereProfile:
        """Store a named connection for the caller's organization; the username and password
        are sealed with the data dir's key. Conflict if the name is taken."""
        if not PROFILE_NAME_RE.match(name or ""):
            raise InvalidRequest(f"name {name!r} is not valid: 1-63 letters, digits, '.', '_' or '-'", field="name")
        scheme, host, port, _ = split_url(url, "url")
        if not username:
            raise InvalidRequest("username is required", field="username")
        await self.outbound.check(f"{scheme}://{_netloc(host, port)}/", "url")
        now = clock.now()
        row = {
            "id": ids.new_id("vsp"), "org_id": who.org_id, "name": name, "url": url.strip(), "insecure": bool(insecure),
            "secret": self.box.seal({"username": username, "password": password or ""}), "created_by": who.user_name,
            "created_at": now, "updated_at": now,
        }  # fmt: skip
        async with self.store.write() as conn:
            if await vsp_q.get_profile(conn, who.org_id, name) is not None:
                raise Conflict(f"a vSphere profile named {name!r} already exists", reason=Reason.NAME_TAKEN, field="name")
            await vsp_q.insert_profile(conn, row)
            created = await vsp_q.get_profile(conn, who.org_id, name)
        assert created is not None  # inserted above, in this transaction
        return _profile(created)

    async def list_profiles(self, who: Principal) -> list[VsphereProfile]:
        async with self.store.read() as conn:
            return [_profile(r) for r in await vsp_q.list_profiles(conn, who.org_id)]

    async def get_profile(self, who: Principal, name: str) -> VsphereProfile:
        async with self.store.read() as conn:
            row = await vsp_q.get_profile(conn, who.org_id, name)
        if row is None:
            raise NotFound(f"vSphere profile {name!r} does not exist", field="profile")
        return _profile(row)

    async def delete_profile(self, who: Principal, name: str) -> None:
        async with self.store.write() as conn:
            if not await vsp_q.delete_profile(conn, who.org_id, name):
                raise NotFound(f"vSphere profile {name!r} does not exist", field="profile")

    async def connection(
        self, who: Principal, *, profile: str | None = None, url: str | None = None, username: str | None = None,
        password: str | None = None, insecure: bool | None = None,
    ) -> Connection:  # fmt: skip
        """The connection a request names: a stored profile (by name; InvalidRequest naming
        `profile` if the caller's organization has none of that name) or ad-hoc credentials
        (`url` and `username` required). Nothing ad hoc is stored."""
        if profile:
            async with self.store.read() as conn:
                row = await vsp_q.get_profile(conn, who.org_id, profile)
            if row is None:
                raise InvalidRequest(f"vSphere profile {profile!r} does not exist", field="profile")
            secret = self.box.open(row.secret)
            return Connection(row.url, secret["username"], secret["password"], bool(row.insecure) if insecure is None else insecure, profile)
        if not url:
            raise InvalidRequest("give a vSphere profile name or a vCenter URL", field="vcenterUrl")
        scheme, host, port, _ = split_url(url)
        if not username:
            raise InvalidRequest("username is required with a vCenter URL", field="username")
        await self.outbound.check(f"{scheme}://{_netloc(host, port)}/", "vcenterUrl")
        return Connection(url.strip(), username, password or "", bool(insecure))

    def seal(self, c: Connection) -> str:
        """An ad-hoc connection sealed for a job's payload (jobs run later, maybe elsewhere)."""
        return self.box.seal({"url": c.url, "username": c.username, "password": c.password, "insecure": c.insecure, "profile": c.profile})

    def unseal(self, token: str) -> Connection:
        d = self.box.open(token)
        return Connection(d["url"], d["username"], d["password"], bool(d["insecure"]), d.get("profile"))

    # -- discovery and control -------------------------------------------------------------

    async def _session(self, c: Connection, work: Callable[[Any], T]) -> T:
        """`work(si)` in a worker thread, logged in to `c` at an address the policy passed."""
        policy = await self.outbound.policy()
        return await asyncio.to_thread(_with_si, c, policy, work)

    async def list_vms(self, c: Connection, datacenter: str | None = None) -> list[VsphereVm]:
        """Every VM (templates left out), optionally of one datacenter, sorted by path."""
        return await self._session(c, lambda si: _list_vms(si, datacenter))

    async def vm_info(self, c: Connection, vm_path: str) -> VsphereVmInfo:
        """A VM's hardware, disks and NICs. NotFound naming `vmPath` if there is none there."""
        return await self._session(c, lambda si: _info(si, _find_vm(si, vm_path)))

    async def shutdown(self, c: Connection, vm_path: str, timeout: float | None = None) -> bool:
        """Ask the guest to shut down (VMware Tools). With `timeout`, wait up to that long for
        it to power off and return whether it did; without, return True once asked.
        InvalidState if the VM is not powered on."""

        def run(si: Any) -> bool:
            vm = _find_vm(si, vm_path)
            _call(lambda: vm.ShutdownGuest())
            if timeout is None:
                return True
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if str(vm.runtime.powerState) == "poweredOff":
                    return True
                time.sleep(0.5)
            return False

        return await self._session(c, run)

    async def power_off(self, c: Connection, vm_path: str) -> None:
        """Power the VM off hard and wait for vCenter's task. InvalidState if it is off."""
        await self._session(c, lambda si: _wait(_call(lambda: _find_vm(si, vm_path).PowerOffVM_Task())))

    async def power_on(self, c: Connection, vm_path: str) -> None:
        """Power the VM on and wait for vCenter's task. InvalidState if it is on."""
        await self._session(c, lambda si: _wait(_call(lambda: _find_vm(si, vm_path).PowerOnVM_Task())))

    async def remove_cdroms(self, c: Connection, vm_path: str) -> int:
        """Remove every CD-ROM drive of the VM (one reconfigure); returns how many there were."""
        return await self._session(c, lambda si: _remove_cdroms(_find_vm(si, vm_path)))

    async def export_disks(
        self, c: Connection, vm_path: str, dest: Path, progress: BytesProgress, method: str = "auto",
    ) -> tuple[VsphereVmInfo, list[ExportedDisk]]:  # fmt: skip
        """Fetch every disk of the VM into `dest` (a directory) and return the VM's info and the
        files. `method`: `lease` (the NFC export lease, `ExportVm`: what vCenter needs for
        a consistent copy and for running VMs), `datastore` (HTTP GET of the disk files on
        the datastore, `/folder`: the VM should be powered off), `auto` (the lease, and the
        datastore when the server has no export lease, e.g. the simulator)."""
        if method not in ("auto", "lease", "datastore"):
            raise InvalidRequest("exportMethod must be auto, lease or datastore", field="exportMethod")
        loop = asyncio.get_running_loop()
        policy = await self.outbound.policy()
        net = _Net(policy, self.outbound.max_download_bytes)
        stop = threading.Event()  # the caller was cancelled: the worker thread stops at its next report

        def report(done: int, total: int | None) -> None:
            if stop.is_set():
                raise VmplaneError("the export was cancelled")
            asyncio.run_coroutine_threadsafe(progress(done, total), loop).result(timeout=60)

        def run(si: Any) -> tuple[VsphereVmInfo, list[ExportedDisk]]:
            vm = _find_vm(si, vm_path)
            info = _info(si, vm)
            if method in ("auto", "lease"):
                try:
                    return info, _export_by_lease(si, c, vm, info, dest, report, net)
                except _NoLease as exc:
                    if method == "lease":
                        raise VcenterError(f"this server has no export lease for VMs: {exc}") from exc
            return info, _export_by_datastore(si, c, info, dest, report, net)

        try:
            return await asyncio.to_thread(_with_si, c, policy, run)
        except BaseException:
            stop.set()
            raise


# -- pyvmomi, in worker threads ---------------------------------------------------------------


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class _Net:
    """How a worker thread fetches disks: the outbound policy and the byte cap of a file."""

    policy: outbound.Policy
    limit: int


def _with_si(c: Connection, policy: outbound.Policy, work: Callable[[Any], T]) -> T:
    """Log in to `c` at an address of its host that `policy` passes (pinned: pyvmomi opens
    its connections to that address; TLS names and verifies the host), run `work(si)`, log out."""
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    scheme, host, port, path = c.endpoint
    try:
        address = str(outbound.choose(policy, host, outbound.lookup(host, port)))
    except outbound.Refused as exc:
        raise InvalidRequest(f"vcenterUrl: {exc.message}", field="vcenterUrl") from None
    except (OSError, UnicodeError) as exc:
        raise InvalidRequest(f"cannot reach vCenter at {host}:{port}: the name does not resolve ({exc})", field="vcenterUrl") from None
    try:
        si = SmartConnect(
            protocol=scheme, host=address, port=port, path=path, user=c.username, pwd=c.password,
            sslContext=outbound.named_tls_context(host, c.insecure), customHeaders={"Host": _netloc(host, port)},
            httpConnectionTimeout=30, connectionPoolTimeout=-1,
        )  # fmt: skip
    except vim.fault.InvalidLogin as exc:
        raise InvalidRequest(f"vCenter at {host} refused the login of {c.username!r}", field="username") from exc
    except ssl.SSLError as exc:
        raise InvalidRequest(f"TLS with {host}:{port} failed ({exc.reason}); set insecure for a self-signed certificate", field="insecure") from exc
    except (OSError, ConnectionError) as exc:
        raise InvalidRequest(f"cannot reach vCenter at {host}:{port}: {exc}", field="vcenterUrl") from exc
    except Exception as exc:  # pyvmomi raises a variety of its own on a non-vSphere endpoint
        if isinstance(exc, VmplaneError):
            raise
        # its name only: a parser's or http.client's message can quote what the server sent
        raise InvalidRequest(f"{host}:{port}{path} did not answer as a vSphere SDK ({type(exc).__name__})", field="vcenterUrl") from None
    try:
        return work(si)
    finally:
        try:
            Disconnect(si)
        except Exception:  # logging out of a server that went away
            pass


def _call(fn: Callable[[], Any]) -> Any:
    """Run one vSphere call, its faults turned into vmplane's errors."""
    from pyVmomi import vim, vmodl

    try:
        return fn()
    except vim.fault.InvalidPowerState as exc:
        current = str(getattr(exc, "existingState", "") or "")
        msg = exc.msg  # type: ignore[attr-defined]  # every MethodFault has msg (VmomiSupport); pyvmomi's stubs omit it
        raise InvalidState(f"the VM is {current or 'in another power state'}: {msg}", current=current or None) from exc
    except vim.fault.ToolsUnavailable as exc:
        msg = exc.msg  # type: ignore[attr-defined]  # as above: a stub gap
        raise InvalidState(f"VMware Tools are not running in the guest: {msg}") from exc
    except vmodl.MethodFault as exc:
        raise VcenterError(f"vCenter: {type(exc).__name__}: {getattr(exc, 'msg', '') or exc}") from exc


def _wait(task: Any) -> Any:
    from pyVmomi import vim

    while task.info.state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
        time.sleep(0.1)
    if task.info.state == vim.TaskInfo.State.error:
        return _call(lambda: (_ for _ in ()).throw(task.info.error))
    return task.info.result


def _collect(si: Any, types: list[Any], props: list[str]) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(object, {property: value}) of every managed object of `types`, in a few round trips."""
    from pyVmomi import vmodl

    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, types, True)
    try:
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[pc.TraversalSpec(name="v", path="view", skip=False, type=type(view))])],
            propSet=[pc.PropertySpec(type=t, pathSet=props, all=False) for t in types],
        )
        result = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        while result is not None:
            for oc in result.objects:
                yield oc.obj, {p.name: p.val for p in (oc.propSet or [])}
            if not result.token:
                break
            result = content.propertyCollector.ContinueRetrievePropertiesEx(result.token)
    finally:
        view.Destroy()


def _parents(si: Any) -> dict[str, tuple[str, str | None, bool]]:
    """moId -> (name, parent moId, is datacenter) of folders, datacenters and vApps."""
    from pyVmomi import vim

    out: dict[str, tuple[str, str | None, bool]] = {}
    for obj, props in _collect(si, [vim.Folder, vim.Datacenter, vim.VirtualApp, vim.ResourcePool], ["name", "parent"]):
        parent = props.get("parent")
        out[obj._moId] = (props.get("name", ""), parent._moId if parent is not None else None, isinstance(obj, vim.Datacenter))
    return out


def _path_of(name: str, parent: Any, tree: dict[str, tuple[str, str | None, bool]]) -> tuple[str, str]:
    """(inventory path, datacenter) of an entity: names up to (not including) the root folder."""
    parts = [name]
    datacenter = ""
    moid = parent._moId if parent is not None else None
    while moid is not None and moid in tree:
        pname, pparent, is_dc = tree[moid]
        if pparent is None:  # the root folder
            break
        parts.append(pname)
        if is_dc:
            datacenter = pname
        moid = pparent
    return "/".join(reversed(parts)), datacenter


VM_PROPS = [
    "name", "parent", "parentVApp", "runtime.powerState", "config.template", "config.guestFullName", "config.hardware.numCPU",
    "config.hardware.memoryMB", "summary.storage.committed", "guest.ipAddress", "config.uuid",
]  # fmt: skip


def _summary(props: dict[str, Any], tree: dict[str, tuple[str, str | None, bool]]) -> tuple[VsphereVm, str]:
    path, dc = _path_of(props.get("name", ""), props.get("parent") or props.get("parentVApp"), tree)
    vm = VsphereVm(
        name=props.get("name", ""), path=path, power_state=str(props.get("runtime.powerState", "") or ""),
        num_cpu=int(props.get("config.hardware.numCPU") or 0), memory_mb=int(props.get("config.hardware.memoryMB") or 0),
        storage_bytes=int(props.get("summary.storage.committed") or 0), guest_os=str(props.get("config.guestFullName") or ""),
        ip_address=props.get("guest.ipAddress") or None, uuid=props.get("config.uuid") or None,
    )  # fmt: skip
    return vm, dc


def _list_vms(si: Any, datacenter: str | None) -> list[VsphereVm]:
    from pyVmomi import vim

    tree = _parents(si)
    out = []
    for _obj, props in _collect(si, [vim.VirtualMachine], VM_PROPS):
        if props.get("config.template"):
            continue
        vm, dc = _summary(props, tree)
        if datacenter and dc != datacenter:
            continue
        out.append(vm)
    return sorted(out, key=lambda v: v.path)


def _find_vm(si: Any, vm_path: str) -> Any:
    from pyVmomi import vim

    path = (vm_path or "").strip().strip("/")
    if not path:
        raise InvalidRequest("vmPath is required: the VM's inventory path (Datacenter/vm/folder/name)", field="vmPath")
    obj = _call(lambda: si.RetrieveContent().searchIndex.FindByInventoryPath(path))
    if isinstance(obj, vim.VirtualMachine):
        return obj
    tree = _parents(si)  # a server without FindByInventoryPath for this path: walk the inventory
    for vm, props in _collect(si, [vim.VirtualMachine], ["name", "parent", "parentVApp"]):
        if _path_of(props.get("name", ""), props.get("parent") or props.get("parentVApp"), tree)[0] == path:
            return vm
    raise NotFound(f"no VM at {path!r}", field="vmPath")


def _info(si: Any, vm: Any) -> VsphereVmInfo:
    from pyVmomi import vim

    tree = _parents(si)
    props = _props_of(si, vm, VM_PROPS)
    summary, dc = _summary(props, tree)
    disks: list[VsphereDisk] = []
    nics: list[VsphereNic] = []
    cdroms: list[str] = []
    hardware = vm.config.hardware if vm.config is not None else None
    for dev in hardware.device if hardware is not None else []:
        label = dev.deviceInfo.label if dev.deviceInfo else type(dev).__name__
        if isinstance(dev, vim.vm.device.VirtualDisk):
            capacity = int(getattr(dev, "capacityInBytes", 0) or 0) or int(dev.capacityInKB or 0) * 1024
            disks.append(VsphereDisk(dev.key, label, capacity, str(getattr(dev.backing, "fileName", "") or "")))
        elif isinstance(dev, vim.vm.device.VirtualEthernetCard):
            nics.append(VsphereNic(label, _network_name(si, dev), dev.macAddress or None))
        elif isinstance(dev, vim.vm.device.VirtualCdrom):
            cdroms.append(label)
    config = vm.config
    return VsphereVmInfo(
        vm=summary, datacenter=dc, firmware=str(getattr(config, "firmware", "") or "bios"), guest_id=str(getattr(config, "guestId", "") or ""),
        disks=tuple(disks), nics=tuple(nics), cdroms=tuple(cdroms),
    )  # fmt: skip


def _props_of(si: Any, obj: Any, props: list[str]) -> dict[str, Any]:
    """Properties of one object in one round trip (unset ones absent; reading an unset one
    directly crashes some servers, the simulator among them)."""
    from pyVmomi import vmodl

    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(objectSet=[pc.ObjectSpec(obj=obj, skip=False)], propSet=[pc.PropertySpec(type=type(obj), pathSet=props, all=False)])
    result = si.RetrieveContent().propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
    return {p.name: p.val for oc in (result.objects if result else []) for p in (oc.propSet or [])}


def _network_name(si: Any, nic: Any) -> str:
    backing = nic.backing
    name = getattr(backing, "deviceName", None)
    if name:
        return str(name)
    port = getattr(backing, "port", None)  # a distributed port group: look up its name
    if port is not None and getattr(port, "portgroupKey", None):
        from pyVmomi import vim

        for pg, props in _collect(si, [vim.dvs.DistributedVirtualPortgroup], ["key", "name"]):
            if props.get("key") == port.portgroupKey:
                return str(props.get("name"))
        return str(port.portgroupKey)
    network = getattr(backing, "network", None)
    return str(network.name) if network is not None else ""


def _remove_cdroms(vm: Any) -> int:
    from pyVmomi import vim

    drives = [d for d in vm.config.hardware.device if isinstance(d, vim.vm.device.VirtualCdrom)]
    if not drives:
        return 0
    changes = [vim.vm.device.VirtualDeviceSpec(operation=vim.vm.device.VirtualDeviceSpec.Operation.remove, device=d) for d in drives]
    _wait(_call(lambda: vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(deviceChange=changes))))
    return len(drives)


# -- disk export ------------------------------------------------------------------------------


class _NoLease(Exception):
    """The server has no NFC export lease (ExportVm) for this VM."""


def _cookie(si: Any) -> str:
    """The session cookie of `si`, for HTTP downloads in the same session."""
    raw = str(si._stub.cookie or "")
    return raw.split(";", 1)[0].strip()


def _http(c: Connection, net: _Net) -> httpx.Client:
    """A client of the outbound policy (every URL checked and pinned; no redirects)."""
    return outbound.sync_client(net.policy, verify=not c.insecure, timeout=httpx.Timeout(60.0, connect=15.0))


def _download(
    client: httpx.Client, url: str, headers: dict[str, str], dest: Path, done: int, total: int | None,
    report: Callable[[int, int | None], None], limit: int,
) -> int:  # fmt: skip
    """GET `url` into `dest` (at most `limit` bytes), reporting bytes; returns the running
    byte count. A refused address fails with the policy's reason."""
    last = time.monotonic()
    try:
        with client.stream("GET", url, headers=headers) as resp:
            if resp.status_code != 200:
                raise VcenterError(f"download of {urlparse(url).path} answered HTTP {resp.status_code}")
            with dest.open("wb") as out:
                for chunk in outbound.iter_limited(resp, limit, f"the file {Path(urlparse(url).path).name}", CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if time.monotonic() - last >= 0.5:
                        last = time.monotonic()
                        report(done, total)
    except httpx.HTTPError as exc:
        raise VcenterError(f"download of {urlparse(url).path} failed: {outbound.describe(exc)}") from None
    except outbound.Refused as exc:
        raise VcenterError(f"download of {urlparse(url).path} refused: {exc.message}") from None
    report(done, total)
    return done


def _export_by_lease(
    si: Any, c: Connection, vm: Any, info: VsphereVmInfo, dest: Path, report: Callable[[int, int | None], None], net: _Net,
) -> list[ExportedDisk]:  # fmt: skip
    """The NFC export lease: `ExportVm`, wait for it to be ready, GET each disk's URL (a
    stream-optimized VMDK; through the outbound policy, wherever the server says it is), keep
    the lease alive with progress, complete it (abort on error)."""
    from pyVmomi import vim, vmodl

    try:
        lease = vm.ExportVm()
    except (vmodl.fault.MethodNotFound, vmodl.fault.NotSupported, vim.fault.TaskInProgress) as exc:
        raise _NoLease(f"{type(exc).__name__}") from exc
    except vmodl.MethodFault as exc:
        raise _NoLease(f"{type(exc).__name__}: {getattr(exc, 'msg', '')}") from exc
    try:
        deadline = time.monotonic() + 120
        while lease.state == vim.HttpNfcLease.State.initializing:
            if time.monotonic() > deadline:
                raise VcenterError("the export lease did not become ready within 120 s")
            time.sleep(0.2)
        if lease.state == vim.HttpNfcLease.State.error:
            raise VcenterError(f"the export lease failed: {getattr(lease.error, 'msg', lease.error)}")
        urls = [d for d in (lease.info.deviceUrl or []) if getattr(d, "disk", False)]
        total = sum(int(getattr(d, "fileSize", 0) or 0) for d in urls) or sum(d.capacity_bytes for d in info.disks) or None
        labels = {d.key: d.label for d in info.disks}
        capacities = {d.key: d.capacity_bytes for d in info.disks}
        _, host, _, _ = c.endpoint
        out: list[ExportedDisk] = []
        done = 0
        last_pct = -1
        with _http(c, net) as client:

            def keepalive(n: int, t: int | None) -> None:
                nonlocal last_pct
                report(n, t)
                pct = min(99, n * 100 // t) if t else 0
                if pct != last_pct:
                    last_pct = pct
                    lease.HttpNfcLeaseProgress(pct)

            for i, dev in enumerate(urls):
                url = dev.url.replace("://*", f"://{host}", 1)
                key = _device_key(dev.key)
                path = dest / f"disk-{i}.vmdk"
                done = _download(client, url, {"Cookie": _cookie(si)}, path, done, total, keepalive, net.limit)
                # the lease names a disk by controller:unit, not by its key: then go by order
                nth = info.disks[i] if i < len(info.disks) else None
                label = labels.get(key) if key in labels else (nth.label if nth else f"disk {i}")
                capacity = capacities.get(key) if key in capacities else (nth.capacity_bytes if nth else 0)
                out.append(ExportedDisk(str(label), path, int(capacity or 0), "lease"))
        lease.HttpNfcLeaseComplete()
        return out
    except BaseException as exc:
        try:
            lease.HttpNfcLeaseAbort(vmodl.MethodFault(msg=str(exc)[:200]))
        except Exception:  # the lease may be gone already
            pass
        raise


def _device_key(key: str) -> int | None:
    """`/vm-12/VirtualLsiLogicController0:0`-style keys name the controller; numeric keys are
    the device key."""
    try:
        return int(str(key).rsplit("/", 1)[-1])
    except ValueError:
        return None


DATASTORE_PATH_RE = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.+)$")
EXTENT_RE = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+\w+\s+"(?P<file>[^"]+)"', re.M)


def _export_by_datastore(
    si: Any, c: Connection, info: VsphereVmInfo, dest: Path, report: Callable[[int, int | None], None], net: _Net,
) -> list[ExportedDisk]:  # fmt: skip
    """GET each disk's file from its datastore (`/folder/<path>?dcPath=&dsName=`); a VMDK
    descriptor brings its extent files along (a flat VMDK is two files on ESXi)."""
    scheme, host, port, _ = c.endpoint
    base = f"{scheme}://{_netloc(host, port)}"
    total = sum(d.capacity_bytes for d in info.disks) or None
    out: list[ExportedDisk] = []
    done = 0
    with _http(c, net) as client:
        for i, disk in enumerate(info.disks):
            m = DATASTORE_PATH_RE.match(disk.file_path)
            if m is None:
                raise VcenterError(f"{disk.label} has no datastore file ({disk.file_path!r})")
            ds, rel = m.group("ds"), m.group("path").strip()
            folder = dest / f"disk-{i}"
            folder.mkdir(parents=True, exist_ok=True)

            def url(relpath: str) -> str:
                return f"{base}/folder/{quote(relpath)}?dcPath={quote(info.datacenter)}&dsName={quote(ds)}"

            first = folder / Path(rel).name
            done = _download(client, url(rel), {"Cookie": _cookie(si)}, first, done, total, report, net.limit)
            if first.stat().st_size < 65536:  # a text descriptor: fetch its extents beside it
                text = first.read_bytes()
                if b"# Disk DescriptorFile" in text[:1024]:
                    for extent in EXTENT_RE.finditer(text.decode("utf-8", "replace")):
                        name = extent.group("file")
                        if "/" in name or name in ("", ".", ".."):
                            raise VcenterError(f"{disk.label}: descriptor names an extent outside its folder: {name!r}")
                        parent = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
                        done = _download(client, url(parent + name), {"Cookie": _cookie(si)}, folder / name, done, total, report, net.limit)
            out.append(ExportedDisk(disk.label, first, disk.capacity_bytes))
    return out

