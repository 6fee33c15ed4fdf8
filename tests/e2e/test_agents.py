"""A fleet of real processes on loopback: `vmplane serve --sim-nodes 0` and three `vmplane
agent --driver sim`. VMs spread over the agents; one agent killed with SIGKILL → its node goes
offline within the timeout, its VMs `unknown`, jobs on it fail fast, new VMs go elsewhere; the
agent started again (no token: it keeps its credential) → its VMs reconciled to what they
really are. Then a node's credential is revoked: offline at once, and its agent stops."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import LOOPBACK_ALLOW, admin_key, free_port, serve, wait_ready, wait_until

pytestmark = pytest.mark.slow
OFFLINE_SECONDS = 3.0
ENV = {"VMPLANE_NODE_OFFLINE_SECONDS": str(OFFLINE_SECONDS), "VMPLANE_SIM_LATENCY_MS": "5"}


def cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "vmplane.cli.main", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def start_agent(url: str, data_dir: Path, port: int, log: Path, token: str | None) -> "subprocess.Popen[bytes]":
    cmd = [sys.executable, "-m", "vmplane.cli.main", "agent", "--control-plane", url, "--listen", f"127.0.0.1:{port}",
           "--driver", "sim", "--data-dir", str(data_dir), "--hostname", data_dir.name, "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, **ENV, "VMPLANE_OUTBOUND_ALLOW": ",".join(LOOPBACK_ALLOW), **({"VMPLANE_JOIN_TOKEN": token} if token else {})}
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def test_a_fleet_of_agents_survives_a_dead_node(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs: list[subprocess.Popen[bytes]] = []
    cp = serve(tmp_path / "cp", port, tmp_path / "cp.log", ["--driver", "sim", "--sim-nodes", "0"], ENV)
    procs.append(cp)
    try:
        wait_ready(url, cp)
        key = admin_key(tmp_path / "cp")
        api = httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=30)
        assert api.get("/api/v1/nodes").json()["items"] == []
        token = cli("node", "token", "create", "--url", url, "--description", "e2e", env={"VMPLANE_API_KEY": key}).split()[-1]
        assert token.startswith("vmj_")

        dirs = [tmp_path / f"agent-{i}" for i in range(3)]
        ports = [free_port() for _ in dirs]
        agents = [start_agent(url, d, p, tmp_path / f"{d.name}.log", token) for d, p in zip(dirs, ports)]
        procs += agents

        def nodes() -> list[dict[str, Any]]:
            return api.get("/api/v1/nodes").json()["items"]

        wait_until(lambda: len([n for n in nodes() if n["status"] == "online"]) == 3, 30, "three nodes online")
        by_host = {n["hostname"]: n["id"] for n in nodes()}

        def wait_job(job_id: str) -> dict[str, Any]:
            return wait_until(lambda: (j := api.get(f"/api/v1/jobs/{job_id}").json())["state"] in ("succeeded", "failed", "partial") and j, 30, job_id)

        job = wait_job(api.post("/api/v1/vms", json=[{"name": f"vm-{i}"} for i in range(6)]).json()["jobId"])
        assert job["state"] == "succeeded", job
        vms = {v["id"]: v for v in api.get("/api/v1/vms").json()["items"]}
        assert sorted(v["node"] for v in vms.values()) == sorted(list(by_host.values()) * 2)  # spread: two each
        dead = by_host["agent-0"]
        mine = sorted(v for v, x in vms.items() if x["node"] == dead)
        assert wait_job(api.post(f"/api/v1/vms/{mine[1]}/stop").json()["jobId"])["state"] == "succeeded"

        agents[0].send_signal(signal.SIGKILL)
        agents[0].wait()
        t0 = time.monotonic()
        wait_until(lambda: api.get(f"/api/v1/nodes/{dead}").json()["status"] == "offline", OFFLINE_SECONDS + 5, "node offline")
        detected = time.monotonic() - t0
        print(f"[timing] dead node detected {detected:.2f} s after SIGKILL (timeout {OFFLINE_SECONDS:g} s)")
        assert detected < OFFLINE_SECONDS + 3
        assert {api.get(f"/api/v1/vms/{v}").json()["status"] for v in mine} == {"unknown"}
        others = [v for v in vms if v not in mine]
        assert {api.get(f"/api/v1/vms/{v}").json()["status"] for v in others} == {"running"}

        t1 = time.monotonic()
        failed = wait_job(api.post(f"/api/v1/vms/{mine[0]}/stop").json()["jobId"])
        assert failed["state"] == "failed" and time.monotonic() - t1 < 3
        assert "offline" in api.get(f"/api/v1/jobs/{failed['id']}").json()["tasks"][0]["error"]

        job = wait_job(api.post("/api/v1/vms", json=[{"name": f"later-{i}"} for i in range(4)]).json()["jobId"])
        assert job["state"] == "succeeded"
        later = [api.get(f"/api/v1/vms/{t['resourceId']}").json() for t in job["tasks"]]
        assert all(v["node"] != dead and v["status"] == "running" for v in later)

        agents[0] = start_agent(url, dirs[0], ports[0], tmp_path / "agent-0.log", None)  # its credential is on disk
        procs.append(agents[0])
        wait_until(lambda: api.get(f"/api/v1/nodes/{dead}").json()["status"] == "online", 30, "node back")
        wait_until(lambda: [api.get(f"/api/v1/vms/{v}").json()["status"] for v in mine] == ["running", "stopped"], 10, "reconciled")

        # a revoked credential: offline at once, and the agent ends (exit status 3)
        victim = by_host["agent-2"]
        assert api.delete(f"/api/v1/nodes/{victim}/credential").status_code == 204
        assert api.get(f"/api/v1/nodes/{victim}").json()["status"] == "offline"
        assert agents[2].wait(timeout=20) == 3
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
