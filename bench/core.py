"""Core benchmark (sim driver, 1,000 nodes): bulk-create 10,000 VMs, placement time per VM,
and p50/p99 latency of `GET /api/v1/vms?limit=50` and `GET /api/v1/vms/{id}` under load.

    .venv/bin/python bench/core.py [--nodes 1000] [--vms 10000] [--batch 1000] [--database-url URL]

The VMs are created by bulk requests of at most `--batch` (the server's VMPLANE_MAX_BULK,
1,000 by default) sent all at once; the figure is the time from the first request until every
job has ended.

Starts its own `vmplane serve` process on a free port with a fresh data dir, drives it over
HTTP from this process, and prints one line per figure.
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import server  # noqa: E402

from vmplane.placement import Demand, NodeUsage, Policy, choose_node  # noqa: E402


def placement_us(nodes: int) -> float:
    usage = [NodeUsage(f"node-{i}", True, 32, 131072, 2000, i % 29, (i * 977) % 100000, i % 1500) for i in range(nodes)]
    demand = Demand(2, 2048, 20)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        choose_node(demand, usage, Policy())
    return (time.perf_counter() - start) / n * 1e6


def wrk_latency(url: str, paths: list[str], connections: int, seconds: int, key: str) -> tuple[float, float, float]:
    """p50 and p99 in ms and requests/s, measured by wrk (a C load generator: a Python client
    on the same two cores would measure itself)."""
    if not shutil.which("wrk"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}\n")
        f.write("request = function() return wrk.format('GET', paths[math.random(#paths)]) end\n")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-H", f"X-API-Key: {key}", "-s", f.name, url],
        check=True, capture_output=True, text=True,
    ).stdout
    os.unlink(f.name)
    refused = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    assert refused is None, f"{refused.group(1)} answers were not 2xx: the figures would measure refusals, not the server\n{out}"

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return ms("50%"), ms("99%"), rps


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000, help="VMs per bulk request (at most the server's VMPLANE_MAX_BULK)")
    ap.add_argument("--concurrency", type=int, default=16, help="connections in the latency runs")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()

    print(f"placement: {placement_us(args.nodes):.0f} µs per VM over {args.nodes} nodes (target < 1000 µs)")

    args_ = ["--driver", "sim", "--sim-nodes", str(args.nodes)] + (["--database-url", args.database_url] if args.database_url else [])
    env = {"VMPLANE_JOB_CONCURRENCY": os.environ.get("VMPLANE_JOB_CONCURRENCY", "256")}
    async with server(args_, env) as srv:
        client, url, key = srv.client, srv.url, srv.key
        specs = [{"name": f"b-{i}", "resources": {"cpu": 1, "ramMb": 1024, "diskGb": 10}} for i in range(args.vms)]
        batches = [specs[i : i + args.batch] for i in range(0, len(specs), args.batch)]
        t0 = time.perf_counter()
        responses = await asyncio.gather(*(client.post("/api/v1/vms", json=b) for b in batches))
        for r in responses:
            assert r.status_code == 202, r.text
        accepted = time.perf_counter() - t0
        states = set()
        for r in responses:
            while True:
                job = (await client.get(f"/api/v1/jobs/{r.json()['jobId']}")).json()
                if job["state"] not in ("queued", "running"):
                    states.add(job["state"])
                    break
                await asyncio.sleep(0.25)
        took = time.perf_counter() - t0
        print(f"bulk create: {args.vms} VMs on {args.nodes} nodes in {len(batches)} concurrent request(s) of at most {args.batch} "
              f"-> {'/'.join(sorted(states))} in {took:.1f} s ({args.vms / took:.0f} VMs/s; every request accepted in "
              f"{accepted * 1000:.0f} ms) (target < 60 s)")  # fmt: skip
        all_ids = [v for r in responses for v in r.json()["vmIds"]]
        vm_ids = all_ids[:: max(1, args.vms // 500)]
        token_pages = ["/api/v1/vms?limit=50"]
        p50, p99, rps = wrk_latency(url, token_pages, args.concurrency, 10, key)
        print(f"GET /api/v1/vms?limit=50: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {rps:.0f} req/s with {args.concurrency} connections")
        p50, p99, rps = wrk_latency(url, [f"/api/v1/vms/{v}" for v in vm_ids], args.concurrency, 10, key)
        print(f"GET /api/v1/vms/{{id}}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {rps:.0f} req/s with {args.concurrency} connections (target p99 < 25 ms)")


if __name__ == "__main__":
    asyncio.run(main())
