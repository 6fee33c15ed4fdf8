"""The Volant face (sim driver): VMs by name, the list's filters and X-Total-Count, power,
config history, deployments, the SSE stream in Volant's format, credentials, errors, system
figures and the VFIO endpoints on a fake sysfs."""

import asyncio
import json
from typing import Any

import httpx

from ..support_pci import install, standard_host

BASE = "/compat/volant"


def volant(server: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url + BASE, timeout=30, headers={"X-Volant-API-Key": server.admin_key})


async def test_vms_by_name(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=2)
    async with volant(server) as c:
        r = await c.post("/api/v1/vms", json={"name": "alpha", "cpu_cores": 1, "memory_mb": 256, "config": {"metadata": {"k": "v"}}})
        assert r.status_code == 201, r.text
        a = r.json()
        assert a["name"] == "alpha" and a["status"] == "running" and isinstance(a["id"], int) and a["memory_mb"] == 256
        assert a["runtime"] == "" and a["mac_address"] and a["ip_address"]
        b = (await c.post("/api/v1/vms", json={"name": "beta", "cpu_cores": 2, "memory_mb": 512})).json()
        assert b["id"] > a["id"]
        dup = await c.post("/api/v1/vms", json={"name": "alpha"})
        assert dup.status_code == 409 and set(dup.json()) == {"error", "details"}
        bad = await c.post("/api/v1/vms", json={"name": "x", "cpu_cores": "2"})
        assert bad.status_code == 400 and bad.json()["details"]["field"] == "cpu_cores"

        r = await c.get("/api/v1/vms")
        assert r.headers["X-Total-Count"] == "2" and [v["name"] for v in r.json()] == ["alpha", "beta"]
        r = await c.get("/api/v1/vms", params={"sort": "memory_mb", "order": "desc", "limit": 1})
        assert r.headers["X-Total-Count"] == "2" and [v["name"] for v in r.json()] == ["beta"]
        r = await c.get("/api/v1/vms", params={"offset": 1})
        assert [v["name"] for v in r.json()] == ["beta"]
        assert [v["name"] for v in (await c.get("/api/v1/vms", params={"q": "alp"})).json()] == ["alpha"]
        assert (await c.get("/api/v1/vms", params={"sort": "bogus"})).status_code == 400
        assert (await c.get("/api/v1/vms/alpha")).json()["id"] == a["id"]
        missing = await c.get("/api/v1/vms/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["error"]

        stopped = await c.post("/api/v1/vms/alpha/stop")
        assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
        assert [v["name"] for v in (await c.get("/api/v1/vms", params={"status": "stopped"})).json()] == ["alpha"]
        assert (await c.post("/api/v1/vms/alpha/stop")).status_code == 409
        assert (await c.post("/api/v1/vms/alpha/start")).json()["status"] == "running"
        assert (await c.post("/api/v1/vms/alpha/restart")).json()["status"] == "running"

        # config: version 1 is what it was created from; PATCH merges into a new version
        cfg = (await c.get("/api/v1/vms/alpha/config")).json()
        assert cfg["version"] == 1 and cfg["config"] == {"metadata": {"k": "v"}, "resources": {"cpu_cores": 1, "memory_mb": 256}}
        r = await c.patch("/api/v1/vms/alpha/config", json={"resources": {"memory_mb": 384}, "metadata": {"k": None, "x": 1}})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["restart_required"] is True and r.json()["config"]["metadata"] == {"x": 1}
        history = (await c.get("/api/v1/vms/alpha/config/history", params={"limit": 5})).json()
        assert [h["version"] for h in history] == [2, 1] and all(isinstance(h["id"], int) for h in history)
        assert (await c.patch("/api/v1/vms/alpha/config", content=b"[1]")).status_code == 400
        # the restart takes the new memory
        await asyncio.sleep(0.2)
        assert (await c.post("/api/v1/vms/alpha/restart")).json()["memory_mb"] == 384

        assert (await c.delete("/api/v1/vms/beta")).status_code == 204
        assert (await c.get("/api/v1/vms/beta")).status_code == 404


async def test_a_deleted_vms_id_is_never_reused(server: Any) -> None:
    """Volant's integer `id` names one VM for good: deleting the newest VM and creating
    another gives the new one a new id (SQLite used to hand out the deleted row's), and the
    new VM's config history ids are new too."""
    async with volant(server) as c:
        first = (await c.post("/api/v1/vms", json={"name": "keep", "cpu_cores": 1, "memory_mb": 256})).json()
        newest = (await c.post("/api/v1/vms", json={"name": "gone", "cpu_cores": 1, "memory_mb": 256})).json()
        gone_history = {h["id"] for h in (await c.get("/api/v1/vms/gone/config/history")).json()}
        assert (await c.delete("/api/v1/vms/gone")).status_code == 204
        r = await c.post("/api/v1/vms", json={"name": "next", "cpu_cores": 1, "memory_mb": 256})
        assert r.status_code == 201, r.text
        after = r.json()
        assert after["id"] not in (first["id"], newest["id"]) and after["id"] > newest["id"]
        assert (await c.get("/api/v1/vms/next")).json()["id"] == after["id"]
        assert not gone_history & {h["id"] for h in (await c.get("/api/v1/vms/next/config/history")).json()}
        # the same integer is the VM's VMID on the native API
        native = (await server.client.get("/api/v1/vms", params={"name": "next"})).json()["items"]
        assert [v["vmid"] for v in native] == [after["id"]]


async def test_credentials_health_and_system(server: Any) -> None:
    base = server.url + BASE
    async with httpx.AsyncClient(base_url=base, timeout=30) as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}
        r = await anon.get("/api/v1/vms")
        assert r.status_code == 401 and set(r.json()) == {"error", "details"}
        assert (await anon.get("/api/v1/vms", params={"api_key": server.admin_key})).status_code == 200
        assert (await anon.get("/api/v1/vms", headers={"X-API-Key": server.admin_key})).status_code == 200
        assert (await anon.get("/api/v1/nope", headers={"X-API-Key": server.admin_key})).status_code == 404
    async with volant(server) as c:
        await c.post("/api/v1/vms", json={"name": "one"})
        status = (await c.get("/api/v1/system/status")).json()
        assert status["vm_count"] == 1 and 0 <= status["cpu_percent"] <= 100 and 0 < status["mem_percent"] < 100
        info = (await c.get("/api/v1/system/info")).json()
        assert info["status"] == "ok" and info["api_listen_addr"].endswith(str(server.port)) and info["host_ip"]
        assert (await c.get("/openapi.json")).json()["info"]


async def test_deployments_and_the_event_stream(server_factory: Any) -> None:
    server = await server_factory(sim_nodes=2)
    lines: list[str] = []

    async def listen() -> None:
        async with volant(server) as c, c.stream("GET", "/api/v1/events/vms") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                lines.append(line)

    reader = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    async with volant(server) as c:
        r = await c.post("/api/v1/deployments", json={"name": "api", "replicas": 2, "config": {"resources": {"memory_mb": 256}}})
        assert r.status_code == 201 and r.json()["desired_replicas"] == 2 and set(r.json()) >= {"ready_replicas", "created_at", "updated_at"}
        for _ in range(200):
            d = (await c.get("/api/v1/deployments/api")).json()
            if d["ready_replicas"] == 2:
                break
            await asyncio.sleep(0.1)
        assert d["ready_replicas"] == 2 and [x["name"] for x in (await c.get("/api/v1/deployments")).json()] == ["api"]
        assert sorted(v["name"] for v in (await c.get("/api/v1/vms")).json()) == ["api-1", "api-2"]
        assert (await c.get("/api/v1/vms/api-1/config")).json()["config"] == {"resources": {"memory_mb": 256}}
        assert (await c.patch("/api/v1/deployments/api", json={"replicas": 1})).json()["desired_replicas"] == 1
        for _ in range(200):
            if [v["name"] for v in (await c.get("/api/v1/vms")).json()] == ["api-1"]:
                break
            await asyncio.sleep(0.1)
        assert [v["name"] for v in (await c.get("/api/v1/vms")).json()] == ["api-1"]
        assert (await c.patch("/api/v1/deployments/api", json={"replicas": -1})).status_code == 400
        assert (await c.delete("/api/v1/deployments/api")).status_code == 204
        assert (await c.get("/api/v1/deployments/api")).status_code == 404
    await asyncio.sleep(0.5)
    reader.cancel()
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: ")]
    kinds = [x[7:] for x in lines if x.startswith("event: ")]
    assert not any(x.startswith("id:") for x in lines)
    assert [e["type"] for e in events] == kinds
    by_vm = {(e["name"], e["type"]) for e in events}
    assert {("api-1", "VM_CREATED"), ("api-1", "VM_RUNNING"), ("api-2", "VM_CREATED"), ("api-2", "VM_RUNNING"), ("api-2", "VM_DELETED")} <= by_vm
    created = next(e for e in events if e["type"] == "VM_CREATED")
    assert created["status"] == "starting" and created["message"] == "vm record created" and created["timestamp"].endswith("Z")
    running = next(e for e in events if e["type"] == "VM_RUNNING")
    assert running["ip_address"] and running["mac_address"]


async def test_vfio_endpoints(server_factory: Any, tmp_path: Any, monkeypatch: Any) -> None:
    kernel = install(standard_host(tmp_path / "host"), monkeypatch)
    server = await server_factory(sim_nodes=1, sysfs_root=kernel.root, pci_allowlist=["10de:*"])
    async with volant(server) as c:
        info = (await c.post("/api/v1/vfio/devices/info", json={"pci_address": "0000:01:00.0"})).json()
        assert info["vendor"] == "10de" and info["iommu_group"] == "1"
        bad = await c.post("/api/v1/vfio/devices/info", json={"pci_address": "zz"})
        assert bad.status_code == 400 and bad.json()["details"]["field"] == "pci_address"
        v = (await c.post("/api/v1/vfio/devices/validate", json={"pci_addresses": ["0000:01:00.0", "0000:02:00.0"]})).json()
        assert v["valid"] is False and len(v["errors"]) == 1 and "0000:02:00.0" in v["errors"][0]
        groups = (await c.post("/api/v1/vfio/devices/iommu-groups", json={"pci_addresses": ["0000:01:00.0"]})).json()
        assert groups == [{"id": "1", "devices": ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]}]  # the bridge is a member too
        paths = (await c.post("/api/v1/vfio/devices/group-paths", json={"pci_addresses": ["0000:01:00.0", "0000:01:00.1"]})).json()
        assert paths == {"group_paths": ["/dev/vfio/1"]}
        bound = await c.post("/api/v1/vfio/devices/bind", json={"pci_addresses": ["0000:01:00.0"]})
        assert bound.status_code == 200 and bound.json()["bound_devices"] == ["0000:01:00.0"], bound.text
        assert (await c.post("/api/v1/vfio/devices/info", json={"pci_address": "0000:01:00.0"})).json()["driver"] == "vfio-pci"
        refused = await c.post("/api/v1/vfio/devices/bind", json={"pci_addresses": ["0000:02:00.0"]})
        assert refused.status_code == 400
        un = (await c.post("/api/v1/vfio/devices/unbind", json={"pci_addresses": ["0000:01:00.0"]})).json()
        assert un["unbound_devices"] == ["0000:01:00.0"]


async def test_vms_and_deployments_from_a_plugin(server: Any, tmp_path: Any) -> None:
    """`runtime` on create (or in a deployment's config) makes the VM from that plugin: its
    resources (128 MiB here) unless the request gives some, and `runtime` in the answer."""
    from .test_volant_plugins import manifest

    async with volant(server) as c:
        assert (await c.post("/api/v1/plugins", json=manifest(tmp_path))).status_code == 201
        for _ in range(200):  # the image is fetched by a job first
            r = await c.post("/api/v1/vms", json={"name": "p1", "runtime": "web"})
            if r.status_code == 201 or "importing" not in r.text:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 201, r.text
        assert r.json()["runtime"] == "web" and r.json()["memory_mb"] == 128
        r = await c.post("/api/v1/vms", json={"name": "p2", "runtime": "web", "memory_mb": 256})
        assert r.json()["memory_mb"] == 256
        assert [v["name"] for v in (await c.get("/api/v1/vms", params={"runtime": "web"})).json()] == ["p1", "p2"]
        assert [v["name"] for v in (await c.get("/api/v1/vms", params={"plugin": "web"})).json()] == ["p1", "p2"]
        assert (await c.post("/api/v1/vms", json={"name": "p3", "runtime": "nope"})).status_code == 400
        await c.post("/api/v1/deployments", json={"name": "pd", "replicas": 1, "config": {"runtime": "web"}})
        for _ in range(200):
            vm = await c.get("/api/v1/vms/pd-1")
            if vm.status_code == 200 and vm.json()["status"] == "running":
                break
            await asyncio.sleep(0.1)
        assert vm.json()["runtime"] == "web" and vm.json()["memory_mb"] == 128
