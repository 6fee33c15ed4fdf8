"""Settings of a vmplane server, validated at start (env prefix `VMPLANE_`)."""

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .domain import QUOTA_FIELDS
from .outbound import parse_allow
from .pci import Allowlist


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VMPLANE_", extra="forbid")

    data_dir: Path = Path(".vmplane")
    database_url: str | None = None
    """`sqlite:///…` (default: `<data_dir>/vmplane.db`) or `postgresql+asyncpg://…`."""

    driver: Literal["auto", "qemu", "sim"] = "auto"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    """QEMU accelerator: `auto` uses KVM only if a probe guest really boots with it."""
    image_cache_dir: Path | None = None
    """Shared cache of built guest images (default `$XDG_CACHE_HOME/vmplane/images`)."""
    qemu_confine: bool = True
    """Run QEMU (`-runas`, with `-sandbox`) and qemu-img as `qemu_user` when vmplane runs as
    root. Not root, they run as vmplane's own user; the log says which at start."""
    qemu_user: str = "vmplane-qemu"
    """The unprivileged system user of QEMU and qemu-img (made by scripts/install-qemu.sh);
    if it does not exist, they run as root and the log says so at start."""
    sysfs_root: Path = Path("/sys")
    """The kernel's sysfs: host PCI devices are discovered and bound to vfio-pci there."""
    pci_allowlist: Annotated[list[str], NoDecode] = []
    """Host PCI devices offered to VMs (passthrough): `vendor:device` patterns (`10de:*`) or
    address globs (`0000:01:00.*`); as an env var comma-separated or a JSON list. Empty: none."""
    sim_nodes: int = Field(1, ge=0, le=100_000)
    sim_node_cpu: int = Field(32, ge=1)
    sim_node_ram_mb: int = Field(131072, ge=128)
    sim_node_disk_gb: int = Field(2000, ge=1)
    sim_latency_ms: int = Field(20, ge=0, le=600_000)
    """Simulated time each hypervisor operation takes."""
    sim_fail_pattern: str | None = None
    """Regular expression: sim VMs whose name matches fail to be created."""
    sim_fail_fraction: float = Field(0.0, ge=0.0, le=1.0)
    sim_fail_seed: int = 0
    sim_call_log: bool = False
    """Each sim node appends every call that may change it, with its outcome (done, noop,
    error), to `<hostname>.calls.jsonl` beside its state file: the history a chaos test checks
    the control plane against. Off: nothing is written."""

    cluster_name: str = "vmplane"

    cpu_overcommit: float = Field(4.0, gt=0, le=64)
    """vCPUs a node hands out per host core (Nova's default, 4.0). A VM holds its claim while
    stopped (its start never fails for room), so this bounds VMs made, not VMs running."""
    ram_overcommit: float = Field(1.0, gt=0, le=64)
    """RAM a node hands out per MB it has: 1.0, as guests really use what they are given."""
    disk_overcommit: float = Field(1.0, gt=0, le=64)
    placement_strategy: Literal["spread", "pack"] = "spread"

    job_concurrency: int = Field(64, ge=1, le=10_000)
    """Tasks one process runs at once."""
    lease_seconds: float = Field(15.0, gt=0.1)
    """A task whose worker has not renewed its lease for this long is taken over."""
    max_task_attempts: int = Field(3, ge=1)
    coordination_seconds: float = Field(1.0, gt=0.01, le=60)
    """PostgreSQL replicas: how often each looks at the others (who leads, who serves which
    local node); a dead replica's nodes and scheduler are taken over within about this."""
    shutdown_timeout_seconds: float = Field(60.0, ge=0)
    """Graceful shutdown waits this long for the guest, then powers it off."""
    node_offline_seconds: float = Field(15.0, ge=0.5, le=3600)
    """A node whose agent sent no heartbeat for this long is marked offline (its VMs unknown)."""

    max_body_bytes: int = Field(1_048_576, ge=1024)
    default_template: str = "tiny-linux"
    """the template (id or name) of VMs whose request names no image, such as a FastVM
    machine type; none when it does not exist"""
    plugin_health_seconds: float = Field(10.0, ge=0, le=3600)
    """How often the health check of each running plugin VM's workload is polled (0: never)."""
    compat_wait_seconds: float = Field(10.0, ge=0, le=300)
    """Faces whose API answers with the finished result (FastVM) wait this long for the job
    behind a request; after that they answer that it is still in progress."""

    outbound_allow: Annotated[list[str], NoDecode] = []
    """Addresses (CIDRs; a bare address is one host) that requests made on a user's behalf may
    reach although the outbound policy refuses them (loopback, link-local, private, CGNAT,
    multicast, reserved, the node agents' addresses): e.g. `10.20.0.0/16` for an internal
    image mirror or vCenter. As an env var comma-separated or a JSON list. Empty: none."""
    max_download_bytes: int = Field(64 << 30, ge=1 << 20)
    """The most bytes one download made for a user may bring in (a template or plugin image,
    an imported disk or OVA, a vSphere disk): 64 GiB."""
    max_document_bytes: int = Field(1 << 20, ge=4096)
    """The most bytes vmplane reads of a JSON document fetched for a user (a plugin's OpenAPI
    document, another vmplane's answers): 1 MiB."""

    import_dirs: Annotated[list[Path], NoDecode] = []
    """Directories imports (ImportService) may read local files from, by path or file://
    URL; as an env var comma-separated or a JSON list. Empty: `<data_dir>/imports`."""
    max_image_virtual_gb: int = Field(2048, ge=1)
    """The largest virtual size (GiB) of a disk image taken from outside (templates, plugin
    images, images an agent receives, VM imports); larger ones are refused before conversion."""
    backup_dir: Path | None = None
    """The backup store (a restic repository): default `<data_dir>/backups`; any mounted path."""
    user_network_subnet: str = "10.0.0.0/16"
    """the shared user-mode network's subnet (QEMU's slirp hands each VM its address in it)"""
    bridge_nat: bool = True
    """masquerade bridge networks' subnets out of the node's other interfaces (sets ip_forward)"""
    tenant_subnet_pool: str = "10.128.0.0/9"
    """The IPv4 range tenants' networks come from: a tenant names a subnet inside it or is
    given a free /24 of it. Operators may use any private range. (Each organization's bridges
    have their own routing context, so two organizations may use the same subnet.)"""
    tenant_transit_pool: str = "100.64.0.0/10"
    """The range a node takes one /30 per organization from for the link between the host and
    that organization's network namespace (its NAT uplink; see docs/networking.md). Choose a
    range no network of the node's own uses."""

    insecure_no_auth: bool = False
    """Serve without authentication (every caller is the bootstrap owner). Only on loopback."""
    jwt_secret: SecretStr | None = None
    """HS256 key for bearer JWTs (or set jwt_public_key_file for RS256)."""
    jwt_public_key_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_org_claim: str = "org"
    metrics_auth: bool = True
    """/metrics needs an operator's credentials or the scrape token (false: open, for a
    scraper on a trusted network)."""
    instance_types: dict[str, tuple[int, int, float]] = {
        "small": (1, 1024, 1.0),
        "medium": (2, 4096, 3.0),
        "large": (4, 8192, 6.0),
        "xlarge": (8, 16384, 12.0),
    }
    """name: (vCPUs, RAM MiB, price in cents per hour). Other shapes are `custom`."""
    custom_cents_per_vcpu_hour: float = Field(1.0, ge=0)
    custom_cents_per_gb_ram_hour: float = Field(0.5, ge=0)
    rate_limit_per_second: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(200, ge=1)
    """Requests per credential (an API key; a JWT's organization and subject): a token bucket
    of `burst` refilled at `per_second`."""
    org_rate_limit_per_second: float = Field(500.0, gt=0)
    org_rate_limit_burst: int = Field(2000, ge=1)
    """Requests per organization, all its credentials together (ten times one credential's),
    so minting keys does not multiply an organization's share."""
    max_streams_per_credential: int = Field(16, ge=1)
    max_streams_per_org: int = Field(256, ge=1)
    """Event streams (SSE, WebSocket, every face's) and consoles open at once, per credential
    and per organization; beyond, 429."""
    default_quotas: dict[str, int] = {
        "vcpu": 64, "ramMb": 256 * 1024, "diskGb": 2048, "vms": 100, "snapshots": 500, "networks": 50,
        "templates": 200, "webhooks": 100, "schedules": 100, "plugins": 100,
    }  # fmt: skip
    """The quotas a new organization starts with (operators raise them with PUT
    /api/v1/orgs/{id}/quotas); as an env var a JSON object. The bootstrap organization has none."""
    metrics_token: SecretStr | None = None
    """A scrape token (at least 32 characters): `Authorization: Bearer <token>` on /metrics,
    for a Prometheus that holds no API key (otherwise /metrics needs an operator's
    credentials). It opens /metrics and nothing else."""
    address_rate_limit_per_second: float = Field(5.0, gt=0)
    address_rate_limit_burst: int = Field(100, ge=1)
    """Anonymous requests and failed authentications (which cost 2) per client address (an
    IPv6 client's /64): a token bucket of `burst` refilled at `per_second`, spent before any
    credential is looked up. Requests that authenticate do not spend it."""
    negative_key_cache_size: int = Field(10_000, ge=100)
    """Unknown API keys remembered (2 s each, least recently used first out), so a flood of
    the same bogus key is refused without a query each."""
    audit_retention_days: float = Field(90.0, gt=0)
    """The audit log keeps rows this long."""
    header_timeout_seconds: float = Field(10.0, gt=0, le=600)
    """A client must send a request's headers within this long (from the connection, or from
    the first byte of a request on a kept-alive one), else the connection is closed (408)."""
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)
    """A client must send a request's whole body within this long of its headers (408)."""
    limit_concurrency: int = Field(2048, ge=16)
    """Open connections and running requests per listener; beyond, new requests get 503."""
    graceful_shutdown_seconds: float = Field(10.0, ge=0, le=300)
    """On SIGTERM/SIGINT, running requests get this long to finish (event streams and
    consoles are told to go away at once); then they are cancelled."""
    max_json_depth: int = Field(64, ge=8, le=512)
    """Request bodies nested deeper than this (arrays and objects) answer 400."""
    max_bulk: int = Field(1000, ge=1, le=100_000)
    """The most VMs one create request may make."""
    export_concurrency: int = Field(2, ge=1, le=64)
    """Disk exports (`GET /api/v1/vms/{id}/disk`) running at once per organization; beyond, 429."""
    ws_ticket_seconds: float = Field(30.0, gt=0, le=300)
    """How long a WebSocket ticket (`POST /api/v1/ws-tickets`) stays good (it is good once)."""

    event_retention_days: float = Field(7.0, gt=0)
    event_retention_max: int = Field(1_000_000, ge=1000)
    """The event log keeps events this long, and at most this many."""
    stats_sample_seconds: float = Field(10.0, ge=0, le=3600)
    """How often each running VM's stats and each node's CPU/memory are recorded for the
    history graphs (services/stats_history.py; 0: never)."""
    stats_retention_seconds: float = Field(3600.0, ge=3600, le=30 * 86400)
    """Stored stats samples are kept this long (at least the last hour), then pruned."""
    event_heartbeat_seconds: float = Field(15.0, gt=0)
    """Idle event streams get a heartbeat (SSE comment / WebSocket status) this often."""
    event_subscriber_queue: int = Field(10_000, ge=10)
    webhook_concurrency: int = Field(16, ge=1, le=1000)
    webhook_backoff_seconds: float = Field(1.0, gt=0)
    """First retry after about this long; each further one waits twice as long (max 5 min)."""
    """A stream subscriber this many events behind is dropped (with the reason)."""

    @field_validator("tenant_subnet_pool", "tenant_transit_pool")
    @classmethod
    def _ipv4_pool(cls, v: str) -> str:
        net = ipaddress.IPv4Network(v, strict=True)
        if net.prefixlen > 24 or not (net.is_private or net.subnet_of(ipaddress.IPv4Network("100.64.0.0/10"))):
            raise ValueError(f"{v} must be a private IPv4 range of /24 or larger")
        return str(net)

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite://", "sqlite+pysqlite://", "sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite:// or postgresql+asyncpg://")
        return v

    @field_validator("pci_allowlist", mode="before")
    @classmethod
    def _allowlist(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                try:
                    v = json.loads(text)
                except ValueError as exc:
                    raise ValueError(f"not a JSON list: {exc}") from exc
            else:
                v = [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(v, (list, tuple)):
            Allowlist(v)  # a bad pattern fails here, at start, naming itself
        return v

    @field_validator("outbound_allow", mode="before")
    @classmethod
    def _outbound_allow(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            v = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        if isinstance(v, (list, tuple)):
            parse_allow(v)  # a bad entry fails here, at start, naming itself
        return v

    @field_validator("import_dirs", mode="before")
    @classmethod
    def _import_dirs(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            v = json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        return v

    @field_validator("default_quotas")
    @classmethod
    def _quota_kinds(cls, v: dict[str, int]) -> dict[str, int]:
        for kind, limit in v.items():
            if kind not in QUOTA_FIELDS:
                raise ValueError(f"{kind!r} is not a quota; quotas are {', '.join(QUOTA_FIELDS)}")
            if limit < 0:
                raise ValueError(f"{kind} must be 0 or more")
        return v

    @field_validator("jwt_secret", "metrics_token")
    @classmethod
    def _real_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and (len(v.get_secret_value()) < 32 or v.get_secret_value().lower() in ("changeme", "secret")):
            raise ValueError("must be at least 32 characters of real randomness")
        return v

    def resolved_image_cache(self) -> Path:
        if self.image_cache_dir is not None:
            return self.image_cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "vmplane" / "images"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'vmplane.db').resolve()}"
