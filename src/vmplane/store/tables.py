"""The schema. Times are epoch seconds (float) so SQLite and PostgreSQL behave alike."""

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint, false
from sqlalchemy import false as sa_false

metadata = MetaData()

# An auto-incrementing integer key that is INTEGER PRIMARY KEY on SQLite and BIGINT on PostgreSQL.
Seq = BigInteger().with_variant(Integer(), "sqlite")

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

nodes = Table(
    "nodes",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("hostname", String(255), nullable=False),
    Column("driver", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("cpu_total", Integer, nullable=False),
    Column("ram_mb_total", BigInteger, nullable=False),
    Column("disk_gb_total", BigInteger, nullable=False),
    Column("cpu_used", Integer, nullable=False, default=0),
    Column("ram_mb_used", BigInteger, nullable=False, default=0),
    Column("disk_gb_used", BigInteger, nullable=False, default=0),
    Column("labels", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=True),
    Column("pci_devices", JSON, nullable=True),
    # remote nodes (run by `vmplane agent`): where the agent serves its driver, the SHA-256 of
    # the node credential it authenticates with (NULL: revoked), its driver's Capabilities
    Column("agent_url", Text, nullable=True),
    Column("credential_id", String(64), nullable=True),
    Column("credential_digest", String(64), nullable=True),
    Column("capabilities", JSON, nullable=True),
    Column("cordoned", Boolean, nullable=False, default=False),  # no new VMs are placed there
)

node_tokens = Table(
    "node_tokens",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("description", String(256), nullable=False),
    Column("one_time", Boolean, nullable=False),
    Column("uses", Integer, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
"""Join tokens for node agents: only a SHA-256 digest of each token is stored."""

vms = Table(
    "vms",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("name", String(63), nullable=False),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True, index=True),
    Column("node_id", String(64), nullable=True, index=True),
    Column("template_id", String(64), nullable=True, index=True),
    Column("snapshot_id", String(64), nullable=True, index=True),
    Column("status", String(16), nullable=False, index=True),
    Column("cpu", Integer, nullable=False),
    Column("ram_mb", BigInteger, nullable=False),
    Column("disk_gb", BigInteger, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("started_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("guest_ready", Boolean, nullable=False, server_default=false()),  # the guest said it is ready this boot (no Python default: inserts of older tests name no such column)
    Column("running_spec", JSON, nullable=True),
    Column("cdrom_iso_id", String(64), nullable=True, index=True),  # the ISO in its CD-ROM (0032)
    UniqueConstraint("org_id", "name", name="uq_vms_org_name"),
    sqlite_autoincrement=True,
)
"""A VM's name is unique within its organization only (issue 19: names per organization).
`seq` is the VM's VMID (`Vm.vmid`): never handed out twice (AUTOINCREMENT on SQLite, a
sequence on PostgreSQL), so a deleted VM's id never names another."""

vm_tags = Table(
    "vm_tags",
    metadata,
    Column("vm_id", String(64), primary_key=True),
    Column("tag", String(64), primary_key=True),
    Index("ix_vm_tags_tag", "tag"),
)

templates = Table(
    "templates",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(63), nullable=False),
    Column("org_id", String(64), nullable=True, index=True),
    Column("os", String(32), nullable=False),
    Column("node_id", String(64), nullable=True),
    Column("source_url", Text, nullable=True),
    Column("status", String(16), nullable=False),
    Column("format", String(16), nullable=True),
    Column("size_mb", BigInteger, nullable=False, default=0),
    Column("image_path", Text, nullable=True),
    Column("checksum", String(80), nullable=True),
    Column("boot", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("login_user", String(32), nullable=False, server_default="root"),  # the guest's SSH login (domain/login.py; 0027)
)
"""Images to create VMs from. org_id NULL: the operators' templates, shared with every
organization (the shared namespace); a name is unique within its organization, or among the
shared ones (a partial index: NULLs are distinct in a unique index, and an expression index
would not survive SQLite's batch migrations, which rebuild tables from reflection)."""
Index("uq_templates_org_name", templates.c.org_id, templates.c.name, unique=True)
Index("uq_templates_shared_name", templates.c.name, unique=True, sqlite_where=templates.c.org_id.is_(None), postgresql_where=templates.c.org_id.is_(None))

isos = Table(
    "isos",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(63), nullable=False),
    Column("org_id", String(64), nullable=True, index=True),
    Column("status", String(16), nullable=False),
    Column("source_url", Text, nullable=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""The ISO library (0032): org_id NULL is the operators' ISOs, shared read-only with every
organization; names are unique per namespace as templates' are. The file is
`<data dir>/isos/<id>.iso` (services/isos.py)."""
Index("uq_isos_org_name", isos.c.org_id, isos.c.name, unique=True)
Index("uq_isos_shared_name", isos.c.name, unique=True, sqlite_where=isos.c.org_id.is_(None), postgresql_where=isos.c.org_id.is_(None))

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("type", String(32), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True),  # the team of what it acts on (NULL: the whole organization's)
    Column("created_by", String(255), nullable=False),
    Column("total", Integer, nullable=False),
    Column("n_succeeded", Integer, nullable=False, default=0),
    Column("n_failed", Integer, nullable=False, default=0),
    Column("n_cancelled", Integer, nullable=False, default=0),
    Column("progress_sum", BigInteger, nullable=False, default=0),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("origin", JSON, nullable=True),  # where the request came from: auth.origin (0026)
)

tasks = Table(
    "tasks",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("job_id", String(64), nullable=False),
    Column("org_id", String(64), nullable=False),
    Column("team_id", String(64), nullable=True),  # the team of its resource (NULL: the whole organization's)
    Column("type", String(32), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("progress", Integer, nullable=False, default=0),
    Column("payload", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Index("ix_tasks_job", "job_id", "seq"),
    Index("ix_tasks_state_seq", "state", "seq"),
    Index("ix_tasks_resource_state", "resource_id", "state", "seq"),
    Index("ix_tasks_lease", "lease_owner"),
)

task_logs = Table(
    "task_logs",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("message", Text, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("caller", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

host_ports = Table(
    "host_ports",
    metadata,
    Column("node_scope", String(64), primary_key=True),
    Column("port", Integer, primary_key=True),
    Column("protocol", String(8), primary_key=True),
    Column("vm_id", String(64), nullable=False, index=True),
)
"""Host ports forwarded to guests (user-mode networking), one owner each."""

console_tokens = Table(
    "console_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("vm_id", String(64), nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("used", Boolean, nullable=False, default=False),
    Column("holder", String(160), nullable=True),  # the credential that asked (Principal.limit_key): its stream slots
)
"""One-time console tokens; only a SHA-256 of each token is kept."""

events = Table(
    "events",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("type", String(48), nullable=False, index=True),
    Column("ts", Float, nullable=False, index=True),
    Column("resource", String(64), nullable=True, index=True),
    Column("org_id", String(64), nullable=True),
    Column("data", JSON, nullable=False),
    Column("team_id", String(64), nullable=True),  # seen only by the whole organization and this team
    sqlite_autoincrement=True,  # an SSE id or webhook cursor never names two events, even after a prune empties the log
)
"""The event log: `seq` is the event id (SSE `id:`, `Last-Event-ID`), in commit order."""

webhooks = Table(
    "webhooks",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("timeout_sec", Float, nullable=False),
    Column("retry_count", Integer, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("secret", Text, nullable=False),  # sealed with the data dir's key (services/webhooks.py)
    Column("created_by", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("format", String(16), nullable=False, default="vmplane", server_default="vmplane"),  # how deliveries are written
    Column("owner_id", String(64), nullable=True),
    # the scope of the credential that made it, which it acts with (services/scopes.py)
    Column("credential", String(64), nullable=True),
    Column("team_id", String(64), nullable=True),
    Column("read_only", Boolean, nullable=False, default=False, server_default=sa_false()),
    Column("disabled_reason", Text, nullable=True),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("webhook_id", String(64), nullable=False),
    Column("event_seq", BigInteger, nullable=False),
    Column("event_type", String(48), nullable=False),
    Column("resource", String(64), nullable=True),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Index("ix_deliveries_due", "status", "next_attempt_at"),
    Index("ix_deliveries_webhook", "webhook_id", "seq"),
    Index("ix_deliveries_resource", "webhook_id", "resource", "event_seq"),
)
"""The webhook outbox: one row per (webhook, event), delivered at least once, and for each
(webhook, resource) in the order of the events."""

schedules = Table(
    "schedules",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("name", String(128), nullable=False),
    Column("schedule", String(128), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("job_template", JSON, nullable=False),
    Column("misfire_policy", String(16), nullable=False),
    Column("backup_vm_id", String(64), nullable=True),
    Column("keep_last", Integer, nullable=True),
    Column("owner", String(255), nullable=False),
    Column("owner_id", String(64), nullable=False),
    Column("next_run", Float, nullable=True, index=True),
    Column("last_run", Float, nullable=True),
    Column("run_count", Integer, nullable=False),
    Column("success_count", Integer, nullable=False),
    Column("failure_count", Integer, nullable=False),
    Column("last_job_id", String(64), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("origin", JSON, nullable=True),  # what the face that made it recorded (its own id, fields)
    # the scope of the credential that made it, which it acts with (services/scopes.py)
    Column("credential", String(64), nullable=True),
    Column("team_id", String(64), nullable=True),
    Column("read_only", Boolean, nullable=False, default=False, server_default=sa_false()),
    Column("disabled_reason", Text, nullable=True),
    UniqueConstraint("backup_vm_id", name="uq_schedules_backup_vm_id"),
)
"""Cron schedules; a VM's backup schedule is one with `backup_vm_id` and `keep_last` set."""

schedule_runs = Table(
    "schedule_runs",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("schedule_id", String(64), nullable=False, index=True),
    Column("due_at", Float, nullable=True),
    Column("triggered_at", Float, nullable=False),
    Column("manual", Boolean, nullable=False),
    Column("job_id", String(64), nullable=True),
    Column("state", String(16), nullable=False, index=True),
    Column("error", Text, nullable=True),
)
"""One row per run of a schedule; `state` follows its job (running → succeeded|failed)."""

orgs = Table(
    "orgs",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("quotas", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("org_id", String(64), primary_key=True),
    Column("user_id", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
)

teams = Table(
    "teams",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("name", String(63), nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("org_id", "name", name="uq_teams_org_name"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("user_id", String(64), nullable=False),
    Column("name", String(128), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("team_id", String(64), nullable=True),
    Column("read_only", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
    Column("created_by_user", String(64), nullable=True),
    Column("created_by_key", String(64), nullable=True),
    # who made the key: the user, and the key they used (None: a JWT, the bootstrap, or a key
    # made before creators were recorded)
)
"""API keys: only a SHA-256 digest of each key and a short prefix are stored."""

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("org_id", String(64), nullable=True, index=True),
    Column("actor", String(255), nullable=False),
    Column("credential", String(64), nullable=True),
    Column("method", String(8), nullable=False),
    Column("route", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("remote", String(64), nullable=True),
    Column("count", Integer, nullable=False, default=1, server_default="1"),
    # how many requests the row stands for: failed authentications are one row per client
    # address per minute (services/tenancy.FailedAuths), everything else one row per request
    Column("creator_user", String(64), nullable=True),
    Column("creator_key", String(64), nullable=True),
    # who made the credential the request used (api_keys.created_by_*)
    sqlite_autoincrement=True,  # an audit id (the /audit cursor) is never reused after retention empties the log
)

ws_tickets = Table(
    "ws_tickets",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("org_id", String(64), nullable=False),
    Column("user_id", String(64), nullable=False),
    Column("credential", String(64), nullable=True),
    Column("team_id", String(64), nullable=True),
    Column("read_only", Boolean, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
    Column("used", Boolean, nullable=False, default=False),
)
"""One-time WebSocket tickets (POST /api/v1/ws-tickets), bound to the credential that asked
for one; only a SHA-256 of each ticket is kept."""

vm_usage = Table(
    "vm_usage",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("vm_id", String(64), nullable=False, index=True),
    Column("vm_name", String(63), nullable=False),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True),
    Column("instance_type", String(64), nullable=False),
    Column("cpu", Integer, nullable=False),
    Column("ram_mb", BigInteger, nullable=False),
    Column("disk_gb", BigInteger, nullable=False),
    Column("cents_per_hour", Float, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float, nullable=True),
    # what a billing row needs once the VM is gone: filled when the span opens and again when
    # it closes (NULL: not known then, or a span of a VM deleted before migration 0023)
    Column("vm_uuid", String(36), nullable=True),
    Column("vmid", BigInteger, nullable=True),
    Column("node_id", String(64), nullable=True),
    Column("ip_address", String(64), nullable=True),  # the first IPv4 address, address/prefix
    Column("template_name", String(255), nullable=True),
    Column("gpu_count", Integer, nullable=True),
    Column("display_name", String(64), nullable=True),  # the name the client gave, where not the VM's name (0025)
)
"""Billing: one row per span of time a VM held a given shape (open while it still does)."""

snapshots = Table(
    "snapshots",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("uuid", String(36), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True),
    Column("vm_id", String(64), nullable=False, index=True),
    Column("vm_uuid", String(36), nullable=True),
    Column("vm_name", String(63), nullable=False),
    Column("node_id", String(64), nullable=True),
    Column("template_id", String(64), nullable=True, index=True),
    Column("name", String(64), nullable=False),  # display text: domain.names.check_display_name
    Column("status", String(16), nullable=False),
    Column("image_path", Text, nullable=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("config", JSON, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""Snapshots of VM disks (node-local images) with the VM's configuration at that moment."""

backups = Table(
    "backups",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True),
    Column("vm_id", String(64), nullable=False, index=True),
    Column("vm_name", String(63), nullable=False),
    Column("status", String(16), nullable=False),
    Column("notes", Text, nullable=False),
    Column("repo_snapshot", String(80), nullable=True),
    Column("logical_bytes", BigInteger, nullable=False),
    Column("added_bytes", BigInteger, nullable=False),
    Column("error", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
)
"""Backups of VM disks in the backup store (a restic repository); they outlive their VM."""

networks = Table(
    "networks",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(63), nullable=False),
    Column("org_id", String(64), nullable=True, index=True),
    Column("type", String(16), nullable=False),
    Column("subnet", String(64), nullable=False),
    Column("gateway", String(64), nullable=False),
    Column("ipv6_prefix", String(64), nullable=True),
    Column("bridge", String(15), nullable=True),
    Column("created_at", Float, nullable=False),
)
"""Networks VMs join. org_id NULL: shared by every organization (the default `user` network).
A name is unique within its organization, or among the shared ones."""
Index("uq_networks_org_name", networks.c.org_id, networks.c.name, unique=True)
Index("uq_networks_shared_name", networks.c.name, unique=True, sqlite_where=networks.c.org_id.is_(None), postgresql_where=networks.c.org_id.is_(None))

ip_addresses = Table(
    "ip_addresses",
    metadata,
    Column("network_id", String(64), primary_key=True),
    Column("addr", BigInteger, primary_key=True),
    Column("address", String(64), nullable=False),
    Column("vm_id", String(64), nullable=False, index=True),
    Column("nic", Integer, nullable=False),
    Column("is_primary", Boolean, nullable=False),
    Column("created_at", Float, nullable=False),
)
"""IPAM: each IPv4 address of a network has at most one owner (the key makes it so)."""

vm_firewalls = Table(
    "vm_firewalls",
    metadata,
    Column("vm_id", String(64), primary_key=True),
    Column("firewall", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""A VM's firewall (domain.network.Firewall wire form); no row: disabled, ACCEPT both ways."""

pci_assignments = Table(
    "pci_assignments",
    metadata,
    Column("node_id", String(64), primary_key=True),
    Column("address", String(16), primary_key=True),
    Column("vm_id", String(64), nullable=False, index=True),
)
"""Host PCI devices given to VMs, one VM each."""

deployments = Table(
    "deployments",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("name", String(63), nullable=False),
    Column("org_id", String(64), nullable=False, index=True),
    Column("team_id", String(64), nullable=True),
    Column("owner_id", String(64), nullable=False),
    Column("replicas", Integer, nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # the rest of the scope of the credential that made it (team_id above; services/scopes.py)
    Column("credential", String(64), nullable=True),
    Column("read_only", Boolean, nullable=False, default=False, server_default=sa_false()),
    Column("disabled_reason", Text, nullable=True),
    UniqueConstraint("org_id", "name", name="uq_deployments_org_name"),
)
"""Deployments: a desired number of replicas (VMs `<name>-<i>`, in the deployment's
organization) made from one config; the reconciler (services/deployments.py) acts for
`owner_id`. A name is unique within its organization."""

vm_configs = Table(
    "vm_configs",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("vm_id", String(64), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("config", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("vm_id", "version", name="uq_vm_configs_vm_version"),
    sqlite_autoincrement=True,  # `seq` is Volant's config version `id`: never reused
)
"""A VM's full config (Volant's Config shape), one row per version; every change is a new row."""

plugins = Table(
    "plugins",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False),
    Column("runtime", String(63), nullable=False),
    Column("version", String(64), nullable=False),
    Column("org_id", String(64), nullable=True),
    Column("enabled", Boolean, nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("template_id", String(64), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
"""Installed plugins (Volant's plugin-manifest-v1): VM blueprints; `template_id` is the id of
the template their image was fetched into, one of the plugin's owner whose checksum is the
manifest's (None: VMs use the default template). org_id NULL: installed by the operators,
shared with every organization. Names and runtimes are unique within an organization, or
among the shared plugins."""
Index("uq_plugins_org_name", plugins.c.org_id, plugins.c.name, unique=True)
Index("uq_plugins_org_runtime", plugins.c.org_id, plugins.c.runtime, unique=True)
Index("uq_plugins_shared_name", plugins.c.name, unique=True, sqlite_where=plugins.c.org_id.is_(None), postgresql_where=plugins.c.org_id.is_(None))
Index("uq_plugins_shared_runtime", plugins.c.runtime, unique=True, sqlite_where=plugins.c.org_id.is_(None), postgresql_where=plugins.c.org_id.is_(None))

plugin_health = Table(
    "plugin_health",
    metadata,
    Column("vm_id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Column("checked_at", Float, nullable=False),
    Column("changed_at", Float, nullable=False),
)
"""What the health check of a plugin VM's workload last answered (healthy/unhealthy)."""

imports = Table(
    "imports",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False, index=True),
    Column("job_id", String(64), nullable=False, index=True),
    Column("vm_id", String(64), nullable=True),
    Column("name", String(63), nullable=False),
    Column("source_type", String(16), nullable=False),
    Column("source", JSON, nullable=False),
    Column("options", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("stage", String(16), nullable=True),
    Column("bytes_done", BigInteger, nullable=False, default=0),
    Column("bytes_total", BigInteger, nullable=True),
    Column("shape", JSON, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_by", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("finished_at", Float, nullable=True),
)
"""VMs brought into vmplane (services/imports.py): the source as given (never its
credentials), the stage reached and bytes moved; `shape` is what the source said the VM is."""

vsphere_profiles = Table(
    "vsphere_profiles",
    metadata,
    Column("seq", Seq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("org_id", String(64), nullable=False),
    Column("name", String(63), nullable=False),
    Column("url", Text, nullable=False),
    Column("insecure", Boolean, nullable=False),
    Column("secret", Text, nullable=False),
    Column("created_by", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("org_id", "name", name="uq_vsphere_profiles_org_name"),
)
"""vCenter connection profiles referenced by name; `secret` is the username and password
encrypted with the data dir's key (services/secrets.py), never stored or shown in clear."""

vm_samples = Table(
    "vm_samples",
    metadata,
    Column("vm_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("cpu_percent", Float, nullable=False),
    Column("memory_mb", Integer, nullable=False),
    Column("memory_total_mb", Integer, nullable=False),
    Column("memory_source", String(16), nullable=True),
    Column("disk_read_bytes", BigInteger, nullable=False),
    Column("disk_write_bytes", BigInteger, nullable=False),
    Column("net_rx_bytes", BigInteger, nullable=False),
    Column("net_tx_bytes", BigInteger, nullable=False),
    Index("ix_vm_samples_vm_at", "vm_id", "at"),
    Index("ix_vm_samples_at", "at"),
)
"""What the stats path (`HypervisorDriver.stats_vm`) said of each running VM, every
`stats_sample_seconds` (services/stats_history.py); the disk and network figures are the
driver's counters (rates are their differences), kept `stats_retention_seconds`."""

node_samples = Table(
    "node_samples",
    metadata,
    Column("node_id", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("cpu_used", Integer, nullable=False),
    Column("cpu_total", Integer, nullable=False),
    Column("ram_mb_used", BigInteger, nullable=False),
    Column("ram_mb_total", BigInteger, nullable=False),
    Column("host_cpu_percent", Float, nullable=True),
    Column("host_memory_percent", Float, nullable=True),
    Index("ix_node_samples_node_at", "node_id", "at"),
    Index("ix_node_samples_at", "at"),
)
"""Each node's claimed vCPUs and RAM, and where the node is this host, the host's measured
CPU and memory use (NULL otherwise), sampled with the VMs' figures."""
