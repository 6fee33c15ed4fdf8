"""The HypervisorDriver contract. Its docstrings are the contract every driver keeps.

General rules for every driver:
- A call that fails raises `DriverError` (or `InvalidState` for a wrong power state) and leaves
  nothing behind: no process, socket, disk or half-defined VM.
- Calls are idempotent where the docstring says so; the job engine relies on this to resume a
  task after a crash by running it again.
- Optional features are declared in `capabilities`; nothing signals "unsupported" at run time.
- Callers use a driver through this class only: what they need of a node (is it reachable,
  where its forwarded ports are, which process a VM is) is a method or a capability here,
  never an attribute of one driver found by `getattr` or a type test.
"""

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..domain import BootSetup, Resources, VmSpec
from ..domain.network import Firewall, Nic
from ..errors import DriverError, InvalidState
from ..pci import PciDevice

Progress = Callable[[int, str], Awaitable[None]]


class PowerState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    CRASHED = "crashed"


@dataclass(frozen=True, order=True, slots=True)
class CallOrder:
    """Where a changing call stands among all the calls made on one resource by runs of tasks.

    Tasks on one resource run one at a time in `seq` order, a task's runs are its attempts, and
    a run makes its calls one after another: so (seq, attempt, call) grows with every call made
    on `resource`, and a call carrying a smaller order than one already received is stale (a
    stalled run's, or one a slow network held back). A node that sees the order of its calls
    (the node agent does) refuses stale ones with `Superseded`; the job engine sets it
    (`call_order`) around every changing call of a run."""

    seq: int
    attempt: int
    call: int
    resource: str = field(compare=False)
    """the id of what the task is about (a VM, a snapshot, a template): the order is only
    known for calls on it, and the node checks it only there"""

    def __str__(self) -> str:
        return f"task #{self.seq} attempt {self.attempt} call {self.call}"


call_order: ContextVar[CallOrder | None] = ContextVar("vmplane_call_order", default=None)
"""The order of the changing driver call being made in this asyncio task (None outside runs of tasks)."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a node's driver can do, as data: callers (services, faces, placement) read these
    fields, never the driver's type or `kind`, to decide what to offer."""

    kind: str
    """the driver: qemu, sim or remote"""
    real_vms: bool
    """VMs really boot (a guest OS runs); False for the simulator"""
    live_resize_disk: bool = False
    hot_resize_cpu_ram: bool = False
    console: bool = False
    """serial console: `open_console` and `console_log` work."""
    display: bool = False
    """graphical console: VMs have a display adapter; `open_vnc` and `screenshot` work."""
    exec: bool = False
    """commands run in the guest through its agent: `exec_vm` works."""
    stats: bool = False
    """`stats_vm` reports measured figures."""
    disk_export: bool = False
    """`export_disk` and `import_disk` work (what backups are made from and restored to)."""
    image_formats: frozenset[str] = frozenset({"qcow2", "raw"})
    network_types: frozenset[str] = frozenset({"user"})
    """network types this node can attach VMs to (`bridge` needs CAP_NET_ADMIN on the node)."""
    firewall: bool = False
    """`set_network` enforces firewalls on the VM's traffic (not only records them)."""
    pci_passthrough: bool = False
    """VMs may be given host PCI devices (VFIO); `node_info` lists the offered devices."""
    live_migration: bool = False
    """running VMs move to another node of the same hypervisor: `migrate_prepare` (target),
    `migrate_send` (source), `migrate_finish` (target), `migrate_cancel` (source) work."""
    hypervisor: str = ""
    """what runs the VMs: `kind` itself, except for a node reached through another driver (a
    `remote` node runs its agent's qemu or sim). Empty when built means `kind`."""
    cdrom: bool = False
    """VMs have a CD-ROM holding an ISO of the library, a boot order and a firmware choice
    (`VmSpec.boot`, `set_boot`): the ISO files are this host's (the control plane's data dir)."""
    local: bool = True
    """the node is this host: its VMs' processes (`host_process`) and their forwarded ports
    are on the control plane's own host. False for a node of another host (`remote`)."""

    def __post_init__(self) -> None:
        if not self.hypervisor:
            object.__setattr__(self, "hypervisor", self.kind)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    hostname: str
    cpu: int
    ram_mb: int
    disk_gb: int
    labels: dict[str, str] = field(default_factory=dict)
    pci_devices: tuple[PciDevice, ...] = ()
    """host PCI devices offered for passthrough (those the allowlist admits)."""


@dataclass(frozen=True, slots=True)
class VmRuntime:
    """What the hypervisor says about one VM right now."""

    vm_id: str
    state: PowerState
    started_at: float | None = None
    error: str | None = None
    running: Resources | None = None
    """the resources the VM's running process has: what it was started with, and the disk as
    grown live since. A resize of a running VM changes CPU and RAM only at its next start (a
    power-cycle or stop+start; a guest's reboot keeps the process), so until then this differs
    from the VM's configuration. None when the VM does not run or the driver cannot tell."""

    @property
    def running_spec(self) -> dict[str, int] | None:
        """`running` as the store keeps it (`vms.running_spec`)."""
        return self.running.to_wire() if self.running is not None else None


@dataclass(frozen=True, slots=True)
class GuestState:
    """How far a running VM's guest has come in its current boot (`guest_state`)."""

    ready: bool
    """the guest is usable: its agent answers and cloud-init, where present, is done; a guest
    with no agent: it has written to its serial console"""
    boot: str = ""
    """names the boot this is of (changes at every start and reset of the guest)"""
    host_keys: tuple[str, ...] = ()
    """SSH host keys (`ssh-ed25519 AAAA…`) the guest printed on its console in this boot: the
    first `-----BEGIN SSH HOST KEY KEYS-----` block cloud-init writes, each key checked"""
    detail: str = ""
    """what the guest is waiting for, or how its readiness was told (for logs and people)"""


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int


@dataclass(frozen=True, slots=True)
class VmStats:
    cpu_percent: float
    """host CPU time used by the VM since the previous call, as % of one core."""
    memory_mb: int
    """memory in use, as `memory_source` says: the guest's own figure (total - available, as
    `free` counts it), or the RSS of the VM's process on the host (which counts QEMU itself:
    it can be more than the guest has)."""
    memory_total_mb: int
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int
    uptime_seconds: float
    memory_source: str = "host-rss"
    """where `memory_mb` comes from: "guest" (the guest reports it: virtio-balloon statistics)
    or "host-rss" (it does not: QEMU's resident memory on the host)"""


@dataclass(frozen=True, slots=True)
class ImageInfo:
    path: Path
    format: str
    virtual_size: int
    actual_size: int


@dataclass(frozen=True, slots=True)
class TemplateFiles:
    """A template's files as the control plane holds them, for `provide_template`."""

    template_id: str
    image: Path
    """the base disk image"""
    boot: dict[str, str] | None = None
    """direct kernel boot: {"kernel": path, "initrd": path, "cmdline": str}"""
    checksum: str | None = None
    """`sha256:<hex>` of the image when the control plane knows it (templates downloaded
    from a URL); None: whoever needs one computes it"""
    source_url: str | None = None
    """where the image was downloaded from (an http(s) URL a node may fetch it from again)"""


@dataclass(frozen=True, slots=True)
class MigrationTarget:
    """Where the target of a live migration listens: QEMU's incoming migration stream and the
    NBD export its disk is mirrored into."""

    host: str
    migrate_port: int
    nbd_port: int
    export: str


class HypervisorDriver(ABC):
    """One node's hypervisor. Every method is safe to call from the event loop."""

    capabilities: Capabilities

    @abstractmethod
    async def open(self) -> None:
        """Prepare the driver (re-attach to VMs that outlived a previous process). Idempotent."""

    @abstractmethod
    async def close(self) -> None:
        """Release the driver's own resources. VMs keep running. Idempotent."""

    @abstractmethod
    async def node_info(self) -> NodeInfo:
        """The node's real capacity."""

    @abstractmethod
    async def create_vm(self, spec: VmSpec) -> None:
        """Define the VM (disks, configuration) in the stopped state.

        Idempotent: creating a VM that already exists with this id is a no-op. On failure,
        leaves no disk or definition behind.
        """

    @abstractmethod
    async def start_vm(self, vm_id: str) -> None:
        """Power the VM on and return once it runs. A no-op on a running VM.

        On failure the VM is left stopped, with no process or socket behind.
        """

    @abstractmethod
    async def stop_vm(self, vm_id: str) -> None:
        """Hard power-off. A no-op on a stopped VM."""

    @abstractmethod
    async def shutdown_vm(self, vm_id: str, timeout: float) -> bool:
        """Ask the guest to power off (ACPI); power it off hard after `timeout` seconds.

        Returns True if the guest stopped by itself, False if it had to be forced.
        A no-op (returning True) on a stopped VM.
        """

    @abstractmethod
    async def reboot_vm(self, vm_id: str) -> None:
        """Ask the guest to reboot (ACPI reset of the guest OS); the VM stays running.

        Raises InvalidState on a stopped VM.
        """

    @abstractmethod
    async def power_cycle_vm(self, vm_id: str) -> None:
        """Hard reset: power off and on again. Starts a stopped VM."""

    @abstractmethod
    async def delete_vm(self, vm_id: str) -> None:
        """Stop the VM if needed and remove everything it had. Idempotent."""

    @abstractmethod
    async def resize_vm(self, vm_id: str, resources: Resources) -> None:
        """Change the VM's resources. Disks only grow. CPU and RAM take effect at the next
        start unless `capabilities.hot_resize_cpu_ram`. Idempotent."""

    @abstractmethod
    async def set_boot(self, vm_id: str, boot: BootSetup) -> None:
        """Change what the VM boots (`VmSpec.boot`). The ISO in its CD-ROM changes at once on
        a running VM (ejected, then the new one inserted: the guest sees a media change); the
        boot order and the firmware take effect at its next start. Idempotent. On failure the
        VM keeps what it had. DriverError unless `capabilities.cdrom`."""

    @property
    def offline(self) -> str | None:
        """Why the node cannot be reached now (its agent missed its heartbeats, its credential
        was revoked), or None when it can. Calls to an offline node fail at once with
        DriverError. A driver of this host is never offline."""
        return None

    def host_process(self, vm_id: str) -> tuple[int | None, str | None]:
        """The VM's process on this host (its id, None when the VM does not run) and its serial
        console's unix socket (None for a VM not defined here). Reads files only; never fails.
        (None, None) from a driver whose VMs are no processes of this host (`sim`, `remote`:
        `capabilities.local` and `real_vms` say which)."""
        return None, None

    def forward_host(self) -> str:
        """The host name or address at which the control plane reaches the ports this node
        forwards to its VMs (the `expose` of user-mode NICs): the node's forwarding address for
        a node of this host, the agent's host for a remote node. A wildcard address (0.0.0.0,
        ::) means every address of that host."""
        return "127.0.0.1"

    @abstractmethod
    async def get_vm(self, vm_id: str) -> VmRuntime | None:
        """The VM's runtime state, or None if the hypervisor does not know it."""

    @abstractmethod
    async def list_vms(self) -> list[VmRuntime]:
        """Every VM this driver owns on its node."""

    async def guest_state(self, vm_id: str, wait: float = 0.0) -> GuestState:
        """How far the running VM's guest has come in its current boot; with `wait` > 0,
        returns as soon as it is ready, or after `wait` seconds with it not ready yet. Raises
        InvalidState if the VM is not running (also when it stops while waited on). Changes
        nothing. This default (for drivers whose guests are no real ones) calls a running VM
        ready."""
        runtime = await self.get_vm(vm_id)
        if runtime is None or runtime.state != PowerState.RUNNING:
            state = runtime.state if runtime is not None else "undefined"
            raise InvalidState(f"VM {vm_id} is {state}, not running", current=str(state), required="running")
        return GuestState(ready=True, boot=str(runtime.started_at or ""), detail="running")

    async def exec_vm(self, vm_id: str, argv: list[str], timeout: float, max_output: int) -> ExecResult:
        """Run `argv` in the guest (no shell) and wait up to `timeout` s. Output beyond
        `max_output` bytes per stream is dropped and flagged. Needs `capabilities.exec`;
        raises InvalidState if the VM is not running, DriverError if the agent is not there."""
        raise DriverError(f"{self.capabilities.kind} driver cannot run commands in guests")

    async def open_console(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to and from the VM's serial console. Needs `capabilities.console`."""
        raise DriverError(f"{self.capabilities.kind} driver has no serial console")

    async def console_log(self, vm_id: str, max_bytes: int) -> bytes:
        """The last `max_bytes` of what the guest wrote on its serial console."""
        raise DriverError(f"{self.capabilities.kind} driver has no serial console")

    async def open_vnc(self, vm_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A byte stream to and from the running VM's VNC server (RFB, no authentication: only
        vmplane reaches it). Needs `capabilities.display`; InvalidState if the VM is not
        running."""
        raise DriverError(f"{self.capabilities.kind} driver has no graphical console")

    async def screenshot(self, vm_id: str, max_bytes: int) -> bytes:
        """A PNG of the running VM's screen as it is now. DriverError if it would be larger
        than `max_bytes`; leaves no file behind. Needs `capabilities.display`; InvalidState
        if the VM is not running."""
        raise DriverError(f"{self.capabilities.kind} driver has no graphical console")

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        """Write the VM's whole disk, as it is now (point in time; live if it runs), as a
        sparse raw image at `dest`. Returns its size in bytes. Needs `capabilities.disk_export`."""
        raise DriverError(f"{self.capabilities.kind} driver cannot export disks")

    async def import_disk(self, vm_id: str, source: Path) -> None:
        """Replace a stopped VM's disk with the raw image at `source` (which must fit its disk
        size). InvalidState if it runs. Needs `capabilities.disk_export`."""
        raise DriverError(f"{self.capabilities.kind} driver cannot import disks")

    async def set_network(self, vm_id: str, nics: tuple[Nic, ...], firewall: Firewall) -> None:
        """Record the VM's NICs (addresses, aliases) and firewall, and apply them at once if
        the VM runs: firewall rules on its host interfaces, alias addresses in the guest. They
        are applied again at every start and when the driver opens (host restart). The NICs'
        networks and MACs are those given at create time. Idempotent."""
        raise DriverError(f"{self.capabilities.kind} driver cannot change a VM's network")

    async def move_ports(self, vm_id: str, moves: Mapping[tuple[str, int], int]) -> None:
        """Forward the stopped VM's host ports elsewhere from its next start: `moves` maps
        (protocol, host port) to the new host port (the control plane re-picked a port another
        process took meanwhile). InvalidState if the VM runs. Idempotent. For drivers whose
        forwarded ports are on the control plane's host (`capabilities.local`)."""
        raise DriverError(f"{self.capabilities.kind} driver cannot move forwarded ports")

    async def stats_vm(self, vm_id: str) -> VmStats:
        """Measured usage of a running VM. Needs `capabilities.stats`."""
        raise DriverError(f"{self.capabilities.kind} driver does not measure VMs")

    @abstractmethod
    async def snapshot_vm(self, vm_id: str, snapshot_id: str) -> ImageInfo:
        """Capture the VM's disk as it is now, consistently, into snapshot `snapshot_id`:
        live (the VM keeps running) or offline. Idempotent. The snapshot is an image VMs can
        be created from as from a template (copy-on-write) and a VM can be reverted to."""

    @abstractmethod
    async def revert_vm(self, vm_id: str, snapshot_image: str) -> None:
        """Give a stopped VM's disk the snapshot's content (InvalidState if running)."""

    @abstractmethod
    async def delete_snapshot(self, snapshot_id: str) -> None:
        """Remove a snapshot's image. Idempotent. The caller makes sure no VM depends on it."""

    @abstractmethod
    async def import_image(self, template_id: str, source: Path, progress: Progress) -> ImageInfo:
        """Make a downloaded image available as the base of template `template_id`; the
        result's `path` is the base VMs are created on.

        The image comes from outside: a driver whose VMs read it takes it in through
        `drivers.qemu.intake` (a bad image raises DriverError naming the problem; nothing of
        it is left behind). Idempotent.
        """

    @abstractmethod
    async def delete_image(self, template_id: str) -> None:
        """Remove a template's base image from the node. Idempotent."""

    async def provide_template(self, files: TemplateFiles, progress: Progress) -> tuple[str, dict[str, str] | None]:
        """Make a template's files usable as VM bases on this node (once; idempotent) and
        return the image's path and the boot files as this node sees them, for `VmSpec`.

        This default is for drivers on the control plane's own host: the image is what
        `import_image` makes of it (the qemu driver's own standalone copy), the boot files are
        used where they are. A driver of another host (`remote`) copies them there first,
        verified by checksum."""
        info = await self.import_image(files.template_id, files.image, progress)
        return str(info.path), files.boot

    async def migrate_prepare(self, spec: VmSpec) -> MigrationTarget:
        """Target side of a live migration: define `spec` (an empty overlay on the same base)
        and start it waiting, paused, for the incoming state, its disk exported over NBD on
        the node's migration address for the source to mirror into. Needs `capabilities.live_migration`. On failure
        leaves nothing; `delete_vm` undoes it."""
        raise DriverError(f"{self.capabilities.kind} driver cannot migrate VMs")

    async def migrate_send(self, vm_id: str, target: MigrationTarget, progress: Progress) -> None:
        """Source side: mirror the running VM's disk into `target`, then move its memory and
        device state; returns once the target holds the whole VM (the source is then paused
        for good and only `delete_vm` remains to do). On failure the source keeps running."""
        raise DriverError(f"{self.capabilities.kind} driver cannot migrate VMs")

    async def migrate_finish(self, vm_id: str) -> None:
        """Target side, after `migrate_send`: close the disk export and resume the guest."""
        raise DriverError(f"{self.capabilities.kind} driver cannot migrate VMs")

    async def migrate_cancel(self, vm_id: str) -> None:
        """Source side, when the target could not take over: stop any migration or mirror
        still running and resume the guest here. Idempotent; a no-op on a VM not migrating."""
        raise DriverError(f"{self.capabilities.kind} driver cannot migrate VMs")
