"""Two qemu node agents on one machine (two data dirs, two ports) under a control plane with
no local node: the tiny template reaches each node (fetched from the control plane, checked),
a running guest is live-migrated between them through the API and keeps its memory, disk and
uptime; stopped, it moves back with its disk copied."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ..contract.test_qemu_driver import BOOT_TIMEOUT, accel_for_tests, needs_qemu, tiny_image
from ..support import Server, tiny_template
from ..support_agent import RunningAgent, join_token

pytestmark = [pytest.mark.slow, needs_qemu]


@pytest.fixture
async def qemu_fleet(server_factory: Any, tmp_path: Path) -> AsyncIterator[tuple[Server, list[RunningAgent]]]:
    tiny_image()  # built once into the shared cache (the control plane registers it)
    server = await server_factory(sim_nodes=0)
    accel = await accel_for_tests()
    token = await join_token(server.client)
    agents = [await RunningAgent(server.url, token, tmp_path / f"qemu-{i}", driver="qemu", hostname=f"qemu-{i}", accel=accel).start() for i in (1, 2)]
    try:
        yield server, agents
    finally:
        for vm in (await server.client.get("/api/v1/vms")).json()["items"]:
            await server.wait_job((await server.client.delete(f"/api/v1/vms/{vm['id']}")).json()["jobId"])
        for a in agents:
            await a.stop()


async def exec_in(server: Server, vm_id: str, script: str) -> str:
    r = await server.client.post(f"/api/v1/vms/{vm_id}/exec", json={"command": ["sh", "-c", script], "timeoutSec": 30})
    assert r.status_code == 200 and r.json()["exitCode"] == 0, r.text
    return str(r.json()["stdout"])


async def test_live_migration_and_move_between_two_qemu_agents(qemu_fleet: tuple[Server, list[RunningAgent]]) -> None:
    server, (a, b) = qemu_fleet
    c = server.client

    async def template() -> str | None:
        try:
            return await tiny_template(server)
        except StopIteration:
            return None

    deadline = asyncio.get_running_loop().time() + 60
    while (tpl := await template()) is None:  # registered when the first qemu node joined
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    job = await server.create({"name": "traveller", "templateId": tpl, "nodeId": a.node_id, "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
    assert job["state"] == "succeeded", job
    vm_id = job["tasks"][0]["resourceId"]
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
    while "boot complete" not in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text:
        assert asyncio.get_running_loop().time() < deadline, "the guest did not boot"
        await asyncio.sleep(0.2)
    up = float((await exec_in(server, vm_id, "echo ram > /root/mark; echo disk > /mnt/disk/mark; sync; cat /proc/uptime")).split()[0])
    async with server.rt.store.read() as conn:
        from vmplane.store import vms as vm_q

        started = (await vm_q.get_vm(conn, vm_id)).started_at  # type: ignore[union-attr]

    r = await c.post(f"/api/v1/vms/{vm_id}/migrate", json={"targetNodeId": b.node_id})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", (await c.get(f"/api/v1/jobs/{job['id']}")).json()
    task = (await c.get(f"/api/v1/jobs/{job['id']}")).json()["tasks"][0]
    detail = (await c.get(f"/api/v1/jobs/{job['id']}/tasks/{task['id']}")).json()
    print("[timing] migration:", [str(x) for x in detail.get("log", []) if "paused" in str(x) or "runs on" in str(x)])
    after = (await c.get(f"/api/v1/vms/{vm_id}")).json()
    assert after["node"] == b.node_id and after["status"] == "running"
    async with server.rt.store.read() as conn:
        assert (await vm_q.get_vm(conn, vm_id)).started_at == started  # type: ignore[union-attr]
    out = (await exec_in(server, vm_id, "cat /root/mark /mnt/disk/mark /proc/uptime")).split("\n")
    assert out[:2] == ["ram", "disk"] and float(out[2].split()[0]) >= up
    assert "boot complete" not in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text  # the target never booted it
    assert await a.agent.state.driver.get_vm(vm_id) is None  # type: ignore[union-attr]
    res = {n: (await c.get(f"/api/v1/nodes/{n}/resources")).json()["cpuUsed"] for n in (a.node_id, b.node_id)}
    assert res == {a.node_id: 0, b.node_id: 1}

    # stopped, it moves back: its disk is copied (the RAM of course is not)
    assert (await server.wait_job((await c.post(f"/api/v1/vms/{vm_id}/stop")).json()["jobId"]))["state"] == "succeeded"
    r = await c.post(f"/api/v1/vms/{vm_id}/move", json={"targetNodeId": a.node_id})
    job = await server.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", (await c.get(f"/api/v1/jobs/{job['id']}")).json()
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["node"] == a.node_id
    assert (await server.wait_job((await c.post(f"/api/v1/vms/{vm_id}/start")).json()["jobId"]))["state"] == "succeeded"
    deadline = asyncio.get_running_loop().time() + BOOT_TIMEOUT
    while "boot complete" not in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text:
        assert asyncio.get_running_loop().time() < deadline, "the moved guest did not boot"
        await asyncio.sleep(0.2)
    assert (await exec_in(server, vm_id, "cat /mnt/disk/mark")) == "disk\n"
