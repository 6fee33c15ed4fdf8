"""The chaos soak's fleet and nemesis: three `vmplane serve` replicas on one throwaway
PostgreSQL, a TCP front balancing over them, three `vmplane agent --driver sim` nodes behind
latency proxies, and a nemesis that kills, freezes and slows them on a seeded schedule.

    .venv/bin/python bench/chaos_fleet.py [--seconds 60] [--mean-gap 5] [--seed 0]

Run by hand, it is the fleet's self-check: a trivial loop creates and deletes VMs through the
replicas while the nemesis works, then everything is healed, and it prints how long the heal
took, whether every node is online, what the nodes' call logs hold and which lines of the
replicas' and agents' logs look like bugs (tracebacks, lease trouble). bench/chaos.py drives
the real soak with it (`Fleet`, `FleetView`).

Every process is started by this one and stopped when the `async with Fleet(...)` block ends,
also on an exception or a cancel; the children die with it even on a kill -9 of it (the kernel
kills them, PR_SET_PDEATHSIG), except PostgreSQL, which `pg_ctl` detaches.
"""

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_RATE_LIMITS, free_port  # noqa: E402
from replicas import new_database  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LEASE = 3.0
FLEET_ENV = {
    **NO_RATE_LIMITS,
    "VMPLANE_LEASE_SECONDS": str(LEASE),
    "VMPLANE_NODE_OFFLINE_SECONDS": "3",
    "VMPLANE_COORDINATION_SECONDS": "0.5",
    "VMPLANE_SIM_LATENCY_MS": "50",
    "VMPLANE_SIM_CALL_LOG": "1",
    "VMPLANE_OUTBOUND_ALLOW": "127.0.0.1",  # webhooks reach the workload's local receiver
    # small nodes, so that capacity is really contended
    "VMPLANE_SIM_NODE_CPU": "16",
    "VMPLANE_SIM_NODE_RAM_MB": "65536",
    "VMPLANE_SIM_NODE_DISK_GB": "2000",
}


@dataclass
class FleetView:
    run_dir: Path
    replicas: list[str]
    """base URLs http://127.0.0.1:PORT of the replicas (any may be down or frozen at a moment)"""
    front: str
    """base URL of a TCP front that forwards to a live replica (what agents use)"""
    key: str
    """the owner's API key (header X-API-Key), an operator of the default org"""
    pg_url: str
    """postgresql+asyncpg URL of the soak's database"""
    nodes: dict[str, Path]
    """agent hostname -> its sim state dir (holds <hostname>.json and <hostname>.calls.jsonl)"""


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when this process dies, however it dies, so that a
    kill -9 of the soak leaves no replica or agent behind."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# -- TCP proxies ---------------------------------------------------------------------------

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class Proxy:
    """A TCP proxy on a free loopback port: each connection goes to what `connect` opens, and
    every chunk, both ways, is held `delay()` seconds (read when the chunk arrives) before it
    is passed on. Chunks of a connection leave in the order they came (one queue per
    direction), so a delay that shrinks never reorders bytes."""

    def __init__(self, connect: Connect, delay: Callable[[], float] = lambda: 0.0) -> None:
        self.connect, self.delay = connect, delay
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)  # type: ignore[arg-type]
        try:
            try:
                up_reader, up_writer = await self.connect()
            except OSError:
                return  # nothing to reach: the client sees its connection closed
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self.tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        sender = asyncio.create_task(send())
        try:
            while not sender.done():
                chunk = await reader.read(65536)
                queue.put_nowait((time.monotonic() + self.delay(), chunk))
                if not chunk:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass  # one side went away (a killed process): the connection ends, as on a real network
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
            writer.close()


# -- the fleet's processes -------------------------------------------------------------------


class Member:
    """A supervised process of the fleet (a replica or an agent): how to start it, and what
    the nemesis has done to it."""

    def __init__(self, name: str, kind: str, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        self.name, self.kind, self.cmd, self.log, self.env = name, kind, cmd, log, env
        self.proc: subprocess.Popen[bytes] | None = None
        self.down = False
        """killed by the nemesis (the supervisor leaves it down)"""
        self.frozen = False

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, env={**os.environ, **self.env, **(extra_env or {})}, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip
        self.down = self.frozen = False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def serving(self) -> bool:
        return self.running() and not self.frozen

    def signal(self, sig: int) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9, and reap it (so `running` is false from now on)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)  # a frozen process would not see the SIGTERM
        self.proc.terminate()
        deadline = time.monotonic() + grace
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.kill()


def _pg_bin() -> Path:
    return sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: [int(x) for x in p.parent.name.split(".") if x.isdigit()])[-1]


class Postgres:
    """The soak's own PostgreSQL server, made and started by scripts/ensure-postgres.sh (as
    user postgres when we are root, so its dir must be reachable by that user)."""

    def __init__(self, run_dir: Path) -> None:
        self.port = free_port()
        self.dir = run_dir / "pg"
        self.env = {**os.environ, "VMPLANE_TEST_PG_PORT": str(self.port), "VMPLANE_TEST_PG_DIR": str(self.dir)}

    def _as_pg(self, *args: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + list(args)

    async def start(self) -> str:
        """Starts it (made on the first call); its server URL."""
        proc = await asyncio.create_subprocess_exec(
            "bash", str(ROOT / "scripts/ensure-postgres.sh"), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/ensure-postgres.sh failed ({proc.returncode})")
        return out.decode().strip()

    async def crash(self) -> None:
        """Stop it as a crash does: `pg_ctl stop -m immediate` (every backend gets SIGQUIT, no
        checkpoint; crash recovery at the next start)."""
        proc = await asyncio.create_subprocess_exec(
            *self._as_pg(str(_pg_bin() / "pg_ctl"), "-D", str(self.dir), "stop", "-m", "immediate", "-w"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        await proc.wait()

    def stop_now(self, keep: bool = False) -> None:
        """At the end (also from a cancelled task, hence synchronous): stopped, and its files
        gone unless `keep` (the run's database, to read its task logs: `pg_ctl start -D <dir>`)."""
        if (self.dir / "PG_VERSION").exists():
            subprocess.run(
                self._as_pg(str(_pg_bin() / "pg_ctl"), "-D", str(self.dir), "stop", "-m", "immediate", "-w"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


class Fleet:
    def __init__(self, run_dir: Path, *, replicas: int = 3, agents: int = 3, seed: int = 0, keep_database: bool = False) -> None:
        self.run_dir = run_dir.resolve()
        self.keep_database = keep_database
        self.n_replicas, self.n_agents = replicas, agents
        self.rng = random.Random(seed)
        self.pg = Postgres(self.run_dir)
        self.pg_url = ""
        self.pg_down = False
        self.replicas: list[Member] = []
        self.agents: list[Member] = []
        self.delays: dict[str, float] = {}
        self.proxies: list[Proxy] = []
        self.front: Proxy | None = None
        self._next = 0
        self.key = ""
        self.clients: list[httpx.AsyncClient] = []
        self.faults: set[asyncio.Task[None]] = set()
        self.supervisor: asyncio.Task[None] | None = None
        self.closing = False
        self._faults_log = self.run_dir / "faults.jsonl"

    # -- the history -------------------------------------------------------------------------

    def log(self, fault: str, target: str, **extra: object) -> None:
        with self._faults_log.open("a") as f:
            f.write(json.dumps({"t": time.time(), "fault": fault, "target": target, **extra}) + "\n")

    # -- starting ------------------------------------------------------------------------------

    async def __aenter__(self) -> FleetView:
        try:
            return await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise

    async def _start(self) -> FleetView:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL runs as user postgres: it must reach its dir in here
            self.run_dir.chmod(self.run_dir.stat().st_mode | 0o111)
        self.pg_url = await self._database(await self.pg.start())
        ports = [free_port() for _ in range(self.n_replicas)]
        for i, port in enumerate(ports):
            cmd = [sys.executable, "-m", "vmplane.cli.main", "serve", "--port", str(port), "--data-dir", str(self.run_dir / f"replica-{i}"),
                   "--log-level", "warning", "--driver", "sim", "--sim-nodes", "0", "--database-url", self.pg_url]  # fmt: skip
            self.replicas.append(Member(f"replica-{i}", "replica", cmd, self.run_dir / f"replica-{i}.log", FLEET_ENV))
            self.clients.append(httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10))
        # the first replica bootstraps the empty database and writes the owner key to its data
        # dir; the others, started once it is ready, find the organization there and write none
        self._share_secrets_key()
        self.replicas[0].start()
        await self._until(lambda: self._ready(0), 120, "replica-0 ready")
        self.key = (self.run_dir / "replica-0" / "admin-api-key").read_text().strip()
        for c in self.clients:
            c.headers["X-API-Key"] = self.key
        for r in self.replicas[1:]:
            r.start()
        for i in range(1, self.n_replicas):
            await self._until(lambda i=i: self._ready(i), 120, f"replica-{i} ready")  # type: ignore[misc]
        self.front = Proxy(self._to_replica)
        await self.front.start()
        token = await self._token()
        nodes: dict[str, Path] = {}
        for i in range(self.n_agents):
            nodes.update(await self._add_agent(f"agent-{i}", token))
        await self._until(self._all_online, 120, "every node online")
        self.supervisor = asyncio.create_task(self._supervise())
        return FleetView(
            run_dir=self.run_dir, replicas=[str(c.base_url).rstrip("/") for c in self.clients],
            front=f"http://127.0.0.1:{self.front.port}", key=self.key, pg_url=self.pg_url, nodes=nodes,
        )  # fmt: skip

    def _share_secrets_key(self) -> None:
        """One secrets.key in every replica's data dir (docs/security.md: replicas of one
        database must share it; each would otherwise make its own at its first seal, and could
        not open what another sealed, such as the agents' credentials)."""
        from cryptography.fernet import Fernet

        key = Fernet.generate_key() + b"\n"
        for i in range(self.n_replicas):
            data = self.run_dir / f"replica-{i}"
            data.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(data / "secrets.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)

    async def _database(self, server_url: str) -> str:
        """A fresh database, whose commits are durable: the script's server acknowledges commits
        before their WAL is written (synchronous_commit=off), and an immediate stop would then
        lose acknowledged transactions, which the checker would blame on vmplane."""
        import asyncpg

        url = await new_database(server_url)
        conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            await conn.execute(f'ALTER DATABASE "{url.rsplit("/", 1)[1]}" SET synchronous_commit = on')
        finally:
            await conn.close()
        return url

    async def _add_agent(self, hostname: str, token: str) -> dict[str, Path]:
        """An agent whose traffic both ways goes through a proxy that `slow-agent` delays."""
        data = self.run_dir / "nodes" / hostname
        listen = free_port()
        self.delays[hostname] = 0.0

        def delay() -> float:
            return self.delays[hostname]

        inbound = Proxy(lambda: asyncio.open_connection("127.0.0.1", listen), delay)  # control plane -> agent
        assert self.front is not None
        front_port = self.front.port
        outbound = Proxy(lambda: asyncio.open_connection("127.0.0.1", front_port), delay)  # agent -> control plane
        for p in (inbound, outbound):
            await p.start()
            self.proxies.append(p)
        cmd = [sys.executable, "-m", "vmplane.cli.main", "agent", "--control-plane", f"http://127.0.0.1:{outbound.port}",
               "--listen", f"127.0.0.1:{listen}", "--advertise-url", f"http://127.0.0.1:{inbound.port}", "--driver", "sim",
               "--data-dir", str(data), "--hostname", hostname, "--log-level", "warning"]  # fmt: skip
        agent = Member(hostname, "agent", cmd, self.run_dir / f"agent-{hostname}.log", FLEET_ENV)
        self.agents.append(agent)
        agent.start({"VMPLANE_JOIN_TOKEN": token})  # later starts rejoin with the credential in `data`
        return {hostname: data / "sim"}

    async def _token(self) -> str:
        r = await self.clients[0].post("/api/v1/nodes/tokens", json={"description": "chaos soak"})
        r.raise_for_status()
        return str(r.json()["token"])

    async def _to_replica(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The front's choice: the next replica (round robin) that runs and is not frozen, as a
        load balancer's health checks would leave in its pool."""
        for _ in range(len(self.replicas)):
            i = self._next % len(self.replicas)
            self._next += 1
            if self.replicas[i].serving():
                try:
                    return await asyncio.open_connection("127.0.0.1", self.clients[i].base_url.port)
                except OSError:
                    continue
        raise ConnectionRefusedError("no replica serves")

    # -- watching --------------------------------------------------------------------------

    async def _until(self, cond: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not await cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not reached in {timeout:g} s: {what}")
            await asyncio.sleep(0.2)

    async def _ready(self, i: int) -> bool:
        if not self.replicas[i].running():
            if self.replicas[i].proc is not None and not self.replicas[i].down and not self.supervisor:
                raise RuntimeError(f"replica-{i} exited ({self.replicas[i].proc.returncode}); see {self.replicas[i].log}")  # type: ignore[union-attr]
            return False
        try:
            return (await self.clients[i].get("/readyz", timeout=3)).status_code == 200
        except httpx.HTTPError:
            return False

    async def _all_online(self) -> bool:
        for i, c in enumerate(self.clients):
            if not self.replicas[i].serving():
                continue
            try:
                r = await c.get("/api/v1/nodes", timeout=3)
            except httpx.HTTPError:
                continue
            if r.status_code != 200:
                continue
            items = r.json()["items"]
            return len(items) == self.n_agents and all(n["status"] == "online" for n in items)
        return False

    async def _supervise(self) -> None:
        """What systemd's Restart=always does: a replica or agent that exited while the nemesis
        did not have it down is started again (a second later), and that is logged, for a
        process dying on its own is worth a look."""
        while not self.closing:
            for m in self.replicas + self.agents:
                if m.proc is not None and not m.down and m.proc.poll() is not None:
                    rc = m.proc.returncode
                    await asyncio.sleep(1.0)
                    if self.closing or m.down or m.running():
                        continue
                    self.log(f"restart-{m.kind}", m.name, exited=rc)
                    m.start()
            await asyncio.sleep(0.5)

    # -- the nemesis -------------------------------------------------------------------------

    async def nemesis(self, stop: asyncio.Event, mean_gap: float = 8.0) -> int:
        """Faults at exponential gaps (mean `mean_gap` s) drawn from the seed, each ended after a
        while by its own task; never two replicas or two agents out at once, so the fleet can
        always make progress. Returns how many were injected."""
        count = 0
        while not stop.is_set():
            gap = self.rng.expovariate(1.0 / mean_gap)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)
                break
            fault = self._pick()
            if fault is None:
                continue
            task = asyncio.create_task(fault)
            self.faults.add(task)
            task.add_done_callback(self.faults.discard)
            count += 1
        return count

    def _pick(self) -> Awaitable[None] | None:
        """The next fault among those the fleet's state allows, with its figures drawn now."""
        kinds = []
        if all(r.serving() for r in self.replicas):
            kinds += ["kill-replica", "stop-replica"]
        if all(a.running() for a in self.agents):
            kinds.append("kill-agent")
        if not self.pg_down:
            kinds.append("restart-postgres")
        if any(d == 0 for d in self.delays.values()):
            kinds.append("slow-agent")
        kind = self.rng.choice(kinds) if kinds else None
        if kind in ("kill-replica", "stop-replica"):
            r = self.rng.choice(self.replicas)
            hold = self.rng.uniform(2, 10) if kind == "kill-replica" else self.rng.uniform(LEASE + 1, LEASE + 6)
            return self._kill(r, hold) if kind == "kill-replica" else self._freeze(r, hold)
        if kind == "kill-agent":
            return self._kill(self.rng.choice(self.agents), self.rng.uniform(2, 10))
        if kind == "restart-postgres":
            return self._restart_postgres(self.rng.uniform(0.5, 5))
        if kind == "slow-agent":
            host = self.rng.choice(sorted(h for h, d in self.delays.items() if d == 0))
            return self._slow(host, self.rng.uniform(5, 20), self.rng.randint(100, 1500))
        return None

    async def _kill(self, m: Member, hold: float) -> None:
        m.down = True
        m.kill()
        self.log(f"kill-{m.kind}", m.name, down_s=round(hold, 2))
        try:
            await asyncio.sleep(hold)
        finally:
            if not self.closing:
                m.start()
                self.log(f"restart-{m.kind}", m.name)

    async def _freeze(self, m: Member, hold: float) -> None:
        m.frozen = True
        m.signal(signal.SIGSTOP)
        self.log("stop-replica", m.name, frozen_s=round(hold, 2))
        try:
            await asyncio.sleep(hold)
        finally:
            if not self.closing:
                m.signal(signal.SIGCONT)
                m.frozen = False
                self.log("cont-replica", m.name)

    async def _restart_postgres(self, hold: float) -> None:
        """A crash of the database server and its restart by its service manager (see
        Postgres.crash): every connection is cut at once and in-flight transactions are lost,
        as when the OOM killer or a host reboot takes PostgreSQL. A kill -9 of the postmaster
        alone is not how it dies in practice: its backends would live on, holding its shared
        memory, and a new postmaster would refuse to start until they had gone."""
        self.pg_down = True
        await self.pg.crash()
        self.log("restart-postgres", "postgres", phase="crash", down_s=round(hold, 2))
        try:
            await asyncio.sleep(hold)
        finally:
            if not self.closing:
                await self.pg.start()
                self.pg_down = False
                self.log("restart-postgres", "postgres", phase="up")

    async def _slow(self, host: str, hold: float, ms: int) -> None:
        self.delays[host] = ms / 1000
        self.log("slow-agent", host, delay_ms=ms, slow_s=round(hold, 2))
        try:
            await asyncio.sleep(hold)
        finally:
            self.delays[host] = 0.0
            self.log("fast-agent", host)

    async def heal(self) -> float:
        """Ends every fault now (each fault's task, cancelled, ends its own), then waits until
        every replica answers /readyz and every node is online."""
        for t in list(self.faults):
            t.cancel()
        await asyncio.gather(*self.faults, return_exceptions=True)
        if self.pg_down:
            await self.pg.start()
            self.pg_down = False
        for m in self.replicas + self.agents:
            if m.frozen:
                m.signal(signal.SIGCONT)
                m.frozen = False
            if not m.running():
                m.start()
        for i in range(len(self.replicas)):
            await self._until(lambda i=i: self._ready(i), 180, f"replica-{i} ready after the heal")  # type: ignore[misc]
        await self._until(self._all_online, 180, "every node online after the heal")
        self.log("heal", "fleet")
        return time.time()

    # -- the end -------------------------------------------------------------------------------

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.closing = True
        try:
            tasks = [*self.faults, *([self.supervisor] if self.supervisor else [])]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.gather(*(m.stop() for m in self.agents + self.replicas))
            for p in [*self.proxies, *([self.front] if self.front else [])]:
                await p.close()
            for c in self.clients:
                await c.aclose()
        finally:
            for m in self.agents + self.replicas:  # also when the above was cancelled half-way
                m.signal(signal.SIGCONT)
                m.kill()
            self.pg.stop_now(keep=self.keep_database)


# -- the self-check ------------------------------------------------------------------------------


async def churn(view: FleetView, stop: asyncio.Event, counts: Counter[str]) -> None:
    """Create a VM and delete it, again and again, through whichever replica answers."""
    i = 0

    async def call(method: str, path: str, **kw: object) -> httpx.Response:
        nonlocal i
        while True:
            url = view.replicas[i % len(view.replicas)]
            i += 1
            try:
                async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": view.key}, timeout=5) as c:
                    r = await c.request(method, path, **kw)  # type: ignore[arg-type]
                if r.status_code < 500:
                    return r
                counts["5xx"] += 1
            except httpx.HTTPError:
                counts["retries"] += 1
            await asyncio.sleep(0.2)

    async def finished(job: str) -> str:
        while True:
            body = (await call("GET", f"/api/v1/jobs/{job}")).json()
            if body["state"] not in ("queued", "running"):
                for task in body.get("tasks") or []:
                    if task.get("error"):
                        counts[f"{body['state']} job: {task['error'][:160]}"] += 1
                return str(body["state"])
            await asyncio.sleep(0.3)

    n = 0
    while not stop.is_set():
        n += 1
        r = await call("POST", "/api/v1/vms", json={"name": f"churn-{n}", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 5}},
                       headers={"Idempotency-Key": f"churn-{n}"})  # fmt: skip
        if r.status_code != 202:
            counts[f"create {r.status_code}"] += 1
            continue
        counts[f"create {await finished(r.json()['jobId'])}"] += 1
        vm = r.json()["vmId"] if "vmId" in r.json() else r.json()["vmIds"][0]
        r = await call("DELETE", f"/api/v1/vms/{vm}")
        if r.status_code == 202:
            counts[f"delete {await finished(r.json()['jobId'])}"] += 1
        else:
            counts[f"delete {r.status_code}"] += 1


def suspicious(run_dir: Path) -> list[str]:
    """What in the processes' logs may be a bug, counted: each ERROR/CRITICAL message (its
    timestamp cut), each exception a traceback ended with, each line that speaks of leases."""
    out = []
    for log in sorted(run_dir.glob("*.log")):
        seen: Counter[str] = Counter()
        for line in log.read_text(errors="replace").splitlines():
            words = line.split(" ", 3)
            if len(words) == 4 and words[2] in ("ERROR", "CRITICAL", "WARNING"):
                seen[f"{words[2]} {words[3][:200]}"] += 1
            elif re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", line):
                seen[f"raised {line[:200]}"] += 1
            elif "lease" in line.lower():
                seen[f"lease: {line[:200]}"] += 1
        out += [f"{log.name}: {n} x {what}" for what, n in seen.most_common()]
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--mean-gap", type=float, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="vmplane-chaos-fleet-"))
    print(f"run dir {run_dir}")
    counts: Counter[str] = Counter()
    t0 = time.monotonic()
    fleet = Fleet(run_dir, seed=args.seed)
    async with fleet as fleet_view:
        print(f"fleet up in {time.monotonic() - t0:.1f} s: replicas {fleet_view.replicas}, front {fleet_view.front}")
        stop = asyncio.Event()
        loop = asyncio.create_task(churn(fleet_view, stop, counts))
        nemesis = asyncio.create_task(fleet.nemesis(stop, args.mean_gap))
        await asyncio.sleep(args.seconds)
        stop.set()
        injected = await nemesis
        t_stop = time.time()
        healed = await fleet.heal()
        print(f"faults injected: {injected}; healed {healed - t_stop:.1f} s after the nemesis stopped")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop, 60)
        if not loop.done():
            loop.cancel()
            print("the churn loop did not finish its last VM within 60 s of the heal")
        print("churn:")
        for what, n in counts.most_common():
            print(f"  {n} x {what}")
        for host, d in fleet_view.nodes.items():
            log = d / f"{host}.calls.jsonl"
            lines = log.read_text().splitlines() if log.exists() else []
            effects = Counter(f"{json.loads(x)['call']} {json.loads(x)['effect']}" for x in lines)
            print(f"{host}: {len(lines)} calls logged: {dict(effects)}")
        faults = Counter(json.loads(x)["fault"] for x in (run_dir / "faults.jsonl").read_text().splitlines())
        print("faults.jsonl:", dict(faults))
    left = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True).stdout.strip()
    print("processes left:", left or "none")
    lines = suspicious(run_dir)
    print(f"{len(lines)} kinds of log lines worth a look" + (":" if lines else ""))
    for line in lines[:120]:
        print(" ", line)


if __name__ == "__main__":
    asyncio.run(main())
