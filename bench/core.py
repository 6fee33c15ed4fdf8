"""Core benchmark (sim driver, 1,000 nodes): bulk-create 10,000 VMs, placement time per VM,
and p50/p99 latency of `GET /api/v1/vms?limit=50` and `GET /api/v1/vms/{id}` under load.

    .venv/bin/python bench/core.py [--nodes 1000] [--vms 10000] [--batch 1000] [--database-url URL]
    .venv/bin/python bench/core.py --profile /tmp/prof   # py-spy on the server during the bulk create

The VMs are created by bulk requests of at most `--batch` (the server's VMPLANE_MAX_BULK,
1,000 by default) sent all at once; the figure is the time from the first request until every
job has ended. Beside it, the server's CPU time per VM (its process's user + system time over
the bulk create, from /proc, divided by the VMs): the machine is shared, and other load moves
the wall time far more than it moves what each VM costs. `--profile DIR` samples the server
with py-spy during the bulk create (DIR/create.txt, collapsed stacks) and prints the functions
holding most samples; sampling costs the server little, but compare timings without it.

Starts its own `vmplane serve` process on a free port with a fresh data dir, drives it over
HTTP from this process, and prints one line per figure.
"""

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bulk_create, cpu_seconds, profiled, server, wrk_latency  # noqa: E402

from vmplane.placement import Demand, NodeUsage, Policy, choose_node  # noqa: E402


def placement_us(nodes: int) -> float:
    usage = [NodeUsage(f"node-{i}", True, 32, 131072, 2000, i % 29, (i * 977) % 100000, i % 1500) for i in range(nodes)]
    demand = Demand(2, 2048, 20)
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        choose_node(demand, usage, Policy())
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--vms", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=1000, help="VMs per bulk request (at most the server's VMPLANE_MAX_BULK)")
    ap.add_argument("--concurrency", type=int, default=16, help="connections in the latency runs")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--profile", type=Path, default=None, metavar="DIR", help="py-spy on the server during the bulk create, into DIR")
    args = ap.parse_args()

    print(f"placement: {placement_us(args.nodes):.0f} µs per VM over {args.nodes} nodes (target < 1000 µs)")

    args_ = ["--driver", "sim", "--sim-nodes", str(args.nodes)] + (["--database-url", args.database_url] if args.database_url else [])
    env = {"VMPLANE_JOB_CONCURRENCY": os.environ.get("VMPLANE_JOB_CONCURRENCY", "256")}
    async with server(args_, env) as srv:
        client, url, key = srv.client, srv.url, srv.key
        cpu = cpu_seconds(srv.pid)
        with contextlib.ExitStack() as stack:
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                stack.enter_context(profiled(srv.pid, args.profile / "create.txt"))
            all_ids, states, accepted, took = await bulk_create(client, args.vms, args.batch)
            cpu = cpu_seconds(srv.pid) - cpu
        batches = range(0, args.vms, args.batch)
        print(f"bulk create: {args.vms} VMs on {args.nodes} nodes in {len(batches)} concurrent request(s) of at most {args.batch} "
              f"-> {'/'.join(sorted(states))} in {took:.1f} s ({args.vms / took:.0f} VMs/s; every request accepted in "
              f"{accepted * 1000:.0f} ms; server CPU {cpu:.1f} s, {cpu / args.vms * 1e6:.0f} µs per VM) (target < 33 s, issue 26)")  # fmt: skip
        vm_ids = all_ids[:: max(1, args.vms // 500)]
        token_pages = ["/api/v1/vms?limit=50"]
        p50, p99, rps = wrk_latency(url, token_pages, args.concurrency, 10, key)
        print(f"GET /api/v1/vms?limit=50: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {rps:.0f} req/s with {args.concurrency} connections")
        p50, p99, rps = wrk_latency(url, [f"/api/v1/vms/{v}" for v in vm_ids], args.concurrency, 10, key)
        print(
            f"GET /api/v1/vms/{{id}}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, {rps:.0f} req/s with {args.concurrency} connections (target p99 < 15 ms, issue 26)"
        )


if __name__ == "__main__":
    asyncio.run(main())
