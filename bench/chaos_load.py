"""The chaos soak's workload (issue 25): clients, SSE followers, a webhook receiver and a
sampler, each writing what it did and saw to the run directory as JSON Lines, so that
`chaos_check.check` can judge the history afterwards from files alone.

A client picks a replica at random per request; when that replica is dead, frozen or
starting (a connection error, a timeout, a 5xx) it retries on another with the SAME
`Idempotency-Key` (every POST carries one: docs/api.md, "Idempotency-Key on any POST"), so
that a retry never doubles work by our own hand and any doubled effect is vmplane's. PATCH
and DELETE take no key: their retries ask for the same end state (the same size, the VM
gone), so a repeat changes nothing a second time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

if TYPE_CHECKING:
    from chaos_fleet import FleetView

REQUEST_TIMEOUT = 5.0  # a frozen replica must not stall a client longer than this
ATTEMPTS = 8  # replicas tried per request before giving up (logged as such)
RETRY_STATUS = {503}  # a replica starting or cut from its store; a 500 or 502 is an answer (a node failed), not a dead replica
QUOTA = {"vcpu": 8, "ramMb": 16384, "diskGb": 400, "vms": 8}  # small: the quota client hits it often
WEBHOOK_EVENTS = ["vm.*", "job.*", "deployment.*"]
TERMINAL = {"succeeded", "failed", "partial", "cancelled"}
ID_KEYS = ("jobId", "vmIds", "vmId", "snapshotId", "id", "uuid", "name")


class Jsonl:
    """One append-only JSON Lines history file; every line gets "t" and is flushed at once,
    so a crash of this process loses nothing already seen."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: TextIO = path.open("a")

    def write(self, **obj: Any) -> None:
        obj.setdefault("t", time.time())
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def answer_ids(body: Any) -> dict[str, Any]:
    """The ids an answer names (job, VMs, snapshot, the resource's own id)."""
    if not isinstance(body, dict):
        return {}
    return {k: body[k] for k in ID_KEYS if k in body and isinstance(body[k], (str, int, list))}


@dataclass
class Api:
    """Requests to a random live replica, with failover and a log line per attempt."""

    replicas: list[str]
    key: str
    log: Jsonl
    rng: random.Random
    name: str
    jobs: set[str] = field(default_factory=set)  # every job a 202 accepted
    http: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=REQUEST_TIMEOUT))

    async def call(self, kind: str, method: str, path: str, body: Any = None, *, header: str = "X-API-Key") -> tuple[int, Any]:
        """(status, JSON body) of the first attempt that reached a replica answering below
        500; (0, None) when every attempt failed. POSTs carry one Idempotency-Key throughout."""
        idem = str(uuid.uuid4()) if method == "POST" else None
        headers = {header: self.key, **({"Idempotency-Key": idem} if idem else {})}
        order = self.rng.sample(self.replicas, len(self.replicas))
        for attempt in range(ATTEMPTS):
            replica = order[attempt % len(order)]
            t0 = time.time()
            try:
                r = await self.http.request(method, replica + path, json=body, headers=headers)
            except httpx.HTTPError as exc:
                self.log.write(t0=t0, t1=time.time(), client=self.name, kind=kind, method=method, path=path, replica=replica,
                               idem=idem, attempt=attempt, status=0, error=f"{type(exc).__name__}: {exc}"[:200])  # fmt: skip
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            try:
                data = r.json()
            except ValueError:
                data = None
            ids = answer_ids(data)
            line = dict(t0=t0, t1=time.time(), client=self.name, kind=kind, method=method, path=path, replica=replica,
                        idem=idem, attempt=attempt, status=r.status_code, ids=ids,
                        replayed=r.headers.get("Idempotent-Replayed") == "true")  # fmt: skip
            if r.status_code >= 400 and isinstance(data, dict):
                line["code"], line["error"] = data.get("code"), str(data.get("error"))[:200]
            if method != "GET" and isinstance(body, (dict, list)):
                line["body"] = body
            self.log.write(**line)
            if r.status_code in RETRY_STATUS:  # not ready, or no store behind it: another replica may serve
                await asyncio.sleep(0.1 * (attempt + 1))
                continue
            if r.status_code == 202 and isinstance(ids.get("jobId"), str):
                self.jobs.add(ids["jobId"])
            return r.status_code, data
        self.log.write(client=self.name, kind=kind, method=method, path=path, idem=idem, status=0, error="gave up")
        return 0, None

    async def close(self) -> None:
        await self.http.aclose()


class Receiver:
    """The webhook receiver: a bare HTTP/1.1 server on 127.0.0.1 answering 200 to every POST
    and writing each delivery (its headers, its body, whether the signature holds) to
    RUN/webhooks.jsonl. The checker verifies the signature again from the raw body."""

    def __init__(self, run_dir: Path) -> None:
        self.log = Jsonl(run_dir / "webhooks.jsonl")
        self.secret = ""
        self.server: asyncio.Server | None = None
        self.received = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/hook"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self._record(headers, body)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def _record(self, headers: dict[str, str], body: bytes) -> None:
        sig = headers.get("x-vmplane-signature", "")
        self.received += 1
        self.log.write(
            delivery=headers.get("x-vmplane-delivery"), event=headers.get("x-vmplane-event"), signature=sig,
            body=body.decode("utf-8", "replace"), valid=signature_ok(self.secret, sig, body),
        )  # fmt: skip

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
        self.log.close()


def signature_ok(secret: str, header: str, body: bytes) -> bool:
    """`X-Vmplane-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>` (docs/events.md)."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    if "t" not in parts or "v1" not in parts:
        return False
    want = hmac.new(secret.encode(), parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, parts["v1"])


class Follower:
    """An SSE follower of /api/v1/events that drops its connection every few seconds and
    resumes on a random replica with Last-Event-ID = the last id it received. Its file holds
    each connection ({"connect": …, "lastEventId"}), the start id a fresh stream announces
    ({"start": N}) and every event ({"id", "type", "resource"}), in the order received."""

    def __init__(self, name: str, view: FleetView, rng: random.Random) -> None:
        self.name, self.view, self.rng = name, view, rng
        self.log = Jsonl(view.run_dir / "events" / f"{name}.jsonl")
        self.last: int | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT, read=REQUEST_TIMEOUT)) as http:
            while not stop.is_set():
                replica = self.rng.choice(self.view.replicas)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._once(http, replica, stop), self.rng.uniform(2.0, 6.0))
                await asyncio.sleep(0.05)

    async def _once(self, http: httpx.AsyncClient, replica: str, stop: asyncio.Event) -> None:
        headers = {"X-API-Key": self.view.key}
        if self.last is not None:
            headers["Last-Event-ID"] = str(self.last)
        try:
            async with http.stream("GET", replica + "/api/v1/events", headers=headers) as r:
                self.log.write(connect=replica, lastEventId=self.last, status=r.status_code)
                if r.status_code != 200:
                    await asyncio.sleep(0.2)
                    return
                await self._read(r, replica, stop)
        except httpx.HTTPError as exc:
            self.log.write(connect=replica, lastEventId=self.last, status=0, error=type(exc).__name__)
            await asyncio.sleep(0.2)

    async def _read(self, r: httpx.Response, replica: str, stop: asyncio.Event) -> None:
        eid: int | None = None
        etype = data = None
        async for line in r.aiter_lines():
            if stop.is_set():
                return
            if line.startswith("id:"):
                eid = int(line[3:].strip())
            elif line.startswith("event:"):
                etype = line[6:].strip()
            elif line.startswith("data:"):
                data = line[5:].strip()
            elif line == "":
                if eid is not None and data is None:  # a fresh stream's start point: no event
                    self.log.write(start=eid, replica=replica)
                    self.last = eid
                elif eid is not None and data is not None and etype != "error":
                    ev = json.loads(data)
                    self.log.write(id=eid, type=etype, resource=ev.get("resource"), replica=replica)
                    self.last = eid
                elif etype == "error":
                    self.log.write(streamError=data, replica=replica)
                eid, etype, data = None, None, None

    def close(self) -> None:
        self.log.close()


class Workload:
    """The soak's clients (native, FastVM, Volant, and one organization's pushing on its
    quota), SSE followers, the webhook receiver and the sampler; every history line goes to
    the run directory (RUN/clients, RUN/events, RUN/webhooks.jsonl, RUN/samples.jsonl) and
    what the checker must know of the setup to RUN/setup.json."""

    ROLES = ("native", "quota", "fastvm", "volant", "native", "native")

    def __init__(self, view: FleetView, *, clients: int = 6, seed: int = 0) -> None:
        self.view = view
        self.rng = random.Random(seed)
        self.ops: collections.Counter[str] = collections.Counter()
        self.receiver = Receiver(view.run_dir)
        self.samples = Jsonl(view.run_dir / "samples.jsonl")
        self.owner = self._api("setup", view.key)
        self.quota_key = ""
        self.quota_org = ""
        self.setup_info: dict[str, Any] = {}
        self.clients = [(self.ROLES[i % len(self.ROLES)], f"c{i}-{self.ROLES[i % len(self.ROLES)]}") for i in range(clients)]
        self.apis: list[Api] = [self.owner]
        self.followers = [Follower(f"f{i}", view, random.Random(seed * 100 + i)) for i in range(2)]
        self.background: list[asyncio.Task[None]] = []
        self.bg_stop = asyncio.Event()
        self.vms: dict[str, list[str]] = collections.defaultdict(list)  # client -> VM ids it made
        self.snaps: list[str] = []
        self.schedules: list[str] = []
        self.deployments: list[str] = []
        self.finished: set[str] = set()  # accepted jobs seen terminal by settle

    def _api(self, name: str, key: str) -> Api:
        api = Api(self.view.replicas, key, Jsonl(self.view.run_dir / "clients" / f"{name}.jsonl"), random.Random(self.rng.random()), name)
        if hasattr(self, "apis"):
            self.apis.append(api)
        return api

    async def setup(self) -> None:
        """The quota organization (its owner key, its quota), the webhook and its receiver,
        a Volant deployment, two schedules firing every minute, the followers and the sampler.
        What the checker needs of it (secret, quota, ids) goes to RUN/setup.json."""
        url = await self.receiver.start()
        st, org = await self.owner.call("org", "POST", "/api/v1/orgs", {"name": "soak-quota", "owner": "soak-quota-owner"})
        assert st == 201, (st, org)
        self.quota_org, self.quota_key = org["id"], org["ownerKey"]
        st, q = await self.owner.call("quota", "PUT", f"/api/v1/orgs/{self.quota_org}/quotas", QUOTA)
        assert st == 200, (st, q)
        st, me = await self.owner.call("org", "GET", "/api/v1/org")
        st, hook = await self.owner.call("webhook", "POST", "/api/v1/webhooks", {"url": url, "events": WEBHOOK_EVENTS, "retryCount": 12})
        assert st == 201, (st, hook)
        self.receiver.secret = hook["secret"]
        overcommit = await self._overcommit()
        hook_start = await self.newest_event()  # events after this one are surely after the webhook
        st, dep = await self.owner.call("deployment", "POST", "/compat/volant/api/v1/deployments",
                                        {"name": "soak-web", "replicas": 2, "config": {"resources": {"cpu_cores": 1, "memory_mb": 512}}},
                                        header="X-Volant-API-Key")  # fmt: skip
        assert st == 201, (st, dep)
        self.deployments.append("soak-web")
        st, target = await self.owner.call(
            "create", "POST", "/api/v1/vms", {"name": "cron-target", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}}
        )
        assert st == 202, (st, target)
        for name, tmpl in (
            ("soak-cron-create", {"method": "POST", "path": "/api/v1/vms", "body": {"displayName": "cron made", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}}}),
            ("soak-cron-reboot", {"method": "POST", "path": f"/api/v1/vms/{target['vmIds'][0]}/reboot", "body": None}),
        ):  # fmt: skip
            st, sch = await self.owner.call(
                "schedule", "POST", "/api/v1/schedules", {"name": name, "schedule": "* * * * *", "jobTemplate": tmpl}
            )
            assert st == 201, (st, sch)
            self.schedules.append(sch["id"])
        self.setup_info = {
            "defaultOrg": me["id"], "quotaOrg": self.quota_org, "quotaKey": self.quota_key, "quota": QUOTA, "webhook": {"id": hook["id"], "secret": hook["secret"],
            "events": WEBHOOK_EVENTS, "startEventId": hook_start, "org": me["id"]}, "deployments": self.deployments,
            "schedules": self.schedules, "followerOrg": me["id"], "overcommit": overcommit, "nodes": {h: str(p) for h, p in self.view.nodes.items()},
        }  # fmt: skip
        (self.view.run_dir / "setup.json").write_text(json.dumps(self.setup_info, indent=1))
        for f in self.followers:
            f.task = asyncio.create_task(f.run(self.bg_stop))
        self.background.append(asyncio.create_task(self._sample(self._api("sampler-quota", self.quota_key))))

    async def _overcommit(self) -> dict[str, float]:
        """The overcommit per resource, which GET /nodes does not show (its totals are the raw
        capacity): the bootstrap organization has no quota, so its effective limits are what
        the online nodes can hand out, capacity × overcommit (docs/security.md, "Quotas")."""
        _, nodes = await self.owner.call("setup-nodes", "GET", "/api/v1/nodes?limit=100")
        _, quotas = await self.owner.call("setup-quotas", "GET", "/api/v1/org/quotas")
        online = [n["resources"] for n in nodes["items"] if n["status"] == "online"]
        eff = quotas["effectiveLimits"]
        return {
            "cpu": eff["vcpu"] / sum(n["cpuTotal"] for n in online),
            "ram_mb": eff["ramMb"] / sum(n["ramMbTotal"] for n in online),
            "disk_gb": eff["diskGb"] / sum(n["diskGbTotal"] for n in online),
        }

    async def newest_event(self) -> int:
        """The newest event id: what a stream opened without Last-Event-ID announces first."""
        for replica in self.rng.sample(self.view.replicas, len(self.view.replicas)) * 3:
            try:
                async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
                    async with http.stream("GET", replica + "/api/v1/events", headers={"X-API-Key": self.view.key}) as r:
                        async for line in r.aiter_lines():
                            if line.startswith("id:"):
                                return int(line[3:].strip())
            except httpx.HTTPError:
                await asyncio.sleep(0.3)
        raise RuntimeError("no replica opened an event stream")

    async def _sample(self, quota_api: Api) -> None:
        """Every second: each node's claimed resources against its capacity, and the quota
        organization's usage against its limits, as the API shows them."""
        while not self.bg_stop.is_set():
            t = time.time()
            st, nodes = await self.owner.call("sample-nodes", "GET", "/api/v1/nodes?limit=100")
            qs, quota = await quota_api.call("sample-quota", "GET", "/api/v1/org/quotas")
            line: dict[str, Any] = {"t": t}
            if st == 200:
                line["nodes"] = {n["hostname"]: {**n["resources"], "status": n["status"]} for n in nodes["items"]}
            if qs == 200:
                line["quota"] = {"usage": quota["usage"], "limits": quota["limits"]}
            self.samples.write(**line)
            await asyncio.sleep(1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Every client's loop until `stop` is set; the quota organization runs three loops at
        once so that its quota is contended."""
        loops = []
        for role, name in self.clients:
            if role == "quota":
                api = self._api(name, self.quota_key)
                loops += [self._loop(role, api, stop, i) for i in range(3)]
            else:
                loops.append(self._loop(role, self._api(name, self.view.key), stop, 0))
        await asyncio.gather(*loops)

    async def _loop(self, role: str, api: Api, stop: asyncio.Event, lane: int) -> None:
        rng = random.Random(self.rng.random())
        step = getattr(self, f"_{role}")
        n = 0
        while not stop.is_set():
            n += 1
            kind = await step(api, rng, f"{api.name}-{lane}-{n}")
            self.ops[kind] += 1
            await asyncio.sleep(rng.uniform(0.05, 0.4))

    # -- the operations -------------------------------------------------------------------

    def _pick(self, api: Api, rng: random.Random) -> str | None:
        mine = self.vms[api.name]
        return rng.choice(mine) if mine else None

    async def _native(self, api: Api, rng: random.Random, tag: str) -> str:
        mine = self.vms[api.name]
        roll = rng.random()
        vm = self._pick(api, rng)
        if roll < 0.25 or vm is None or (len(mine) < 4 and roll < 0.4):
            specs = [{"name": f"{tag}-{i}", "resources": {"cpu": rng.choice([1, 1, 2]), "ramMb": rng.choice([1024, 2048, 4096]), "diskGb": 10}}
                     for i in range(rng.randint(1, 20 if rng.random() < 0.2 else 6))]  # fmt: skip
            st, body = await api.call("create", "POST", "/api/v1/vms", specs)
            if st == 202:
                mine.extend(body["vmIds"])
            return "create"
        if roll < 0.40 or len(mine) > 15:
            gone = rng.sample(mine, min(len(mine), rng.randint(1, 5)))
            for v in gone:
                mine.remove(v)
            if len(gone) == 1:
                await api.call("delete", "DELETE", f"/api/v1/vms/{gone[0]}")
            else:
                await api.call("delete-bulk", "DELETE", "/api/v1/vms", {"vmIds": gone})
            return "delete"
        if roll < 0.65:
            action = rng.choice(["start", "stop", "reboot"])
            await api.call(action, "POST", f"/api/v1/vms/{vm}/{action}")
            return action
        if roll < 0.78:
            res = {"cpu": rng.choice([1, 2, 3]), "ramMb": rng.choice([1024, 2048, 4096])}
            await api.call("resize", "PATCH", f"/api/v1/vms/{vm}", {"resources": res})
            return "resize"
        if roll < 0.90 or not self.snaps:
            st, body = await api.call("snapshot", "POST", f"/api/v1/vms/{vm}/snapshots", {"name": f"soak {tag}"})
            if st == 202:
                self.snaps.append(body["snapshotId"])
            return "snapshot"
        snap = self.snaps.pop(rng.randrange(len(self.snaps)))
        await api.call("snapshot-delete", "DELETE", f"/api/v1/snapshots/{snap}")
        return "snapshot-delete"

    async def _quota(self, api: Api, rng: random.Random, tag: str) -> str:
        """The quota organization: creates past its quota, deletes, resizes up and down."""
        mine = self.vms[api.name]
        roll = rng.random()
        if roll < 0.45 or not mine:
            specs = [
                {"name": f"{tag}-{i}", "resources": {"cpu": rng.choice([1, 2]), "ramMb": 2048, "diskGb": 20}}
                for i in range(rng.randint(1, 4))
            ]
            st, body = await api.call("quota-create", "POST", "/api/v1/vms", specs)
            if st == 202:
                mine.extend(body["vmIds"])
            return "quota-create"
        vm = rng.choice(mine)
        if roll < 0.85:
            mine.remove(vm)
            await api.call("quota-delete", "DELETE", f"/api/v1/vms/{vm}")
            return "quota-delete"
        await api.call("quota-resize", "PATCH", f"/api/v1/vms/{vm}", {"resources": {"cpu": rng.choice([1, 2, 4])}})
        return "quota-resize"

    async def _fastvm(self, api: Api, rng: random.Random, tag: str) -> str:
        """FastVM's face: VMs by uuid, created from a machine type, snapshotted, deleted."""
        mine = self.vms[api.name]
        roll = rng.random()
        base = "/compat/fastvm/v1"
        if roll < 0.4 or not mine:
            st, body = await api.call(
                "fastvm-create", "POST", f"{base}/vms", {"machineType": rng.choice(["c1m2", "c2m4"]), "name": f"fast {tag}"}
            )
            if st in (201, 202) and isinstance(body, dict) and "id" in body:
                mine.append(body["id"])
            return "fastvm-create"
        vm = rng.choice(mine)
        if roll < 0.75:
            mine.remove(vm)
            await api.call("fastvm-delete", "DELETE", f"{base}/vms/{vm}")
            return "fastvm-delete"
        await api.call("fastvm-snapshot", "POST", f"{base}/snapshots", {"vmId": vm, "name": f"fast {tag}"})
        return "fastvm-snapshot"

    async def _volant(self, api: Api, rng: random.Random, tag: str) -> str:
        """Volant's face: VMs by name, power, and the deployment scaled between 1 and 4."""
        mine = self.vms[api.name]
        roll = rng.random()
        base = "/compat/volant/api/v1"
        h = "X-Volant-API-Key"
        if roll < 0.3:
            replicas = rng.randint(1, 4)  # never 0: convergence to 0 replicas would prove little
            await api.call("deployment-scale", "PATCH", f"{base}/deployments/soak-web", {"replicas": replicas}, header=h)
            return "deployment-scale"
        if roll < 0.6 or not mine:
            name = tag.replace("_", "-")
            st, _ = await api.call("volant-create", "POST", f"{base}/vms", {"name": name, "cpu_cores": 1, "memory_mb": 1024}, header=h)
            if st in (200, 201, 202):
                mine.append(name)
            return "volant-create"
        vm = rng.choice(mine)
        if roll < 0.8:
            mine.remove(vm)
            await api.call("volant-delete", "DELETE", f"{base}/vms/{vm}", header=h)
            return "volant-delete"
        action = rng.choice(["start", "stop"])
        await api.call(f"volant-{action}", "POST", f"{base}/vms/{vm}/{action}", header=h)
        return f"volant-{action}"

    # -- the end ----------------------------------------------------------------------------

    async def settle(self, timeout: float = 120.0) -> float:
        """After the heal: stop the schedules (so the history ends), then wait until every job
        a 202 accepted is terminal, the deployments run as many replicas as they want, no
        webhook delivery is pending, and each follower has received up to the newest event."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        for sch in self.schedules:
            await self.owner.call("schedule-disable", "POST", f"/api/v1/schedules/{sch}/disable")
        checks = (self._jobs_done, self._deployments_converged, self._webhooks_drained, self._followers_caught_up)
        for check in checks:
            while not await check():
                if time.monotonic() > deadline:
                    return time.monotonic() - t0
                await asyncio.sleep(0.5)
        return time.monotonic() - t0

    async def _jobs_done(self) -> bool:
        """True once every job a 202 accepted is terminal (each asked with the key that made it)."""
        for api in self.apis:
            for job in sorted(api.jobs):
                st, body = await api.call("settle-job", "GET", f"/api/v1/jobs/{job}")
                if st == 200 and body["state"] in TERMINAL:
                    api.jobs.discard(job)
                    self.finished.add(job)
        return not any(api.jobs for api in self.apis)

    async def _deployments_converged(self) -> bool:
        for name in self.deployments:
            st, dep = await self.owner.call("settle-deployment", "GET", f"/api/v1/deployments/{name}")
            if st != 200 or dep["readyReplicas"] != dep["replicas"]:
                return False
        return True

    async def _webhooks_drained(self) -> bool:
        """No delivery of the webhook is pending or in flight: every page of them (an old one
        held by a replica killed mid-attempt waits out its lease, and holds back its
        resource's later ones, so the newest page alone says nothing)."""
        hook = self.setup_info["webhook"]["id"]
        token = None
        while True:
            page = f"&pageToken={token}" if token else ""
            st, body = await self.owner.call("settle-webhook", "GET", f"/api/v1/webhooks/{hook}/deliveries?limit=200{page}")
            if st != 200 or any(d["status"] in ("pending", "delivering") for d in body["items"]):
                return False
            token = body.get("nextPageToken")
            if not token:
                return True

    async def _followers_caught_up(self) -> bool:
        """True once no follower has an event to come: a probe stream resumed from each
        follower's last id yields no newer event within a second. (The newest event id is no
        test: it may be another organization's, which no follower of ours ever sees.)"""
        for f in self.followers:
            if f.last is None or await self._newer_than(f.last):
                return False
        return True

    async def _newer_than(self, last: int) -> bool:
        replica = self.rng.choice(self.view.replicas)
        headers = {"X-API-Key": self.view.key, "Last-Event-ID": str(last)}
        try:
            async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT) as http:
                async with http.stream("GET", replica + "/api/v1/events", headers=headers) as r:
                    if r.status_code != 200:
                        return True
                    async with asyncio.timeout(1.0):
                        async for line in r.aiter_lines():
                            if line.startswith("id:") and int(line[3:].strip()) > last:
                                return True
        except TimeoutError:
            return False
        except httpx.HTTPError:
            return True
        return False

    async def close(self) -> None:
        """Stop the followers, the sampler and the receiver; close every client."""
        self.bg_stop.set()
        tasks = [f.task for f in self.followers if f.task] + self.background
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for f in self.followers:
            f.close()
        await self.receiver.close()
        for api in self.apis:
            await api.close()
            api.log.close()
        self.samples.close()
