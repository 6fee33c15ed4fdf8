"""The chaos soak's checker (issue 25): `final_state` writes what the store holds after the
soak settled to RUN/final.json; `check` then judges the whole recorded history from files
alone (clients, followers, webhook deliveries, samples, each node's call log and state,
final.json) and returns every violation with the lines that show it.

Each check's exact rule is in its docstring, with the guarantee (docs/*.md) it holds vmplane
to. A check reports what it can prove from the files and nothing it would have to guess.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import fnmatch
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chaos_load import TERMINAL, signature_ok  # noqa: E402

if TYPE_CHECKING:
    from chaos_fleet import FleetView

SIGNATURE_AGE = 300.0  # seconds a signature's t may be from the moment it arrived (docs: "check that t is recent")
RESOURCES = (("cpu", "cpuUsed", "cpuTotal"), ("ram_mb", "ramMbUsed", "ramMbTotal"), ("disk_gb", "diskGbUsed", "diskGbTotal"))


@dataclass
class Violation:
    kind: str
    subject: str
    evidence: str


# -- the final state (reads the live fleet) ---------------------------------------------------


async def _get(http: httpx.AsyncClient, view: FleetView, key: str, path: str) -> Any:
    """GET `path` from any replica that answers (they are all up after the heal, but one may
    still be starting); 10 rounds over the replicas before giving up."""
    for _ in range(10):
        for replica in view.replicas:
            try:
                r = await http.get(replica + path, headers={"X-API-Key": key})
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                return r.json()
            if r.status_code < 500:
                raise RuntimeError(f"GET {path}: {r.status_code} {r.text[:200]}")
        await asyncio.sleep(1)
    raise RuntimeError(f"GET {path}: no replica answered")


async def _pages(http: httpx.AsyncClient, view: FleetView, key: str, path: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = None
    while True:
        sep = "&" if "?" in path else "?"
        page = await _get(http, view, key, f"{path}{sep}limit=200" + (f"&pageToken={token}" if token else ""))
        items += page["items"]
        token = page.get("nextPageToken")
        if not token:
            return items


async def _event_log(pg_url: str) -> list[dict[str, Any]]:
    """The whole event log, from PostgreSQL (the API offers it only as a stream)."""
    import asyncpg

    conn = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        rows = await conn.fetch("SELECT seq, type, ts, resource, org_id, team_id, data FROM events ORDER BY seq")
    finally:
        await conn.close()
    return [
        {"id": r["seq"], "type": r["type"], "ts": r["ts"], "resource": r["resource"], "org": r["org_id"], "team": r["team_id"]}
        # the data of schedule events only (each names its due time); the others' would swell final.json
        | ({"data": json.loads(r["data"]) if isinstance(r["data"], str) else r["data"]} if r["type"].startswith("schedule.") else {})
        for r in rows
    ]


async def final_state(view: FleetView) -> None:
    """After settle: RUN/final.json with the nodes, every VM (node, status, organization,
    resources), every job with its tasks, the snapshots, the deployments (desired and ready
    replicas), the webhook subscriptions, read through the API with the key of each
    organization the workload used; and the complete event log, from PostgreSQL."""
    setup = json.loads((view.run_dir / "setup.json").read_text())
    keys = {setup["defaultOrg"]: view.key, setup["quotaOrg"]: setup["quotaKey"]}
    out: dict[str, Any] = {"vms": [], "jobs": [], "snapshots": []}
    async with httpx.AsyncClient(timeout=30) as http:
        out["nodes"] = {n["id"]: n["hostname"] for n in await _pages(http, view, view.key, "/api/v1/nodes")}
        for org, key in keys.items():
            for vm in await _pages(http, view, key, "/api/v1/vms"):
                out["vms"].append({"id": vm["id"], "uuid": vm["uuid"], "name": vm["name"], "node": vm["nodeId"], "status": vm["status"],
                                   "org": org, "resources": vm["resources"], "error": vm["error"]})  # fmt: skip
            for snap in await _pages(http, view, key, "/api/v1/snapshots"):
                out["snapshots"].append({**snap, "org": org})
            sem = asyncio.Semaphore(8)

            async def detail(job_id: str, key: str = key, org: str = org) -> dict[str, Any]:
                async with sem:
                    return {**await _get(http, view, key, f"/api/v1/jobs/{job_id}"), "org": org}

            jobs = await _pages(http, view, key, "/api/v1/jobs")
            out["jobs"] += await asyncio.gather(*(detail(j["id"]) for j in jobs))
        deps = await _pages(http, view, view.key, "/api/v1/deployments")
        out["deployments"] = [{"name": d["name"], "replicas": d["replicas"], "readyReplicas": d["readyReplicas"],
                               "replicaVms": d.get("replicaVms")} for d in deps]  # fmt: skip
        out["webhooks"] = await _pages(http, view, view.key, "/api/v1/webhooks")
    out["events"] = await _event_log(view.pg_url)
    (view.run_dir / "final.json").write_text(json.dumps(out))


# -- reading the history ------------------------------------------------------------------------


def jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The lines of a history file; a torn last line (the writer was killed) is skipped."""
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except ValueError:
            continue


@dataclass
class Run:
    dir: Path
    setup: dict[str, Any]
    final: dict[str, Any]
    clients: list[dict[str, Any]]
    calls: list[dict[str, Any]]  # every node's call log, merged, by time
    node_states: dict[str, dict[str, Any]]  # hostname -> its sim state file
    samples: list[dict[str, Any]]
    webhooks: list[dict[str, Any]]
    followers: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, run_dir: Path) -> Run:
        calls: list[dict[str, Any]] = []
        states: dict[str, dict[str, Any]] = {}
        for sim in sorted(run_dir.glob("nodes/*/sim")):
            for f in sim.glob("*.calls.jsonl"):
                calls += jsonl(f)
            for f in sim.glob("*.json"):
                states[f.stem] = json.loads(f.read_text())
        calls.sort(key=lambda c: c["t"])
        clients = [line for f in sorted(run_dir.glob("clients/*.jsonl")) for line in jsonl(f)]
        return cls(
            run_dir, json.loads((run_dir / "setup.json").read_text()), json.loads((run_dir / "final.json").read_text()), clients, calls,
            states, list(jsonl(run_dir / "samples.jsonl")), list(jsonl(run_dir / "webhooks.jsonl")),
            {f.stem: list(jsonl(f)) for f in sorted(run_dir.glob("events/*.jsonl"))},
        )  # fmt: skip


def _show(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


# -- the checks ---------------------------------------------------------------------------------


def check_jobs(run: Run) -> list[Violation]:
    """job-not-terminal: every job a client saw accepted (a 202 naming `jobId`) is in the
    store in a terminal state (succeeded, failed, partial, cancelled) after settle, and so is
    every other job the store holds (schedules', deployments'): after the faults end, work is
    finished or given up, never left queued or running (docs/architecture.md, "Jobs and tasks")."""
    jobs = {j["id"]: j for j in run.final["jobs"]}
    out: list[Violation] = []
    accepted: dict[str, dict[str, Any]] = {}
    for line in run.clients:
        job = (line.get("ids") or {}).get("jobId")
        if line.get("status") == 202 and isinstance(job, str):
            accepted.setdefault(job, line)
    for job_id, line in accepted.items():
        if job_id not in jobs:
            out.append(Violation("job-not-terminal", job_id, f"accepted but not in the store: {_show(line)}"))
    for job in jobs.values():
        if job["state"] not in TERMINAL:
            tasks = [t for t in job.get("tasks", []) if t["state"] not in TERMINAL]
            why = f"accepted: {_show(accepted[job['id']])}; " if job["id"] in accepted else ""
            out.append(Violation("job-not-terminal", job["id"], f"{why}state {job['state']}, unfinished tasks {_show(tasks[:5])}"))
    return out


def check_double_create(run: Run) -> list[Violation]:
    """double-create: a VM id is created ("create_vm" with effect "done") at most once over
    all nodes' call logs: a task's create runs once however often it is resumed
    (docs/security.md, "Work that happens once"); a second "done" is a doubled side effect,
    on one node or on two."""
    done: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for c in run.calls:
        if c["call"] == "create_vm" and c["effect"] == "done" and c.get("vm"):
            done[c["vm"]].append(c)
    return [Violation("double-create", vm, "\n".join(_show(c) for c in cs)) for vm, cs in done.items() if len(cs) > 1]


def check_store_vs_nodes(run: Run) -> list[Violation]:
    """store-node-mismatch / orphan-vm / orphan-snapshot, after settle (reconciliation done):
    a VM the store places on a node is defined in that node's sim state and on no other node;
    a VM defined on a node is in the store (else an orphan: it holds the node's capacity and
    nobody can delete it); a snapshot image on a node is a snapshot the store knows, and a
    snapshot the store says is ready has its image on its node."""
    hostname = run.final["nodes"]
    store = {vm["id"]: vm for vm in run.final["vms"]}
    where: dict[str, list[str]] = collections.defaultdict(list)
    for host, state in run.node_states.items():
        for vm in state.get("vms", []):
            where[vm["id"]].append(host)
    out: list[Violation] = []
    for vm in store.values():
        if vm["node"] is None:
            continue
        want = hostname.get(vm["node"], vm["node"])
        hosts = where.get(vm["id"], [])
        if hosts != [want]:
            out.append(Violation("store-node-mismatch", vm["id"], f"store: {_show(vm)} on {want}; defined on nodes: {hosts or 'none'}"))
    for vm_id, hosts in where.items():
        if vm_id not in store:
            calls = [c for c in run.calls if c.get("vm") == vm_id][-4:]
            out.append(Violation("orphan-vm", vm_id, f"defined on {hosts}, not in the store; its last calls: {_show(calls)}"))
    snaps = {s["id"] for s in run.final["snapshots"]}
    for snap in run.final["snapshots"]:
        host = hostname.get(snap.get("nodeId") or "", "")
        if snap.get("status") == "ready" and host and snap["id"] not in run.node_states.get(host, {}).get("snapshots", {}):
            out.append(Violation("store-node-mismatch", snap["id"], f"store: ready on {host}; not in its sim state: {_show(snap)}"))
    for host, state in run.node_states.items():
        for snap in state.get("snapshots", {}):
            if snap not in snaps:
                calls = [c for c in run.calls if c.get("snapshot") == snap][-4:]
                out.append(Violation("orphan-snapshot", snap, f"image on {host}, not in the store; its calls: {_show(calls)}"))
    return out


def _visible(event: dict[str, Any], org: str) -> bool:
    """Seen by an organization-wide credential of `org`: its organization's events and the
    installation-wide ones (docs/events.md, "Who sees an event")."""
    return event["org"] in (org, None)


@dataclass
class _Connection:
    """One connection of a follower: the id it resumed after (or the start a fresh stream
    announced), the events it received, the replica."""

    replica: str
    base: int | None
    received: list[dict[str, Any]]


def _connections(lines: list[dict[str, Any]]) -> list[_Connection]:
    conns: list[_Connection] = []
    for line in lines:
        if "connect" in line and line.get("status") == 200:
            conns.append(_Connection(line["connect"], line.get("lastEventId"), []))
        elif "start" in line and conns:
            conns[-1].base = line["start"]
        elif "id" in line and "type" in line and conns:
            conns[-1].received.append(line)
    return conns


def check_followers(run: Run) -> list[Violation]:
    """event-missing / event-duplicate: a stream resumed with Last-Event-ID replays the
    stored events after that id, then continues live, "with no gap and no duplicate"
    (docs/events.md, "Streams"). Each connection of a follower covers the ids after the one
    it resumed from (or after the `id: N` a fresh stream announces) up to the last event it
    received; every event of the log its credential sees in that span must have been
    received (event-missing), and no id may arrive twice, at or below the id the stream
    resumed after, or after a higher one (event-duplicate: one violation per connection,
    listing the ids)."""
    org = run.setup["followerOrg"]
    log = [e for e in run.final["events"] if _visible(e, org)]
    ids = [e["id"] for e in log]
    by_id = {e["id"]: e for e in log}
    out: list[Violation] = []
    for name, lines in run.followers.items():
        seen: set[int] = set()
        for c in _connections(lines):
            top = c.base
            repeated = []
            for line in c.received:
                if line["id"] in seen or (top is not None and line["id"] <= top):
                    repeated.append(line)
                seen.add(line["id"])
                top = line["id"] if top is None else max(top, line["id"])
            if repeated:
                out.append(Violation("event-duplicate", f"{name} on {c.replica} after {c.base}",
                                     f"{len(repeated)} events received again or out of order: ids {[x['id'] for x in repeated][:30]};"
                                     f" first {_show(repeated[0])}"))  # fmt: skip
            if c.base is None or top is None or top <= c.base:
                continue
            span = ids[bisect.bisect_right(ids, c.base) : bisect.bisect_right(ids, top)]
            missing = [by_id[i] for i in span if i not in seen]
            if missing:
                out.append(Violation("event-missing", f"{name} events {c.base}..{top}",
                                     f"stream on {c.replica} resumed after {c.base}, reached {top}; never received: {_show(missing[:10])}"
                                     f" ({len(missing)} in all)"))  # fmt: skip
    return out


def check_webhooks(run: Run) -> list[Violation]:
    """webhook-signature / webhook-missing / webhook-order.

    Signature: every delivery's `X-Vmplane-Signature` is `t=…,v1=HMAC-SHA256(secret, "t.body")`
    and `t` is within SIGNATURE_AGE of its arrival (docs/events.md).
    Missing: delivery is at least once, so every event of the log the subscription selects
    (its patterns, its organization's or installation-wide, webhook.* excluded) with an id
    after `startEventId` (the newest event once the webhook existed) arrived at least once;
    repeats are allowed (de-duplicated on X-Vmplane-Delivery).
    Order: per resource, the events' first arrivals are in event id order. docs/events.md
    does not promise this (workers deliver concurrently): the issue asks for it, so a
    violation here says the guarantee the issue wants is not (yet) vmplane's."""
    hook = run.setup["webhook"]
    out: list[Violation] = []
    first: dict[int, dict[str, Any]] = {}
    for line in run.webhooks:
        header = line.get("signature") or ""
        parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
        body = line["body"]
        fresh = parts.get("t", "").isdigit() and abs(line["t"] - int(parts["t"])) <= SIGNATURE_AGE
        if not signature_ok(hook["secret"], header, body.encode()) or not fresh:
            out.append(
                Violation("webhook-signature", str(line.get("delivery")), f"{'stale t' if not fresh else 'bad HMAC'}: {_show(line)}")
            )
            continue
        event = json.loads(body)
        first.setdefault(event["id"], {**event, "t": line["t"], "delivery": line.get("delivery")})
    wanted = [
        e for e in run.final["events"]
        if e["id"] > hook["startEventId"] and e["org"] in (hook["org"], None) and not e["type"].startswith("webhook.")
        and any(fnmatch.fnmatchcase(e["type"], p) for p in hook["events"])
    ]  # fmt: skip
    missing = [e for e in wanted if e["id"] not in first]
    if missing:
        out.append(
            Violation("webhook-missing", hook["id"], f"{len(missing)} of {len(wanted)} events never delivered: {_show(missing[:10])}")
        )
    per: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in sorted(first.values(), key=lambda e: e["t"]):
        if e.get("resource"):
            per[e["resource"]].append(e)
    for res, evs in per.items():
        top = 0
        for e in evs:
            if e["id"] < top:
                out.append(Violation("webhook-order", res, f"event {e['id']} ({e['type']}) arrived after event {top}; arrivals: "
                                     + _show([(x["id"], x["type"], round(x["t"], 3)) for x in evs])))  # fmt: skip
                break
            top = e["id"]
    return out


def check_capacity(run: Run) -> list[Violation]:
    """over-capacity: no node ever holds more than its capacity × overcommit: every call
    log line's `held` ≤ its `capacity` (the driver's, overcommit included), and every
    sample's used ≤ total × the overcommit the workload measured at setup (GET /nodes shows
    raw totals; VMPLANE_CPU_OVERCOMMIT defaults to 4), as placement promises: "used always
    equals the sum of what the VMs placed on the node hold" and never passes capacity ×
    overcommit (docs/architecture.md, placement)."""
    over_ = run.setup.get("overcommit", {})
    out: list[Violation] = []
    for c in run.calls:
        over = [i for i in range(3) if c["held"][i] > c["capacity"][i]]
        if over:
            out.append(Violation("over-capacity", c["node"], f"call log: {_show(c)}"))
    for s in run.samples:
        for host, n in (s.get("nodes") or {}).items():
            for res, used, total in RESOURCES:
                cap = n[total] * over_.get(res, 1.0)
                if n[used] > cap:
                    out.append(
                        Violation(
                            "over-capacity", host, f"sample at {s['t']:.3f}: {used} {n[used]} > {total} {n[total]} × {over_.get(res, 1.0)}"
                        )
                    )
    return out


def _quota_vms(run: Run) -> set[str]:
    org = run.setup["quotaOrg"]
    vms = {vm["id"] for vm in run.final["vms"] if vm["org"] == org}
    for line in run.clients:
        if str(line.get("kind", "")).startswith("quota-") and line.get("status") == 202:
            vms.update((line.get("ids") or {}).get("vmIds") or [])
    return vms


def check_quota(run: Run) -> list[Violation]:
    """over-quota: the quota organization's VMs never hold more than its quota at any instant.
    Replayed from every node's call log, in time order: a create "done" adds the VM's
    resources, a resize "done" replaces them, a delete "done" removes them; after each call
    the sums (vCPUs, RAM, disk, VM count) stay within the quota. The store counts a VM from
    before its create until after its delete, so the nodes can only hold less than the store
    counts (docs/security.md, "Quotas": "concurrent requests can never exceed a quota").
    Each sample's usage ≤ limit too. One violation per limit, at its first breach."""
    quota = run.setup["quota"]
    mine = _quota_vms(run)
    held: dict[str, list[int]] = {}
    out: list[Violation] = []
    breached: set[str] = set()
    for c in run.calls:
        vm = c.get("vm")
        if vm not in mine or c["effect"] != "done":
            continue
        if c["call"] in ("create_vm", "resize_vm") and c.get("resources"):
            held[vm] = list(c["resources"])
        elif c["call"] == "delete_vm":
            held.pop(vm, None)
        sums = {"vcpu": sum(r[0] for r in held.values()), "ramMb": sum(r[1] for r in held.values()),
                "diskGb": sum(r[2] for r in held.values()), "vms": len(held)}  # fmt: skip
        for k, v in sums.items():
            if quota.get(k) is not None and v > quota[k] and k not in breached:
                breached.add(k)
                out.append(
                    Violation("over-quota", f"{run.setup['quotaOrg']} {k}", f"{k} {v} > {quota[k]} after {_show(c)}; held: {_show(held)}")
                )
    for s in run.samples:
        q = s.get("quota")
        for k, limit in ((q or {}).get("limits") or {}).items():
            if limit is not None and q["usage"].get(k, 0) > limit and f"sample {k}" not in breached:
                breached.add(f"sample {k}")
                out.append(
                    Violation("over-quota", f"{run.setup['quotaOrg']} {k}", f"sample at {s['t']:.3f}: usage {q['usage'][k]} > {limit}")
                )
    return out


def check_deployments(run: Run) -> list[Violation]:
    """deployment-not-converged: after settle every deployment runs as many replicas as it
    wants (readyReplicas == replicas): the reconciler converges once the faults end
    (docs/deployments.md)."""
    return [
        Violation(
            "deployment-not-converged", d["name"], f"desired {d['replicas']}, ready {d['readyReplicas']}: {_show(d.get('replicaVms'))}"
        )
        for d in run.final["deployments"]
        if d["readyReplicas"] != d["replicas"]
    ]


def check_schedules(run: Run) -> list[Violation]:
    """schedule-doubled: "exactly one run per due time, however many vmplane processes share
    the store" (docs/events.md, "Schedules"): no two `schedule.triggered` events (not manual)
    name one schedule and one due time, across leader changes, replica kills and freezes."""
    seen: dict[tuple[str, str], list[int]] = {}
    for e in run.final["events"]:
        data = e.get("data") or {}
        if e["type"] == "schedule.triggered" and not data.get("manual"):
            seen.setdefault((e["resource"], data.get("dueAt")), []).append(e["id"])
    return [
        Violation("schedule-doubled", f"{schedule} at {due}", f"triggered by events {ids}")
        for (schedule, due), ids in seen.items()
        if len(ids) > 1
    ]


CHECKS = (
    check_schedules,
    check_jobs,
    check_double_create,
    check_store_vs_nodes,
    check_followers,
    check_webhooks,
    check_capacity,
    check_quota,
    check_deployments,
)


def check(run_dir: Path) -> list[Violation]:
    """Every violation the history under `run_dir` shows (reads files only)."""
    run = Run.load(run_dir)
    return [v for c in CHECKS for v in c(run)]
