"""Errors in each face's own terms: what a client of the face sent and knows (a Volant VM's
name and Volant's states, a HyperSDK job's id), and `details` as the contract types them
(Volant: plain strings) — never vmplane's native ids or Python's rendering of its values."""

import asyncio
from typing import Any

from ..support import Server, free_port
from ..support_hypersdk import P as HSDK
from ..support_hypersdk import doc_job
from .test_volant import volant

PYTHON_REPR = ("<", "[", "'", "VmStatus")


def plain(details: dict[str, Any]) -> None:
    """Volant's contract: details values are strings, here without Python's repr in them."""
    for key, value in details.items():
        assert isinstance(value, str), (key, value)
        assert not any(mark in value for mark in PYTHON_REPR), (key, value)


async def test_volant_refusals_name_the_vm_and_its_states_in_volant_terms(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=1)
    async with volant(server) as c:
        assert (await c.post("/api/v1/vms", json={"name": "web-1", "cpu_cores": 1, "memory_mb": 256})).status_code == 201
        vm_id = (await server.client.get("/api/v1/vms", params={"name": "web-1"})).json()["items"][0]["id"]

        taken = await c.post("/api/v1/vms", json={"name": "web-1"})
        assert taken.status_code == 409, taken.text
        plain(taken.json()["details"])
        assert taken.json()["details"]["names"] == "web-1"

        assert (await c.post("/api/v1/vms/web-1/stop")).status_code == 200
        r = await c.post("/api/v1/vms/web-1/stop")
        assert r.status_code == 409, r.text
        body = r.json()
        plain(body["details"])
        assert body["error"] == "cannot stop VM web-1: it is stopped" and vm_id not in r.text
        assert body["details"] == {"current": "stopped", "required": "crashed, running, starting, stopping"}
        # Volant's MCP command set says it the same way
        r = await c.post("/api/v1/mcp", json={"command": "volant.vms.stop", "params": {"name": "web-1"}})
        assert r.status_code == 200 and r.json()["error"] == "cannot stop VM web-1: it is stopped", r.text

        assert (await c.post("/api/v1/vms/web-1/start")).status_code == 200
        r = await c.post("/api/v1/vms/web-1/start")
        assert r.status_code == 409 and r.json()["error"] == "cannot start VM web-1: it is running" and vm_id not in r.text
        assert r.json()["details"] == {"current": "running", "required": "crashed, stopped"}

        bad = await c.post("/api/v1/vms", json={"name": "x", "cpu_cores": "2"})
        assert bad.status_code == 400 and bad.json()["details"] == {"field": "cpu_cores"}

    # the native API keeps its ids and JSON values
    r = await server.client.post(f"/api/v1/vms/{vm_id}/start")
    assert r.status_code == 409 and vm_id in r.json()["error"]
    assert r.json()["details"]["required"] == ["error", "stopped", "unknown"]


async def test_hypersdk_cancel_of_an_ended_job_names_the_clients_id(server: Server) -> None:
    c = server.client
    r = await c.post(f"{HSDK}/jobs/submit", json=doc_job(f"127.0.0.1:{free_port()}"))
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    for _ in range(300):  # the vCenter refuses: the job fails at connecting
        job = (await c.get(f"{HSDK}/jobs/{job_id}")).json()
        if job["status"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert job["status"] == "failed", job
    native = job["vmplane_job_id"]
    assert native != job_id

    r = await c.post(f"{HSDK}/jobs/cancel", json={"job_ids": [job_id]})
    body = r.json()
    assert r.status_code == 200 and body["failed"] == [job_id] and body["cancelled"] == []
    assert body["errors"] == {job_id: f"job {job_id} already ended (failed)"}
    assert native not in r.text
