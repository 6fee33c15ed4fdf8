"""A resize of a running VM says a restart is pending (issue 22, item 5), on the sim driver.

The VM's record changes at once; its running process keeps what it was started with until a
power-cycle or a stop and start. A guest reboot keeps the process, so the change still waits.
"""

import asyncio
import json
import os
import sys
from typing import Any

from vmplane.domain import Vm
from vmplane.domain.spec import StoredSpec

from ..support import Server
from .test_events import collect, sse_events


async def _vm(server: Server, vm_id: str) -> dict[str, Any]:
    r = await server.client.get(f"/api/v1/vms/{vm_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def _act(server: Server, vm_id: str, action: str) -> None:
    r = await server.client.post(f"/api/v1/vms/{vm_id}/{action}")
    assert r.status_code == 202, (action, r.text)
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded", action


async def _patch(server: Server, vm_id: str, resources: dict[str, int]) -> None:
    r = await server.client.patch(f"/api/v1/vms/{vm_id}", json={"resources": resources})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"


async def test_resize_of_a_running_vm_is_pending_until_a_power_cycle(server: Server) -> None:
    job = await server.create({"name": "pr1", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
    vm_id = job["tasks"][0]["resourceId"]
    vm = await _vm(server, vm_id)
    assert vm["status"] == "running" and vm["pendingRestart"] is False and vm["pending"] == []

    await _patch(server, vm_id, {"cpu": 2, "ramMb": 1024})
    vm = await _vm(server, vm_id)
    assert vm["resources"] == {"cpu": 2, "ramMb": 1024, "diskGb": 10}  # the record, at once
    assert vm["pendingRestart"] is True and vm["pending"] == ["cpu", "ramMb"]
    listed = {v["id"]: v for v in (await server.client.get("/api/v1/vms")).json()["items"]}
    assert listed[vm_id]["pendingRestart"] is True and listed[vm_id]["pending"] == ["cpu", "ramMb"]

    # the disk grows live: it is never pending; whether the guest's filesystem grew is said
    await _patch(server, vm_id, {"diskGb": 20})
    assert (await _vm(server, vm_id))["pending"] == ["cpu", "ramMb"]
    seen = [e["data"] for e in await collect(sse_events(server.client, {"since": "0", "resource": vm_id}), 12, timeout=10)]
    told = [e for e in seen if "disk" in e["data"]]
    assert told and told[0]["type"] == "vm.updated" and told[0]["data"]["disk"] == {
        "diskGb": 20, "filesystemGrown": False, "message": "disk grown to 20 GiB; filesystem not grown: the node cannot run commands in guests",
    }, seen  # fmt: skip

    # a guest reboot keeps the process, and so what it was started with
    await _act(server, vm_id, "reboot")
    vm = await _vm(server, vm_id)
    assert vm["status"] == "running" and vm["pendingRestart"] is True and vm["pending"] == ["cpu", "ramMb"]

    await _act(server, vm_id, "power-cycle")
    vm = await _vm(server, vm_id)
    assert vm["status"] == "running" and vm["pendingRestart"] is False and vm["pending"] == []


async def test_stop_and_start_clears_it_and_a_stopped_vm_has_nothing_pending(server: Server) -> None:
    job = await server.create({"name": "pr2"})
    vm_id = job["tasks"][0]["resourceId"]
    await _patch(server, vm_id, {"ramMb": 768})
    assert (await _vm(server, vm_id))["pending"] == ["ramMb"]
    await _act(server, vm_id, "stop")
    vm = await _vm(server, vm_id)
    assert vm["status"] == "stopped" and vm["pendingRestart"] is False  # the next start applies it
    await _act(server, vm_id, "start")
    vm = await _vm(server, vm_id)
    assert vm["status"] == "running" and vm["pendingRestart"] is False and vm["resources"]["ramMb"] == 768

    # a resize while stopped is taken by the next start: nothing pending after it
    await _act(server, vm_id, "shutdown")
    await _patch(server, vm_id, {"cpu": 3})
    await _act(server, vm_id, "start")
    assert (await _vm(server, vm_id))["pendingRestart"] is False


async def test_volant_restart_clears_it(server: Server) -> None:
    """Volant's restart (the core's VmService.restart: stop + start) applies the new shape too."""
    job = await server.create({"name": "pr3"})
    vm_id = job["tasks"][0]["resourceId"]
    await _patch(server, vm_id, {"cpu": 2})
    assert (await _vm(server, vm_id))["pending"] == ["cpu"]
    r = await server.client.post("/compat/volant/api/v1/vms/pr3/restart")
    assert r.status_code == 200 and r.json()["status"] == "running", r.text
    assert (await _vm(server, vm_id))["pendingRestart"] is False


def test_unknown_running_shape_is_not_pending() -> None:
    """A VM whose running shape was never recorded (started before migration 0029) shows
    nothing pending rather than guessing; a stopped one never does."""
    fields = {
        "seq": 1, "id": "vm-x", "uuid": "u", "name": "x", "org_id": "org", "team_id": None, "node_id": "n", "template_id": None,
        "snapshot_id": None, "status": "running", "cpu": 2, "ram_mb": 512, "disk_gb": 10, "tags": [], "spec": StoredSpec(),
        "error": None, "started_at": 1.0, "created_at": 1.0, "updated_at": 1.0, "guest_ready": False,
    }  # fmt: skip
    assert Vm(**fields).pending == []
    assert Vm(**fields, running_spec={"cpu": 1, "ramMb": 512, "diskGb": 10}).pending == ["cpu"]
    assert Vm(**{**fields, "status": "stopped"}, running_spec={"cpu": 1, "ramMb": 512, "diskGb": 10}).pending == []


async def _cli(server: Server, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vmplane.cli.main", *args, "--url", server.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "VMPLANE_API_KEY": server.admin_key, "COLUMNS": "200"},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_cli_marks_a_pending_restart_and_vm_restart_applies_it(server: Server) -> None:
    job = await server.create({"name": "pr4"})
    vm_id = job["tasks"][0]["resourceId"]
    code, out, err = await _cli(server, "vm", "list")
    assert code == 0 and "restart to apply" not in out, err
    await _patch(server, vm_id, {"cpu": 2, "ramMb": 1024})
    code, out, err = await _cli(server, "vm", "list")
    assert code == 0 and "running (restart to apply)" in out, out
    code, out, err = await _cli(server, "vm", "get", "pr4", "--json")
    assert code == 0 and json.loads(out)["pending"] == ["cpu", "ramMb"]
    code, out, err = await _cli(server, "vm", "get", "pr4")  # for people: a summary, the note on stderr
    assert "restart to apply: cpu, ramMb (vmplane vm restart pr4)" in err

    # --soft is the guest's reboot: the process stays, so the change still waits
    code, out, err = await _cli(server, "vm", "restart", "pr4", "--soft")
    assert code == 0 and out == "pr4 rebooted\n", err
    jobs = (await server.client.get("/api/v1/jobs")).json()["items"]
    assert jobs[0]["type"] == "vm-reboot"
    assert (await _vm(server, vm_id))["pendingRestart"] is True

    code, out, err = await _cli(server, "vm", "restart", "pr4")
    assert code == 0 and out == "pr4 restarted\n", err
    assert (await server.client.get("/api/v1/jobs")).json()["items"][0]["type"] == "vm-power-cycle"
    vm = await _vm(server, vm_id)
    assert vm["status"] == "running" and vm["pendingRestart"] is False
    code, out, err = await _cli(server, "vm", "list")
    assert "restart to apply" not in out and "pr4" in out
    code, _, err = await _cli(server, "vm", "restart", "nothere")
    assert code == 1 and "nothere" in err
