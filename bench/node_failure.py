"""Node failure: how long a dead node takes to be noticed, how fast jobs on it fail, and how
long until it is reconciled once its agent is back.

    .venv/bin/python bench/node_failure.py [--runs 5] [--offline-seconds 15] [--agents 3]

Starts `vmplane serve --sim-nodes 0` and N `vmplane agent --driver sim` processes on
loopback, places two VMs on each node, then per run: SIGKILL one agent and poll the node
(every 20 ms) until it is `offline`; stop one of its VMs (the job must fail, saying so); start
the agent again and wait until its VMs are `running` again in the store. Prints each run and
the min / median / max of the figures. The detection time runs from the SIGKILL, so it is the
offline timeout minus however long ago the node's last heartbeat was (agents beat every
timeout/5, at most every 5 s), plus up to one pass of the node monitor (timeout/10, at most 1 s).
"""

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import free_port, server  # noqa: E402


def start_agent(url: str, data: Path, port: int, token: str | None, env: dict[str, str]) -> "subprocess.Popen[bytes]":
    cmd = [sys.executable, "-m", "vmplane.cli.main", "agent", "--control-plane", url, "--listen", f"127.0.0.1:{port}",
           "--driver", "sim", "--data-dir", str(data), "--hostname", data.name, "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(cmd, env={**os.environ, **env, **({"VMPLANE_JOIN_TOKEN": token} if token else {})})


async def until(cond, timeout: float, step: float = 0.02) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    while not await cond():
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError("timed out")
        await asyncio.sleep(step)
    return time.perf_counter() - t0


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--offline-seconds", type=float, default=15.0)
    ap.add_argument("--agents", type=int, default=3)
    args = ap.parse_args()
    env = {"VMPLANE_NODE_OFFLINE_SECONDS": str(args.offline_seconds), "VMPLANE_SIM_LATENCY_MS": "5"}
    agents: list[subprocess.Popen[bytes]] = []
    async with server(["--driver", "sim", "--sim-nodes", "0"], env) as s:
        c = s.client
        token = (await c.post("/api/v1/nodes/tokens", json={"description": "bench"})).json()["token"]
        root = Path(tempfile.mkdtemp(prefix="vmplane-bench-agents-"))
        dirs = [root / f"agent-{i}" for i in range(args.agents)]
        ports = [free_port() for _ in dirs]
        try:
            agents += [start_agent(s.url, d, p, token, env) for d, p in zip(dirs, ports)]

            async def all_online() -> bool:
                items = (await c.get("/api/v1/nodes")).json()["items"]
                return len(items) == args.agents and all(n["status"] == "online" for n in items)

            await until(all_online, 60)
            nodes = {n["hostname"]: n["id"] for n in (await c.get("/api/v1/nodes")).json()["items"]}
            r = await c.post("/api/v1/vms", json=[{"name": f"b-{i}"} for i in range(2 * args.agents)])
            job_id = r.json()["jobId"]

            async def job_done(jid: str = job_id) -> bool:
                return (await c.get(f"/api/v1/jobs/{jid}")).json()["state"] in ("succeeded", "failed", "partial")

            await until(job_done, 60)
            victim_dir, victim_port = dirs[0], ports[0]
            victim = nodes[victim_dir.name]
            vms = [v["id"] for v in (await c.get("/api/v1/vms")).json()["items"] if v["node"] == victim]
            detect, fail_fast, reconcile = [], [], []
            print(f"offline timeout {args.offline_seconds:g} s, {args.agents} agents, node {victim} with {len(vms)} VMs")
            for run in range(args.runs):
                await asyncio.sleep(1.0 + run * 0.37)  # vary the phase against the heartbeats
                agents[0].send_signal(signal.SIGKILL)
                agents[0].wait()

                async def offline() -> bool:
                    return (await c.get(f"/api/v1/nodes/{victim}")).json()["status"] == "offline"

                detect.append(await until(offline, args.offline_seconds + 30))
                t0 = time.perf_counter()
                jid = (await c.post(f"/api/v1/vms/{vms[0]}/stop")).json()["jobId"]
                await until(lambda: job_done(jid), 30, 0.005)
                fail_fast.append(time.perf_counter() - t0)
                job = (await c.get(f"/api/v1/jobs/{jid}")).json()
                assert job["state"] == "failed" and "offline" in job["tasks"][0]["error"], job
                t0 = time.perf_counter()
                agents[0] = start_agent(s.url, victim_dir, victim_port, None, env)

                async def reconciled() -> bool:
                    states = [(await c.get(f"/api/v1/vms/{v}")).json()["status"] for v in vms]
                    return all(st == "running" for st in states)

                await until(reconciled, 60)
                reconcile.append(time.perf_counter() - t0)
                print(f"run {run + 1}: offline after {detect[-1]:.2f} s; a stop on it failed in {fail_fast[-1] * 1000:.0f} ms;"
                      f" reconciled {reconcile[-1]:.2f} s after the agent was started again")  # fmt: skip
            for name, xs in (("detect", detect), ("fail fast", fail_fast), ("reconciled", reconcile)):
                print(f"{name:>10}: min {min(xs):.3f} s, median {statistics.median(xs):.3f} s, max {max(xs):.3f} s")
        finally:
            for a in agents:
                if a.poll() is None:
                    a.terminate()
                    a.wait()


if __name__ == "__main__":
    asyncio.run(main())
