"""End to end through the HyperSDK face on the qemu driver: an OVA built here (a bootable
tiny-linux disk made a stream-optimized VMDK by qemu-img, an OVF descriptor beside it) is
submitted as a HyperSDK job, imported into a VM that boots, its progress watched over
/compat/hypersdk/ws, and a real HTTP receiver gets the webhook `job.completed`."""

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import websockets

from ..imports_support import bootable_ova
from ..support import Server, require_qemu
from ..support_hypersdk import P, Receiver, check_client_job
from .test_qemu_vm import wait_for

pytestmark = pytest.mark.slow


async def test_an_ova_submitted_as_a_hypersdk_job_becomes_a_running_guest(server_factory: Any, tmp_path: Path) -> None:
    from vmplane.images.tiny import INIT_START_LINE

    require_qemu()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=20)
    c = s.client
    ova = bootable_ova(s, tmp_path, "tiny-ova")

    receiver = await Receiver().start()
    try:
        r = await c.post(f"{P}/webhooks", json={"url": receiver.url, "events": ["job.completed", "job.failed"], "retry_count": 3})
        assert r.status_code == 201, r.text
        ws_url = s.url.replace("http", "ws") + f"{P}/ws"
        async with websockets.connect(ws_url, additional_headers={"X-API-Key": s.admin_key}, max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "status"
            assert json.loads(await ws.recv())["type"] == "jobs"
            r = await c.post(f"{P}/jobs/submit", json={"name": "tiny-ova", "vm_path": str(ova), "source": {"type": "ova", "path": str(ova)},
                                                       "options": {"network_mapping": {"VM Network": "default"}}})  # fmt: skip
            assert r.status_code == 201 and r.json()["accepted"] == 1, r.text
            job_id = r.json()["job_id"]

            updates: list[dict[str, Any]] = []
            deadline = asyncio.get_running_loop().time() + 240
            while not updates or updates[-1]["status"] not in ("completed", "failed", "cancelled"):
                assert asyncio.get_running_loop().time() < deadline, updates[-3:]
                msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
                if msg["type"] == "job_update" and msg["data"]["definition"]["id"] == job_id:
                    check_client_job(msg["data"])
                    updates.append(msg["data"])
        final = updates[-1]
        assert final["status"] == "completed", final
        stages = [u["progress"]["stage"] for u in updates if u["status"] == "running"]
        assert any(st in ("exporting", "converting", "defining", "starting") for st in stages), stages  # progress seen as it went
        assert final["progress"]["percent_complete"] == 100 and final["progress"]["phase"] == "completed"
        moved = [u["progress"] for u in updates if u["progress"]["current_bytes"] > 0]
        assert moved and all(p["current_bytes"] == p["bytes_transferred"] <= p["total_bytes"] for p in moved), updates
        # bytes seen while it ran are part of the way (a quick import may pass its converting
        # stage between two progress writes, which come at most once a second)
        assert all(0 < u["progress"]["percent_complete"] < 100 for u in updates if u["status"] == "running" and u["progress"]["current_bytes"] > 0)

        delivery = await receiver.wait_for("job.completed", timeout=60)
        assert delivery["headers"]["user-agent"] == "HyperSDK-Webhook/1.0"
        data = delivery["body"]["data"]
        assert data["job_id"] == job_id and data["job_name"] == "tiny-ova" and data["vm_path"] == str(ova)

        job = (await c.get(f"{P}/jobs/{job_id}")).json()
        vm_id = job["vm_id"]
        vm = (await c.get(f"/api/v1/vms/{vm_id}")).json()
        assert vm["status"] == "running" and vm["name"] == "tiny-ova" and vm["resources"]["cpu"] == 1 and vm["resources"]["ramMb"] == 256

        async def booted() -> bool:
            return INIT_START_LINE in (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text

        await wait_for(booted, 90, "the imported OVA's disk to boot (BIOS, syslinux, kernel, init)")
        status = (await c.get(f"{P}/status")).json()
        assert status["completed_jobs"] == 1 and status["total_jobs"] == 1
        r = await c.delete(f"/api/v1/vms/{vm_id}")
        assert (await s.wait_job(r.json()["jobId"], timeout=60))["state"] == "succeeded"
    finally:
        await receiver.stop()
