"""A VM's stored spec (`vms.spec`, a JSON column) as a declared type: every key a typed field.

The spec holds what a VM was asked for beyond its columns (cloud-init, SSH keys, exposed ports,
the face's own fields) and the bookkeeping of its life (its NICs' addresses, the host port of
its SSH forward, the PCI devices it holds, the node a move goes to). `StoredSpec.from_json` reads
any stored spec; `to_json` writes it back keeping the stored JSON as it was: a key whose value
did not change is written as it was read (same bytes, same order), keys the code does not know
survive, and only changed or new keys take this module's encoding. No migration of stored data.

Derived facts (addresses, the SSH endpoint) are computed here once, for every face.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

SSH_HOST = "127.0.0.1"
"""Where forwarded ports listen: the node's loopback (the qemu driver's forward address)."""
SSH_USER = "root"
"""the login of a VM whose spec names none (made before templates knew theirs)"""

T = TypeVar("T")


def from_fields(cls: type[T], values: dict[str, Any]) -> T:
    """An instance of frozen dataclass `cls` (no slots) from the values of all its fields,
    without running its __init__: a frozen __init__ sets each field through object.__setattr__,
    4 µs for a VM's 19 fields, and VMs are read by the hundred on every list."""
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    return obj


@dataclass(frozen=True)
class VmNic:
    """One NIC of a VM as its spec keeps it: a copy of the addresses `ip_addresses` owns, so
    reads of a VM need no other table. (`network.Nic` is the node's view, network resolved.)"""

    network_id: str
    network: str
    """the network's name"""
    mac: str
    ips: tuple[str, ...]
    """IPv4 addresses: the primary first, then aliases"""
    type: str = "user"
    ipv6: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return self.ips + ((self.ipv6,) if self.ipv6 is not None else ())

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VmNic:
        return from_fields(cls, {
            "network_id": d["networkId"], "network": d["network"], "mac": d["mac"], "ips": tuple(d.get("ips") or ()),
            "type": d.get("type", "user"), "ipv6": d.get("ipv6"),
        })  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"networkId": self.network_id, "network": self.network, "type": self.type, "mac": self.mac, "ips": list(self.ips)}
        if self.ipv6 is not None:
            out["ipv6"] = self.ipv6
        return out


@dataclass(frozen=True)
class Expose:
    """A guest port forwarded from a host port of the node (chosen at create when not asked)."""

    port: int
    protocol: str = "tcp"
    host_port: int | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Expose:
        return from_fields(cls, {"port": d["port"], "protocol": d.get("protocol", "tcp"), "host_port": d.get("hostPort")})

    def to_json(self) -> dict[str, Any]:
        return {"port": self.port, "hostPort": self.host_port, "protocol": self.protocol}


@dataclass(frozen=True, slots=True)
class SshForward:
    """The VM's SSH forward (GuestService.prepare_ssh): a node loopback port to guest port 22."""

    host_port: int
    host_key: str | None = None
    reserved: bool = True
    """the port was reserved for SSH (False: the VM's own `expose` of port 22)"""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> SshForward:
        return cls(d["hostPort"], d.get("hostKey"), bool(d.get("reserved", True)))

    def to_json(self) -> dict[str, Any]:
        return {"hostPort": self.host_port, "hostKey": self.host_key, "reserved": self.reserved}


@dataclass(frozen=True, slots=True)
class PluginRef:
    """The plugin a VM was made from."""

    name: str | None = None
    runtime: str | None = None
    version: str | None = None
    shared: bool | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PluginRef:
        return cls(d.get("name"), d.get("runtime"), d.get("version"), d.get("shared"))

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "runtime": self.runtime, "version": self.version, "shared": self.shared}


@dataclass(frozen=True, slots=True)
class CloudInit:
    """NoCloud seed documents: user-data, meta-data (a mapping or a document), network-config."""

    user_data: str | dict[str, Any] | None = None
    """a document, or (Blue Lobster's) a #cloud-config mapping"""
    meta_data: dict[str, Any] | str | None = None
    network_config: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CloudInit:
        return cls(d.get("userData"), d.get("metaData"), d.get("networkConfig"))

    def to_json(self) -> dict[str, Any]:
        pairs = (("userData", self.user_data), ("metaData", self.meta_data), ("networkConfig", self.network_config))
        return {k: v for k, v in pairs if v is not None}


@dataclass(frozen=True, slots=True)
class Imported:
    """Where an imported VM came from."""

    import_id: str
    source: str
    os: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Imported:
        return cls(d["importId"], d["source"], d.get("os"))

    def to_json(self) -> dict[str, Any]:
        return {"importId": self.import_id, "source": self.source, "os": self.os}


def _same(x: Any) -> Any:
    return x


def _tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x or ())


def _list(x: Any) -> list[Any]:
    return list(x)


def _each(cls: Any) -> Callable[[Any], tuple[Any, ...]]:
    return lambda x: tuple(cls.from_json(e) for e in x or ())


def _one(cls: Any) -> Callable[[Any], Any]:
    return lambda x: cls.from_json(x) if isinstance(x, dict) and x else None


def _dump_each(x: Any) -> list[Any]:
    return [e.to_json() for e in x]


def _dump_one(x: Any) -> Any:
    return x.to_json()


_KEYS: dict[str, tuple[str, Callable[[Any], Any], Callable[[Any], Any]]] = {
    # field: (stored key, decode, encode)
    "node_id": ("nodeId", _same, _same),
    "source_name": ("sourceName", _same, _same),
    "cloud_init": ("cloudInit", _one(CloudInit), _dump_one),
    "ssh_keys": ("sshKeys", _tuple, _list),
    "expose": ("expose", _each(Expose), _dump_each),
    "kernel_cmdline": ("kernelCmdline", _same, _same),
    "plugin": ("plugin", _one(PluginRef), _dump_one),
    "deployment": ("deployment", _same, _same),
    "imported": ("imported", _one(Imported), _dump_one),
    "username": ("username", _same, _same),
    "metadata": ("metadata", lambda x: dict(x or {}), _same),
    "instance_type": ("instanceType", _same, _same),
    "price_cents_per_hour": ("priceCentsPerHour", _same, _same),
    "gpu_model": ("gpuModel", _same, _same),
    "os_type": ("osType", _same, _same),
    "pci_passthrough": ("pciPassthrough", _tuple, _list),
    "nics": ("nics", _each(VmNic), _dump_each),
    "pci_assigned": ("pciAssigned", _tuple, _list),
    "ssh": ("ssh", _one(SshForward), _dump_one),
    "move_to": ("moveTo", _same, _same),
    "display_name": ("displayName", _same, _same),
    "login_user": ("loginUser", _same, _same),
    "boot_order": ("bootOrder", _tuple, _list),
    "firmware": ("firmware", _same, _same),
}


@dataclass(frozen=True)
class StoredSpec:
    """What `vms.spec` holds, every key declared. Change it with `replace` (or `with_`), store
    it with `to_json`."""

    node_id: str | None = None
    """the node the create asked for (None: placement chooses)"""
    source_name: str | None = None
    """the template (or snapshot) the VM was made from, by name"""
    cloud_init: CloudInit | None = None
    ssh_keys: tuple[str, ...] = ()
    expose: tuple[Expose, ...] = ()
    kernel_cmdline: str | None = None
    """extra kernel arguments, after the template's"""
    plugin: PluginRef | None = None
    deployment: str | None = None
    """the deployment the VM is a replica of"""
    imported: Imported | None = None
    username: str | None = None
    """Blue Lobster: the login the VM's cloud-init made"""
    metadata: dict[str, str] = field(default_factory=dict)
    """Blue Lobster: the user's metadata"""
    instance_type: str | None = None
    price_cents_per_hour: int | None = None
    gpu_model: str | None = None
    os_type: str | None = None
    pci_passthrough: tuple[str, ...] = ()
    """PCI device models asked for (one entry per device)"""
    nics: tuple[VmNic, ...] = ()
    pci_assigned: tuple[str, ...] = ()
    """host PCI addresses the VM holds (placed at create)"""
    ssh: SshForward | None = None
    move_to: str | None = None
    """the target node of a move in flight"""
    display_name: str | None = None
    """the name a face that allows more than VM names showed its client (`my web`), when it
    differs from the VM's name (domain.names)"""
    login_user: str | None = None
    """the user it logs in as over SSH, its template's (or its source VM's) at create
    (domain/login.py); None: made before templates knew theirs, root"""
    boot_order: tuple[str, ...] = ()
    """the devices it boots from, in order (empty: the default, core.DEFAULT_BOOT_ORDER)"""
    firmware: str | None = None
    """bios or uefi (None: bios); the ISO in its CD-ROM is the `vms.cdrom_iso_id` column"""
    stored: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """the JSON this was read from: unknown keys, and the bytes of unchanged ones, are kept"""

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> StoredSpec:
        if not d:
            return _EMPTY
        values = dict(_DEFAULTS)
        values["metadata"] = {}
        for key, value in d.items():
            if (known := _FIELDS.get(key)) is not None:
                values[known[0]] = known[1](value)
        values["stored"] = d
        return from_fields(cls, values)

    def to_json(self) -> dict[str, Any]:
        """The JSON to store: `stored` with each changed field written over its key (a field
        back at its default drops its key, unless the stored JSON held that value)."""
        out = dict(self.stored)
        for f in fields(self):
            if f.name == "stored":
                continue
            key, decode, encode = _KEYS[f.name]
            value = getattr(self, f.name)
            if key in out and decode(out[key]) == value:
                continue
            if value == _DEFAULTS[f.name]:
                out.pop(key, None)
            else:
                out[key] = encode(value)
        return out

    def with_(self, **changes: Any) -> StoredSpec:
        return replace(self, **changes)

    # -- derived facts -------------------------------------------------------------------------

    @property
    def primary_ip(self) -> str | None:
        """The first address of NIC 0 (None: no NIC, or no address yet)."""
        return self.nics[0].ips[0] if self.nics and self.nics[0].ips else None

    @property
    def first_ipv4(self) -> str | None:
        """The first IPv4 address over the NICs in order."""
        return next((ip for n in self.nics for ip in n.ips if ":" not in ip), None)

    @property
    def first_ipv6(self) -> str | None:
        return next((n.ipv6 for n in self.nics if n.ipv6), None)

    def forward(self, port: int, protocol: str = "tcp") -> Expose | None:
        """How guest `port` is exposed, if it is."""
        return next((e for e in self.expose if e.port == port and e.protocol == protocol), None)

    @property
    def plugin_name(self) -> str | None:
        """The plugin the VM was made from, by name."""
        return self.plugin.name if self.plugin is not None else None

    @property
    def runtime(self) -> str:
        """The runtime of the VM's plugin ("" when it was made from none)."""
        return str(self.plugin.runtime or "") if self.plugin is not None else ""

    @property
    def network_types(self) -> frozenset[str]:
        """Kinds of network the VM's node must offer (every node has user-mode networking)."""
        return frozenset(n.type for n in self.nics) - {"user"}

    @property
    def has_user_nic(self) -> bool:
        """Whether the VM has a user-mode NIC (a VM from before networks has one implicitly)."""
        return not self.nics or any(n.type == "user" for n in self.nics)

    @property
    def ssh_endpoint(self) -> dict[str, Any] | None:
        """The VM's SSH login as `GET /api/v1/vms/{id}` shows it, `{host, port, user, hostKey}`,
        or None when it has none."""
        if self.ssh is None:
            return None
        return {"host": SSH_HOST, "port": self.ssh.host_port, "user": self.login_user or SSH_USER, "hostKey": self.ssh.host_key}


_EMPTY = StoredSpec()
_DEFAULTS = {name: getattr(_EMPTY, name) for name in _KEYS}
_FIELDS = {key: (name, decode) for name, (key, decode, _) in _KEYS.items()}
