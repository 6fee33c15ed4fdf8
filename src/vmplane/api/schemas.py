"""Wire schemas of the native API: `…In` models parse requests (unknown fields rejected,
no type coercion); `…Out` models document responses (rendered by `render`)."""

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ResourcesIn(In):
    cpu: int = Field(1, ge=1, le=512, description="vCPUs")
    ramMb: int = Field(512, ge=64, le=4 * 1024 * 1024, description="memory in MiB")
    diskGb: int = Field(10, ge=1, le=1_000_000, description="disk in GB")


class ResourcesPatch(In):
    cpu: int | None = Field(None, ge=1, le=512)
    ramMb: int | None = Field(None, ge=64, le=4 * 1024 * 1024)
    diskGb: int | None = Field(None, ge=1, le=1_000_000)


class CloudInitIn(In):
    userData: str | None = Field(None, max_length=65536, description="`#cloud-config` or a `#!` script")
    metaData: dict[str, Any] | None = None
    networkConfig: dict[str, Any] | None = None


class ExposeIn(In):
    port: int = Field(..., ge=1, le=65535, description="port in the guest")
    hostPort: int | None = Field(None, ge=1024, le=65535, description="port on the host's 127.0.0.1 (chosen if omitted)")
    protocol: Literal["tcp", "udp"] = "tcp"


class NetworkRefIn(In):
    networkId: str = Field(..., min_length=1, max_length=64, description="network id or name")


class DevicesIn(In):
    pciPassthrough: list[str] = Field(default_factory=list, max_length=8, description="PCI addresses (0000:01:00.0) or models (10de:2204)")


class CdromIn(In):
    isoId: str = Field(..., min_length=1, max_length=64, description="an ISO of the library (GET /isos): its id or name")


BOOT_ORDER_DOC = "devices to boot from, in order: `cdrom`, `disk` (default [\"disk\", \"cdrom\"]: a blank disk falls through to the CD-ROM)"
FIRMWARE_DOC = "`bios` (SeaBIOS, the default) or `uefi` (OVMF, with an NVRAM of the VM's own)"


class VmCreateIn(In):
    name: str | None = Field(
        None, min_length=1, max_length=63,
        description="1-63 letters, digits and '-' (required unless displayName is given: then derived from it, made unique with -2, -3, …)",
    )  # fmt: skip
    displayName: str | None = Field(None, min_length=1, max_length=64, description="free text shown by faces (default: the name)")
    templateId: str | None = Field(None, max_length=64)
    nodeId: str | None = Field(None, max_length=64)
    tags: list[str] = Field(default_factory=list, max_length=64)
    resources: ResourcesIn | None = None
    start: bool = True
    cloudInit: CloudInitIn | None = None
    sshKeys: list[str] = Field(default_factory=list, max_length=32)
    expose: list[ExposeIn] = Field(default_factory=list, max_length=32)
    teamId: str | None = Field(None, max_length=64, description="team id or name (default: the credential's team)")
    snapshotId: str | None = Field(None, max_length=64, description="clone this snapshot (copy-on-write); disk may only grow")
    networks: list[NetworkRefIn] = Field(default_factory=list, max_length=8, description="one NIC per network, in order (default: the user network)")
    devices: DevicesIn | None = None
    plugin: str | None = Field(None, min_length=1, max_length=63, description="an installed, enabled plugin (name or runtime): resources, image and cloud-init default to its manifest's")
    firewall: dict[str, Any] | None = Field(
        None,
        description="the VM's firewall from the start, as PUT /vms/{id}/firewall takes it: {enabled, policyIn, policyOut, rules} "
        "(default: a clone takes its snapshot's firewall, other VMs none)",
    )
    cdrom: CdromIn | None = Field(None, description="the ISO in the VM's CD-ROM (null: an empty drive)")
    bootOrder: list[str] | None = Field(None, max_length=4, description=BOOT_ORDER_DOC)
    firmware: str | None = Field(None, max_length=8, description=FIRMWARE_DOC)


class VmUpdateIn(In):
    name: str | None = Field(None, min_length=1, max_length=63)
    displayName: str | None = Field(None, min_length=1, max_length=64, description="set to the name to follow the name again")
    tags: list[str] | None = Field(None, max_length=64)
    resources: ResourcesPatch | None = None
    cdrom: CdromIn | None = Field(
        None, description="insert this ISO into the CD-ROM (at once on a running VM: a media change the guest sees), or null to eject it"
    )
    bootOrder: list[str] | None = Field(None, max_length=4, description=BOOT_ORDER_DOC + "; from the next start")
    firmware: str | None = Field(None, max_length=8, description=FIRMWARE_DOC + "; only while the VM is stopped")


Ref = Annotated[str, Field(min_length=1, max_length=64)]
"""an id, uuid or name in a bulk request's list"""


class VmDeleteIn(In):
    vmIds: list[Ref] = Field(..., min_length=1, max_length=10_000)


class TemplateCreateIn(In):
    name: str = Field(..., min_length=1, max_length=63)
    os: str = Field("linux", min_length=1, max_length=32)
    nodeId: str | None = Field(None, max_length=64)
    sourceUrl: str = Field(..., min_length=1, max_length=2048)
    loginUser: str | None = Field(None, max_length=64, description="the user VMs made from it log in as over SSH, a Unix user name (^[a-z_][a-z0-9_-]{0,31}$); default from os: debian, ubuntu, fedora their own; any other os root")


class IsoCreateIn(In):
    name: str = Field(..., min_length=1, max_length=63, description="unique among the organization's ISOs (an operator's: among the shared ones)")
    sourceUrl: str = Field(..., min_length=1, max_length=2048, description="an http(s) URL the server fetches the ISO from, through the outbound policy")
    sha256: str | None = Field(None, min_length=64, max_length=64, description="the SHA-256 (hex) the ISO must have; checked before it is offered")


class TemplateUpdateIn(In):
    name: str | None = Field(None, min_length=1, max_length=63)
    os: str | None = Field(None, min_length=1, max_length=32)
    loginUser: str | None = Field(None, max_length=64, description="the user VMs made from it from now on log in as (VMs made before keep theirs)")


class TemplateDeleteIn(In):
    templateIds: list[Ref] = Field(..., min_length=1, max_length=1000)


class ExecIn(In):
    command: list[str] = Field(..., min_length=1, max_length=256, description="argv; no shell")
    timeoutSec: float = Field(30, gt=0, le=600)


class ExecOut(BaseModel):
    exitCode: int | None
    stdout: str
    stderr: str
    timedOut: bool
    stdoutTruncated: bool
    stderrTruncated: bool
    durationMs: int


class ConsoleTokenOut(BaseModel):
    token: str
    expiresAt: str
    websocketPath: str


class VmStatsOut(BaseModel):
    vmId: str
    cpuPercent: float
    memoryMb: int
    memorySource: Literal["guest", "host-rss"] = Field(
        description="where memoryMb comes from: `guest` (the guest's own figure, total minus available, from its "
        "virtio-balloon statistics) or `host-rss` (the guest reports nothing: the resident memory of the VM's process on "
        "the host, which counts the hypervisor too and can exceed memoryTotalMb)"
    )
    memoryTotalMb: int
    diskReadBytes: int
    diskWriteBytes: int
    netRxBytes: int
    netTxBytes: int
    uptimeSeconds: float


class JobAccepted(BaseModel):
    jobId: str
    vmIds: list[str] | None = None
    templateId: str | None = None
    snapshotId: str | None = None
    backupId: str | None = None
    isoId: str | None = None


class ResourcesOut(BaseModel):
    cpu: int
    ramMb: int
    diskGb: int


class NicOut(BaseModel):
    networkId: str
    network: str
    mac: str
    ipAddresses: list[str]


class SshOut(BaseModel):
    """Where to log in with SSH: a forwarded port on the node's loopback (user-mode NICs)."""

    host: str
    port: int
    user: str = Field(description="the login user: the template's `loginUser` when the VM was made (root for VMs made before templates had one)")
    hostKey: str | None = Field(description="the guest's SSH host key (`ssh-ed25519 AAAA…`), when the template records it")


class VmOut(BaseModel):
    id: str
    uuid: str
    vmid: int = Field(description="the VM's stable integer id (Proxmox-style VMID): never given to another VM, even once this one is deleted")
    name: str
    displayName: str = Field(description="the display name a create or rename gave (FastVM's `my web`), else the name")
    node: str | None
    nodeId: str | None
    status: str
    guestReady: bool = Field(
        description="the guest is ready in its current boot: its agent answers and cloud-init, where present, is done "
        "(a guest with no agent: it wrote to its serial console); false again at every stop, start and reboot until it is "
        "ready again. `GET ?waitReady=S` waits for it; the `vm.guest_ready` event says it"
    )
    uptime: str | None = Field(description="how long the VM's process has run (`3m 4s`), as of this answer: a page that keeps it shown counts on from `startedAt`")
    startedAt: str | None = Field(None, description="when the running VM's process started (RFC 3339); null unless running")
    tags: list[str]
    resources: ResourcesOut
    templateId: str | None
    snapshotId: str | None
    error: str | None
    expose: list[dict[str, Any]]
    nics: list[NicOut]
    pciDevices: list[str]
    plugin: dict[str, Any] | None = Field(None, description="the plugin the VM was made from: {name, runtime, version, shared} (shared: the operators' plugin, not one of its organization's own)")
    ssh: SshOut | None = Field(description="SSH login through a forwarded port; null when the VM has none (sim nodes, remote nodes, bridge-only NICs: use the NIC's address)")
    blank: bool = Field(description="made with an empty disk (no template, snapshot, import or plugin): nothing boots until an OS is installed")
    cdrom: dict[str, Any] | None = Field(description="the ISO in its CD-ROM, `{isoId}`; null when the drive is empty")
    bootOrder: list[str] = Field(description=BOOT_ORDER_DOC)
    firmware: str = Field(description=FIRMWARE_DOC)
    pendingRestart: bool = Field(description="the running VM's process lacks part of its record (a resize of CPU or RAM): a power-cycle or stop+start applies it; a guest reboot does not")
    pending: list[str] = Field(description="what waits for that restart: `cpu`, `ramMb`, `diskGb` (empty when nothing does)")
    createdAt: str
    updatedAt: str
    stats: "VmLatestStatsOut | None" = Field(
        None, description="in `GET /vms` only: the VM's latest stored stats sample while it runs (null when none is recent); "
        "its history: `GET /vms/{id}/stats/history`"
    )


class VmLatestStatsOut(BaseModel):
    at: str
    cpuPercent: float
    memoryMb: int
    memoryTotalMb: int
    memorySource: str | None


class Page(BaseModel, Generic[T]):
    items: list[T]
    nextPageToken: str | None


class TemplateOut(BaseModel):
    id: str
    name: str
    os: str
    nodeId: str | None
    sizeMb: int
    status: str
    format: str | None
    sourceUrl: str | None
    checksum: str | None
    loginUser: str = Field(description="the user VMs made from it log in as over SSH (their `ssh.user`, `vmplane vm ssh`)")
    shared: bool = Field(description="the operators' template, shared with every organization; a name is looked up in the caller's organization first, then among the shared ones")
    error: str | None
    createdAt: str
    updatedAt: str


class IsoOut(BaseModel):
    id: str
    name: str
    status: str = Field(description="importing, ready (bootable from a VM's CD-ROM) or error")
    sizeBytes: int
    sha256: str | None
    sourceUrl: str | None
    shared: bool = Field(description="an operator's ISO, shared read-only with every organization")
    error: str | None
    createdAt: str
    updatedAt: str


class JobOut(BaseModel):
    id: str
    type: str
    state: str
    progress: int
    createdBy: str
    createdAt: str
    updatedAt: str
    startedAt: str | None
    finishedAt: str | None
    taskCount: int
    keyPrefix: str | None = None
    """the prefix of the API key whose request made the job (null: a JWT, vmplane itself)"""
    clientIp: str | None = None
    """the address that request came from"""


class TaskOut(BaseModel):
    id: str
    resourceId: str
    state: str
    progress: int
    error: str | None = None
    attempts: int
    startedAt: str | None
    finishedAt: str | None


class ImportProgressOut(BaseModel):
    """vm-import jobs: the import's stage and the bytes it moved (GET /api/v1/imports/{id})."""

    importId: str
    stage: str | None
    bytesDone: int
    bytesTotal: int | None


class JobDetailOut(JobOut):
    tasks: list[TaskOut]
    importProgress: ImportProgressOut | None = None


class TaskDetailOut(TaskOut):
    jobId: str
    log: list[str]
    importProgress: ImportProgressOut | None = None


class NodeResourcesOut(BaseModel):
    cpuTotal: int
    cpuUsed: int
    ramMbTotal: int
    ramMbUsed: int
    diskGbTotal: int
    diskGbUsed: int


class NodeOut(BaseModel):
    id: str
    hostname: str
    status: str
    driver: str
    """`sim`, `qemu`, or `remote` (a node run by `vmplane agent`)"""
    hypervisor: str
    """what runs the VMs: `sim` or `qemu` (an agent's own driver for remote nodes)"""
    simulated: bool
    cordoned: bool
    """no new VMs are placed on a cordoned node"""
    agentUrl: str | None
    heartbeatAt: str | None
    resources: NodeResourcesOut
    createdAt: str
    updatedAt: str


class ClusterOut(BaseModel):
    id: str | None
    name: str
    version: str
    status: str
    nodes: int
    createdAt: str | None


class ErrorOut(BaseModel):
    error: str
    code: str
    details: dict[str, Any]


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ScopeOut(BaseModel):
    """The scope of the credential a schedule, webhook or deployment was made with, which it
    acts with (services/scopes.py)."""

    credential: str | None = Field(None, description="the API key's id, `jwt`, or null (made before scopes were recorded)")
    teamId: str | None = Field(None, description="the key's team: it acts on, and sees, that team's resources only")
    readOnly: bool = False
    ownerId: str | None = Field(None, description="the user it acts as")
