"""Control-plane replicas on PostgreSQL: task throughput with 1 replica and with 2, and how
soon an event committed by one replica reaches an SSE client of the other.

    .venv/bin/python bench/replicas.py [--vms 600] [--latency-ms 1000 100] [--concurrency 32] [--pg URL]

Each run gets a fresh database on the PostgreSQL server at `--pg` (default: the throwaway
one of `scripts/ensure-postgres.sh`) and one fresh data dir that its replicas share (so they
split its sim nodes). A bulk create of `--vms` VMs is submitted to the first replica; the
clock runs from the POST to the job's end. Sim nodes answer each call after `--latency-ms`
(a create is two calls: define, start): with slow calls the figure is set by how many tasks
run at once (`--concurrency` per replica), with fast ones by the CPU the control plane and
PostgreSQL get.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NO_RATE_LIMITS, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


async def new_database(server_url: str) -> str:
    import asyncpg

    name = "vmp_bench_" + uuid.uuid4().hex[:10]
    conn = await asyncpg.connect(server_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name


async def ready(client: httpx.AsyncClient, proc: "subprocess.Popen[bytes]") -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("vmplane serve exited")
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("vmplane serve did not become ready")


async def served(client: httpx.AsyncClient) -> int:
    return len(re.findall(r'^vmplane_node_served\{node="[^"]+"\} 1\.0$', (await client.get("/metrics")).text, re.M))


async def run(replicas: int, args: argparse.Namespace) -> tuple[float, float, list[float]]:
    """(seconds for the bulk create, tasks per second, event delays in seconds)."""
    url = await new_database(args.pg)
    data = Path(tempfile.mkdtemp(prefix="vmplane-bench-replicas-"))
    env = {
        **os.environ,
        **NO_RATE_LIMITS,
        "VMPLANE_SIM_LATENCY_MS": str(args.latency_ms),
        "VMPLANE_JOB_CONCURRENCY": str(args.concurrency),
        "VMPLANE_SIM_NODE_CPU": "100000",
        "VMPLANE_SIM_NODE_RAM_MB": "100000000",
        "VMPLANE_SIM_NODE_DISK_GB": "10000000",
    }
    ports = [free_port() for _ in range(replicas)]
    log = (data / "servers.log").open("ab")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "vmplane.cli.main", "serve", "--port", str(p), "--data-dir", str(data), "--log-level", "warning",
             "--driver", "sim", "--sim-nodes", str(args.nodes), "--database-url", url],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        for p in ports
    ]
    clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{p}", timeout=120) for p in ports]
    try:
        for client, proc in zip(clients, procs):
            await ready(client, proc)
        key = (data / "admin-api-key").read_text().strip()
        for client in clients:
            client.headers["X-API-Key"] = key
        deadline = time.monotonic() + 30  # the replicas split the nodes between them
        while min([await served(c) for c in clients]) < args.nodes // replicas:
            assert time.monotonic() < deadline, "the replicas did not split the nodes"
            await asyncio.sleep(0.1)

        first, last = clients[0], clients[-1]
        t0 = time.perf_counter()
        r = await first.post("/api/v1/vms", json=[{"name": f"b-{i}"} for i in range(args.vms)])
        assert r.status_code == 202, r.text
        job_id = r.json()["jobId"]
        while True:
            job = (await last.get(f"/api/v1/jobs/{job_id}")).json()
            if job["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.25)  # the job lists every task: polling it costs the server
        took = time.perf_counter() - t0
        assert job["state"] == "succeeded", job["state"]

        delays: list[float] = []
        if replicas > 1:  # an event committed by the first replica, read from the last one's stream
            vm_id = r.json()["vmIds"][0]
            seen: dict[str, float] = {}
            connected = asyncio.Event()

            async def listen() -> None:
                async with last.stream("GET", "/api/v1/events", params={"types": "job.submitted"}, timeout=None) as resp:
                    connected.set()
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            e = json.loads(line[6:])
                            seen[e["resource"]] = time.time() - datetime.fromisoformat(e["time"]).timestamp()

            reader = asyncio.create_task(listen())
            await connected.wait()
            for i in range(args.events):
                jid = (await first.patch(f"/api/v1/vms/{vm_id}", json={"tags": [f"t{i}"]})).json()["jobId"]
                while jid not in seen:
                    await asyncio.sleep(0.001)
                delays.append(seen[jid])
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return took, args.vms / took, delays
    finally:
        for c in clients:
            await c.aclose()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=600)
    ap.add_argument("--nodes", type=int, default=16, help="sim nodes, split between the replicas")
    ap.add_argument("--latency-ms", type=int, nargs="+", default=[1000, 100], help="sim latencies per hypervisor call to run with")
    ap.add_argument("--concurrency", type=int, default=32, help="tasks each replica runs at once")
    ap.add_argument("--events", type=int, default=50, help="events timed from one replica to the other")
    ap.add_argument("--pg", default=os.environ.get("VMPLANE_TEST_PG_URL"), help="a PostgreSQL server's URL")
    args = ap.parse_args()
    if not args.pg:
        args.pg = subprocess.run(["bash", str(ROOT / "scripts/ensure-postgres.sh")], check=True, capture_output=True, text=True).stdout.strip()
    print(f"{args.vms} VM creates in one bulk request, {args.nodes} sim nodes, {args.concurrency} tasks at once per replica, "
          f"PostgreSQL; a create is two hypervisor calls")  # fmt: skip
    latencies = args.latency_ms
    for latency in latencies:
        args.latency_ms = latency
        bound = 1000 * args.concurrency / (2 * latency)
        base = None
        for replicas in (1, 2):
            took, rate, delays = await run(replicas, args)
            gain = "" if base is None else f", x{rate / base:.2f}"
            base = base or rate
            print(f"{latency} ms per call, {replicas} replica{'s' if replicas > 1 else ''}: {args.vms} tasks in {took:.1f} s -> "
                  f"{rate:.0f} tasks/s (workers alone would allow {bound * replicas:.0f}{gain})")  # fmt: skip
            if delays:
                delays.sort()
                print(f"  an event committed by replica 1 reached an SSE client of replica 2 after: median "
                      f"{statistics.median(delays) * 1000:.1f} ms, p95 {delays[int(len(delays) * 0.95) - 1] * 1000:.1f} ms, "
                      f"max {delays[-1] * 1000:.1f} ms ({len(delays)} events)")  # fmt: skip
                args.events = 0  # once is enough


if __name__ == "__main__":
    asyncio.run(main())
