"""A real `vmplane serve` process killed with SIGKILL in the middle of a bulk job: after a
restart every task ends (resumed or failed), none stays running, and claims stay exact."""

import signal
import time
from pathlib import Path

import httpx
import pytest

from ..support import admin_key, free_port, serve, wait_ready

pytestmark = pytest.mark.slow
SIM_ARGS = ["--driver", "sim", "--sim-nodes", "4"]
SIM_ENV = {"VMPLANE_SIM_LATENCY_MS": "150", "VMPLANE_JOB_CONCURRENCY": "8", "VMPLANE_LEASE_SECONDS": "2"}


def test_kill_9_mid_bulk_job_then_restart_finishes_every_task(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    proc = serve(tmp_path / "data", port, log, SIM_ARGS + ["--database-url", database_url], SIM_ENV)
    try:
        wait_ready(url, proc)
        httpx_ = httpx.Client(headers={"X-API-Key": admin_key(tmp_path / "data")}, timeout=30)
        r = httpx_.post(f"{url}/api/v1/vms", json=[{"name": f"k-{i}"} for i in range(100)])
        job_id = r.json()["jobId"]
        while True:  # kill it once part of the work is done and some is in flight (both seen in one look)
            job = httpx_.get(f"{url}/api/v1/jobs/{job_id}").json()
            done = sum(t["state"] == "succeeded" for t in job["tasks"])
            running_at_kill = sum(t["state"] == "running" for t in job["tasks"])
            if done >= 20 and running_at_kill > 0:
                break
            assert done < 90, f"never saw a task in flight after 20 were done: {done} done"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

        proc = serve(tmp_path / "data", port, log, SIM_ARGS + ["--database-url", database_url], SIM_ENV)
        wait_ready(url, proc)
        deadline = time.monotonic() + 120
        while True:
            job = httpx_.get(f"{url}/api/v1/jobs/{job_id}").json()
            if job["state"] in ("succeeded", "failed", "partial", "cancelled"):
                break
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        states = {t["state"] for t in job["tasks"]}
        assert states <= {"succeeded", "failed"}, states
        assert job["state"] == "succeeded", [t["error"] for t in job["tasks"] if t["error"]]
        assert any(t["attempts"] == 2 for t in job["tasks"])  # in-flight tasks were resumed
        vms = httpx_.get(f"{url}/api/v1/vms", params={"limit": 500}).json()["items"]
        assert len(vms) == 100 and all(v["status"] == "running" for v in vms)
        nodes = httpx_.get(f"{url}/api/v1/nodes").json()["items"]
        assert sum(n["resources"]["cpuUsed"] for n in nodes) == sum(v["resources"]["cpu"] for v in vms)
    finally:
        proc.kill()
        proc.wait()
