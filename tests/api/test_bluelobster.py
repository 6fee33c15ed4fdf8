"""The Blue Lobster face on sim nodes, as a Blue Lobster client uses it (X-API-Key, the
contract's paths and shapes): instances, launches, tasks, power actions, templates, capacity."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from vmplane.drivers.base import NodeInfo, VmStats
from vmplane.drivers.sim import SimDriver, SimFaults

from ..support import Server
from ..support_fastvm import GuestSimDriver

P = "/compat/bluelobster"
CONTRACT = json.loads((Path(__file__).parents[2] / "src/vmplane/api/compat/bluelobster/openapi.json").read_text())
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGtestkeytestkeytestkeytestkeytestkey user@host"


@dataclass
class LabeledSimDriver(GuestSimDriver):
    """The sim driver with node labels, a serial console (an echo), fixed stats, and disks
    that export and import (as bytes)."""

    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.capabilities = replace(self.capabilities, disk_export=True, stats=True)
        self.disks: dict[str, bytes] = {}

    async def export_disk(self, vm_id: str, dest: Path) -> int:
        data = self.disks.get(vm_id, b"fresh disk of " + vm_id.encode())
        dest.write_bytes(data)
        return len(data)

    async def import_disk(self, vm_id: str, source: Path) -> None:
        self.disks[vm_id] = source.read_bytes()

    async def stats_vm(self, vm_id: str) -> VmStats:
        return VmStats(cpu_percent=100.0, memory_mb=2048, memory_total_mb=8192, disk_read_bytes=10, disk_write_bytes=20,
                       net_rx_bytes=30, net_tx_bytes=40, uptime_seconds=12.4)  # fmt: skip

    async def node_info(self) -> NodeInfo:
        info = await super().node_info()
        return NodeInfo(info.hostname, info.cpu, info.ram_mb, info.disk_gb, {**info.labels, **self.labels}, info.pci_devices)


def nodes() -> list[tuple[str, SimDriver]]:
    """px1 in us-east-dev (16 vCPUs), px2 in eu-west (4 vCPUs: no medium fits twice)."""
    faults = SimFaults(name_pattern="^fail-")
    return [
        ("node-1", LabeledSimDriver(hostname="node-1", cpu=16, ram_mb=131072, disk_gb=4000, latency=0.005, faults=faults,
                                    labels={"region": "us-east-dev", "host_id": "px1"})),
        ("node-2", LabeledSimDriver(hostname="node-2", cpu=4, ram_mb=32768, disk_gb=1000, latency=0.005, faults=faults,
                                    labels={"region": "eu-west", "host_id": "px2"})),
    ]  # fmt: skip


OFFERINGS = """
[[regions]]
name = "us-east-dev"
description = "Philadelphia, PA"
city = "Philadelphia"
state = "PA"
country = "US"

[[regions]]
name = "eu-west"
description = "Amsterdam"
city = "Amsterdam"
country = "NL"

[[instance_types]]
name = "v1_cpu_small"
vcpus = 2
memory_gib = 8
storage_gib = 80
price_cents_per_hour = 3

[[instance_types]]
name = "v1_cpu_medium"
vcpus = 4
memory_gib = 16
storage_gib = 250
price_cents_per_hour = 6

[[instance_types]]
name = "gpu_1x_a4000"
vcpus = 8
memory_gib = 32
storage_gib = 250
price_cents_per_hour = 45
description = "Single GPU Instance"
gpus = 1
gpu_model = "A4000"
gpu_pci_model = "10de:24b0"
gpu_description = "NVIDIA RTX A4000 (16GB VRAM)"
"""


@pytest.fixture
async def bl(server_factory: Any, tmp_path: Path) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "offerings.toml").write_text(OFFERINGS)
    s = await server_factory(nodes=nodes(), cpu_overcommit=1.0)  # the offerings count hosts by their cores
    client = httpx.AsyncClient(base_url=s.url + P, timeout=30, headers={"X-API-Key": s.admin_key})
    yield s, client
    await client.aclose()


def documented(path: str, method: str, status: int) -> None:
    responses = CONTRACT["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} answered {status}, not documented ({', '.join(responses)})"


async def call(c: httpx.AsyncClient, method: str, path: str, *, expect: int = 200, **kw: Any) -> Any:
    """Call `path` (the contract's template, `{x}` filled from kw['params_path']) and check
    the status is the expected one and documented."""
    args = kw.pop("path_args", {})
    r = await c.request(method, path.format(**args), **kw)
    assert r.status_code == expect, r.text
    documented(path, method, expect)
    if expect >= 400 and expect != 422:
        body = r.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str), body
    return r.json()


async def wait_task(c: httpx.AsyncClient, task_id: str, timeout: float = 30) -> dict[str, Any]:
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        t = await call(c, "GET", "/api/v1/tasks/{task_id}", path_args={"task_id": task_id})
        if t["status"] in ("COMPLETED", "FAILED"):
            return t
        assert loop.time() < deadline, t
        await asyncio.sleep(0.05)


async def launch(c: httpx.AsyncClient, **body: Any) -> tuple[str, dict[str, Any]]:
    """Launch (v1_cpu_small in us-east-dev unless told otherwise), wait for the task; the
    instance's uuid and the finished task."""
    req = {"region": "us-east-dev", "instance_type": "v1_cpu_small", "username": "ubuntu", "ssh_key": KEY, **body}
    out = (await call(c, "POST", "/api/v1/instances/launch-instance", json=req))["data"]
    assert out["status"] == "PENDING" and out["next_steps"]["task_status_endpoint"] == f"/api/v1/tasks/{out['task_id']}"
    return out["instance_ids"][0], await wait_task(c, out["task_id"])


async def test_health_and_auth(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    h = await call(c, "GET", "/api/v1/health")
    assert h["status"] == "healthy" and h["components"] == {"api": "operational", "database": "operational", "hypervisor": "operational"}
    anon = httpx.AsyncClient(base_url=s.url + P)
    r = await anon.get("/api/v1/instances")
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    assert (await anon.get("/api/v1/health")).status_code == 200
    bad = httpx.AsyncClient(base_url=s.url + P, headers={"X-API-Key": "vmp_nonsense"})
    assert (await bad.get("/api/v1/instances")).status_code == 401
    await anon.aclose()
    await bad.aclose()
    r = await c.get("/api/v1/nothing-here")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "message": "no such endpoint"}
    r = await c.request("PATCH", "/api/v1/instances/x")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE, GET"
    assert (await c.get("/openapi.json")).json()["info"]["title"] == "Blue Lobster Instance API"


async def test_launch_list_details_and_tasks(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, task = await launch(c, name="web-1", metadata={"project": "ml"})
    assert task["status"] == "COMPLETED" and task["operation"] == "create_instance"
    assert task["params"]["vm_uuid"] == uuid and task["params"]["host_id"] == "px1"
    vm = await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": uuid})
    assert vm["uuid"] == uuid and vm["name"] == "web-1" and vm["host_id"] == "px1" and vm["region"] == "us-east-dev"
    assert (vm["cpu_cores"], vm["memory"], vm["storage"], vm["gpu_count"]) == (2, 8, 80, 0)
    assert vm["power_status"] == "running" and vm["metadata"] == {"project": "ml"}
    assert vm["instance_type"] == "v1_cpu_small" and vm["price_cents_per_hour"] == 3 and vm["vm_username"] == "ubuntu"
    assert vm["ip_address"] and vm["template_name"] is None  # sim nodes have no default template
    # the same VM on the native API: the account and the key reach the guest through cloud-init
    native = (await s.client.get(f"/api/v1/vms/{uuid}")).json()
    assert native["name"] == "web-1" and native["resources"] == {"cpu": 2, "ramMb": 8192, "diskGb": 80}
    row = await s.rt.vms.get(uuid, _owner(s))
    assert row.spec.to_json()["sshKeys"] == [KEY] and row.spec.to_json()["cloudInit"]["userData"]["users"][1]["ssh_authorized_keys"] == [KEY]

    uuid2, _ = await launch(c, instance_type="v1_cpu_medium", region="eu-west", name="db-1")
    listed = await call(c, "GET", "/api/v1/instances")
    assert [v["uuid"] for v in listed] == [uuid2, uuid]  # newest first
    assert listed[0]["host_id"] == "px2" and listed[0]["region"] == "eu-west"

    tasks = await call(c, "GET", "/api/v1/tasks")
    assert tasks["limit"] == 50 and tasks["days"] == 1 and tasks["total"] == len(tasks["tasks"]) >= 2
    assert all(t["status"] == "COMPLETED" for t in tasks["tasks"])
    assert (await call(c, "GET", "/api/v1/tasks", params={"status": "FAILED"}))["tasks"] == []
    assert len((await call(c, "GET", "/api/v1/tasks", params={"limit": 1}))["tasks"]) == 1
    r = await call(c, "GET", "/api/v1/tasks", params={"limit": 101}, expect=422)
    assert r["detail"][0]["loc"] == ["query", "limit"]
    await call(c, "GET", "/api/v1/tasks", params={"status": "DONE"}, expect=422)
    nf = await call(c, "GET", "/api/v1/tasks/{task_id}", path_args={"task_id": "job-nope"}, expect=404)
    assert nf == {"error": "task_not_found", "message": "Task not found", "task_id": "job-nope"}


async def test_launch_refusals(bl: tuple[Server, httpx.AsyncClient]) -> None:
    _s, c = bl
    path = "/api/v1/instances/launch-instance"
    base = {"region": "us-east-dev", "instance_type": "v1_cpu_small", "username": "ubuntu", "ssh_key": KEY}
    r = await call(c, "POST", path, json={**base, "instance_type": "v9_huge"}, expect=400)
    assert r["error"] == "invalid_request" and "v1_cpu_small" in r["details"]["valid_instance_types"]
    assert "eu-west" in (await call(c, "POST", path, json={**base, "region": "mars"}, expect=400))["details"]["valid_regions"]
    await call(c, "POST", path, json={**base, "template_name": "NO-SUCH"}, expect=400)
    # iso_url: imported through the outbound policy (the metadata service is refused), and not with a template
    r = await call(c, "POST", path, json={**base, "iso_url": "http://169.254.169.254/latest/x.iso"}, expect=400)
    assert "iso_url" in r["message"], r
    await call(c, "POST", path, json={**base, "iso_url": "file:///etc/shadow"}, expect=400)
    await call(c, "POST", path, json={**base, "template_name": "TINY-LINUX", "iso_url": "http://127.0.0.1:9/x.iso"}, expect=400)
    r = await call(c, "POST", path, json={**base, "username": "9bad"}, expect=422)
    assert r["detail"][0]["loc"] == ["body", "username"]
    await call(c, "POST", path, json={**base, "ssh_key": "not a key"}, expect=422)
    await call(c, "POST", path, json={k: v for k, v in base.items() if k != "region"}, expect=422)
    # no node of the region has a GPU; eu-west (4 vCPUs) takes one medium, not two
    r = await call(c, "POST", path, json={**base, "instance_type": "gpu_1x_a4000"}, expect=409)
    assert r["error"] == "resource_conflict"
    await launch(c, instance_type="v1_cpu_medium", region="eu-west")
    await call(c, "POST", path, json={**base, "instance_type": "v1_cpu_medium", "region": "eu-west"}, expect=409)
    # a create that fails on the node: the task says FAILED with the node's error
    _uuid, task = await launch(c, name="fail-1")
    assert task["status"] == "FAILED" and "simulated failure" in task["message"]
    assert (await call(c, "GET", "/api/v1/tasks", params={"status": "FAILED"}))["tasks"][0]["task_id"] == task["task_id"]


async def test_available_follows_capacity(bl: tuple[Server, httpx.AsyncClient]) -> None:
    _s, c = bl
    data = {d["id"]: d for d in (await call(c, "GET", "/api/v1/instances/available"))["data"]}
    assert set(data) == {"v1_cpu_small", "v1_cpu_medium", "gpu_1x_a4000"}
    assert data["v1_cpu_medium"]["instance_type"]["specs"] == {"vcpus": 4, "memory_gib": 16, "storage_gib": 250, "gpus": 0}
    assert [r["name"] for r in data["v1_cpu_medium"]["regions_with_capacity_available"]] == ["us-east-dev", "eu-west"]
    assert data["v1_cpu_medium"]["regions_with_capacity_available"][0]["location"] == {"city": "Philadelphia", "state": "PA", "country": "US"}
    assert data["gpu_1x_a4000"]["regions_with_capacity_available"] == []  # no node has an A4000
    assert data["gpu_1x_a4000"]["instance_type"]["specs"]["gpu_model"] == "A4000"
    await launch(c, instance_type="v1_cpu_medium", region="eu-west")  # eu-west is now full
    data = {d["id"]: d for d in (await call(c, "GET", "/api/v1/instances/available"))["data"]}
    assert [r["name"] for r in data["v1_cpu_medium"]["regions_with_capacity_available"]] == ["us-east-dev"]


async def test_launch_custom_on_a_host(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    path = "/api/v1/instances/launch-custom"
    body = {"name": "custom-1", "instance_type": "custom", "host": "px2", "cores": 2, "memory": 8, "disk_size": 40,
            "gpu_count": 0, "username": "admin", "password": "s3cret-pass", "price_cents_per_hour": 7}  # fmt: skip
    out = await call(c, "POST", path, json=body)
    assert (await wait_task(c, out["task_id"]))["status"] == "COMPLETED"
    vm = await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": out["vm_uuid"]})
    assert (vm["host_id"], vm["cpu_cores"], vm["memory"], vm["storage"], vm["price_cents_per_hour"]) == ("px2", 2, 8, 40, 7)
    native = await s.rt.vms.get(out["vm_uuid"], _owner(s))
    users = native.spec.to_json()["cloudInit"]["userData"]["users"]
    assert users[1]["name"] == "admin" and users[1]["plain_text_passwd"] == "s3cret-pass" and "sshKeys" not in native.spec.to_json()
    assert (await call(c, "POST", path, json={**body, "name": "custom-2", "host": "px9"}, expect=400))["error"] == "invalid_request"
    assert (await call(c, "POST", path, json={**body, "name": "custom-3", "gpu_count": 1}, expect=409))["error"] == "resource_conflict"
    r = await call(c, "POST", path, json={**body, "name": "custom-4", "cores": 8}, expect=409)  # px2 has 4 vCPUs
    assert r["error"] == "resource_conflict"
    await call(c, "POST", path, json={**body, "memory": 4}, expect=422)
    await call(c, "POST", path, json={**body, "name": "custom-1"}, expect=409)  # the name is taken


def _owner(s: Server) -> Any:
    from vmplane.auth import Principal, Role

    return Principal(org_id="org-default", user_id="test", user_name="test", role=Role.OWNER)


async def test_power_rename_delete(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, _ = await launch(c, name="pw-1")
    a = {"instance_id": uuid}
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/reboot", path_args=a)
    assert r["status"] == "success" and r["host"] == "px1" and r["duration_ms"] >= 0
    for op, words, after in (
        ("shutdown", "shutdown", "stopped"),
        ("power-on", "power on", "running"),
        ("force-shutdown", "force shutdown", "stopped"),
        ("power-cycle", "power cycle", "running"),
    ):
        r = await call(c, "POST", f"/api/v1/instances/{{instance_id}}/{op}", path_args=a)
        assert r["status"] == "PENDING" and r["message"] == f"VM {words} queued" and r["instance_id"] == uuid
        t = await wait_task(c, r["task_id"])
        assert t["status"] == "COMPLETED", t
        vm = await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a)
        assert vm["power_status"] == after, (op, vm)
    await call(c, "POST", "/api/v1/instances/{instance_id}/force-shutdown", path_args=a)
    await s.rt.jobs.wait((await call(c, "GET", "/api/v1/tasks", params={"limit": 1}))["tasks"][0]["task_id"], 10)
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/reboot", path_args=a, expect=409)
    assert r["error"] == "operation_in_progress"
    await call(c, "POST", "/api/v1/instances/{instance_id}/power-on", path_args=a)

    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=a, json={"name": "pw-renamed"})
    assert r == {"message": "Instance renamed successfully", "instance_id": uuid, "new_name": "pw-renamed"}
    for bad in ("ab", "has space", "dot.ted", "x" * 65):  # underscores are allowed: tests/api/test_display_names.py
        r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=a, json={"name": bad}, expect=400)
        assert r["error"] == "invalid_name", bad
    other, _ = await launch(c, name="pw-2")
    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args={"instance_id": other}, json={"name": "pw-renamed"}, expect=400)
    assert "already exists" in r["message"]
    await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=a, expect=422)

    nf = {"instance_id": "3f2b1c4d-0000-4000-8000-000000000000"}
    for method, path in (
        ("GET", "/api/v1/instances/{instance_id}"),
        ("DELETE", "/api/v1/instances/{instance_id}"),
        ("POST", "/api/v1/instances/{instance_id}/reboot"),
        ("POST", "/api/v1/instances/{instance_id}/power-on"),
    ):
        r = await call(c, method, path, path_args=nf, expect=404)
        assert r["error"] == "instance_not_found"
    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args=nf, json={"name": "abc"}, expect=404)

    r = await call(c, "DELETE", "/api/v1/instances/{instance_id}", path_args=a)
    assert r["status"] == "success" and r["instance_id"] == uuid and r["host"] == "px1"
    await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a, expect=404)
    assert [v["uuid"] for v in await call(c, "GET", "/api/v1/instances")] == [other]


async def test_templates(bl: tuple[Server, httpx.AsyncClient], tmp_path: Path) -> None:
    s, c = bl
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * 1024 * 1024)
    r = await s.client.post("/api/v1/templates", json={"os": "linux", "name": "ubuntu-22-04", "sourceUrl": f"file://{img}"})
    assert (await s.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    out = await call(c, "GET", "/api/v1/instances/templates")
    tpl = next(t for t in out["templates"] if t["name"] == "UBUNTU-22-04")
    assert tpl["display_name"] == "ubuntu-22-04" and tpl["os_type"] == "linux"
    uuid, task = await launch(c, template_name="UBUNTU-22-04")
    assert task["status"] == "COMPLETED"
    vm = await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": uuid})
    assert vm["template_name"] == "UBUNTU-22-04" and vm["template_display_name"] == "ubuntu-22-04"


async def test_team_key_sees_only_its_team(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    mine, _ = await launch(c, name="org-vm")
    team = (await s.client.post("/api/v1/teams", json={"name": "blue"})).json()
    assert (await s.client.post("/api/v1/users", json={"name": "bea", "role": "member"})).status_code == 201
    key = (await s.client.post("/api/v1/api-keys", json={"name": "k", "userId": "bea", "teamId": "blue"})).json()
    tc = httpx.AsyncClient(base_url=s.url + P, headers={"X-API-Key": key["key"]}, timeout=30)
    try:
        assert await call(tc, "GET", "/api/v1/instances") == []
        await call(tc, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": mine}, expect=404)
        theirs, _ = await launch(tc, name="team-vm")
        assert [v["uuid"] for v in await call(tc, "GET", "/api/v1/instances")] == [theirs]
        assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args={"instance_id": theirs}))["team_id"] == team["id"]
    finally:
        await tc.aclose()


async def test_firewall_options_and_positional_rules(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, _ = await launch(c, name="fw-1")
    a = {"instance_id": uuid}
    fw = await call(c, "GET", "/api/v1/instances/{instance_id}/firewall", path_args=a)
    assert fw == {"enabled": False, "policy_in": "ACCEPT", "policy_out": "ACCEPT", "rules": []}
    r = await call(c, "PUT", "/api/v1/instances/{instance_id}/firewall", path_args=a, json={"enable": True, "policy_in": "DROP", "policy_out": "ACCEPT"})
    assert r == {"status": "success", "message": "Firewall options updated", "firewall": {"enabled": True, "policy_in": "DROP", "policy_out": "ACCEPT", "rules": []}}
    await call(c, "PUT", "/api/v1/instances/{instance_id}/firewall", path_args=a, json={"policy_in": "MAYBE"}, expect=422)
    path = "/api/v1/instances/{instance_id}/firewall/rules"
    # the contract's examples, in order
    r = await call(c, "POST", path, path_args=a, json={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH access"})
    assert r == {"status": "success", "message": "Firewall rule added",
                 "rule": {"pos": 0, "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH access", "enable": 1}}  # fmt: skip
    await call(c, "POST", path, path_args=a, json={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "80,443", "comment": "Web traffic"})
    await call(c, "POST", path, path_args=a, json={"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "3306", "source": "10.0.0.0/8", "comment": "MySQL from private network"})
    fw = await call(c, "GET", "/api/v1/instances/{instance_id}/firewall", path_args=a)
    assert fw == {
        "enabled": True, "policy_in": "DROP", "policy_out": "ACCEPT",
        "rules": [
            {"pos": 0, "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22", "comment": "SSH access", "enable": 1},
            {"pos": 1, "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "80,443", "comment": "Web traffic", "enable": 1},
            {"pos": 2, "type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "3306", "source": "10.0.0.0/8", "comment": "MySQL from private network", "enable": 1},
        ],
    }  # fmt: skip
    one = "/api/v1/instances/{instance_id}/firewall/rules/{pos}"
    assert (await call(c, "GET", one, path_args={**a, "pos": 2}))["source"] == "10.0.0.0/8"
    r = await call(c, "DELETE", one, path_args={**a, "pos": 0})
    assert r == {"status": "success", "message": "Firewall rule at position 0 deleted"}
    assert (await call(c, "GET", one, path_args={**a, "pos": 0}))["dport"] == "80,443"  # positions moved up
    assert await call(c, "GET", one, path_args={**a, "pos": 5}, expect=404) == {"error": "rule_not_found", "message": "Rule at position 5 not found"}
    await call(c, "DELETE", one, path_args={**a, "pos": 5}, expect=404)
    await call(c, "GET", one, path_args={**a, "pos": "x"}, expect=422)
    r = await call(c, "POST", path, path_args=a, json={"type": "in", "action": "ACCEPT", "dport": "70000"}, expect=400)
    assert r["error"] == "invalid_rule"
    await call(c, "POST", path, path_args=a, json={"type": "sideways", "action": "ACCEPT"}, expect=400)
    await call(c, "POST", path, path_args=a, json={"action": "ACCEPT"}, expect=422)
    # the same firewall on the native API
    native = (await s.client.get(f"/api/v1/vms/{uuid}/firewall")).json()
    assert native["enabled"] is True and len(native["rules"]) == 2
    nf = {"instance_id": "3f2b1c4d-0000-4000-8000-000000000000"}
    assert (await call(c, "GET", "/api/v1/instances/{instance_id}/firewall", path_args=nf, expect=404))["error"] == "instance_not_found"


async def test_additional_ips(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, _ = await launch(c, name="ip-1")
    a = {"instance_id": uuid}
    ips = await call(c, "GET", "/api/v1/instances/{instance_id}/ips", path_args=a)
    (primary,) = ips["ips"]
    assert primary["primary"] is True and ips["instance_id"] == uuid
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/ips", path_args=a)
    extra = r["ip_address"]
    assert r["status"] == "success" and {i["ip_address"] for i in r["ips"]} == {primary["ip_address"], extra}
    one = "/api/v1/instances/{instance_id}/ips/{ip_address}"
    r = await call(c, "DELETE", one, path_args={**a, "ip_address": primary["ip_address"]}, expect=400)
    assert "primary" in r["message"]
    await call(c, "DELETE", one, path_args={**a, "ip_address": "not-an-ip"}, expect=400)
    await call(c, "DELETE", one, path_args={**a, "ip_address": "192.0.2.77"}, expect=404)
    r = await call(c, "DELETE", one, path_args={**a, "ip_address": extra})
    assert r["ip_address"] == extra
    assert [i["ip_address"] for i in (await call(c, "GET", "/api/v1/instances/{instance_id}/ips", path_args=a))["ips"]] == [primary["ip_address"]]
    nf = {"instance_id": "3f2b1c4d-0000-4000-8000-000000000000"}
    await call(c, "GET", "/api/v1/instances/{instance_id}/ips", path_args=nf, expect=404)
    await call(c, "POST", "/api/v1/instances/{instance_id}/ips", path_args=nf, expect=404)


async def test_backups_restore_and_schedules(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, _ = await launch(c, name="bk-1")
    other, _ = await launch(c, name="bk-2")
    a = {"instance_id": uuid}
    driver = s.rt.registry.driver((await s.rt.vms.get(uuid, _owner(s))).node_id)
    driver.disks[(await s.rt.vms.get(uuid, _owner(s))).id] = b"version one"
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/backup", path_args=a)
    assert r["message"] == "Backup started" and r["instance_id"] == uuid
    volid = r["volid"]
    again = await call(c, "POST", "/api/v1/instances/{instance_id}/backup", path_args=a, expect=409)  # one at a time
    assert again["error"] == "task_in_progress"
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"
    listed = await call(c, "GET", "/api/v1/instances/{instance_id}/backups", path_args=a)
    assert listed["total"] == 1 and listed["backup_in_progress"] is False and listed["restore_in_progress"] is False
    (b,) = listed["backups"]
    assert b["volid"] == volid and b["size_bytes"] == len(b"version one") and b["format"] == "raw" and b["notes"] == ""

    r = await call(c, "PUT", "/api/v1/backups/notes", params={"volid": volid}, json={"notes": "before upgrade"})
    assert r["notes"] == "before upgrade"
    await call(c, "PUT", "/api/v1/backups/notes", params={"volid": "bkp-nope"}, json={"notes": "x"}, expect=404)

    # restore in place: the disk comes back
    vm_id = (await s.rt.vms.get(uuid, _owner(s))).id
    driver.disks[vm_id] = b"version two"
    await call(c, "POST", "/api/v1/instances/{instance_id}/restore", path_args=a, json={}, expect=400)
    assert (await call(c, "POST", "/api/v1/instances/{instance_id}/restore", path_args=a, json={"backup_volid": "bkp-nope"}, expect=404))["error"] == "backup_not_found"
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/restore", path_args=a, json={"backup_volid": volid})
    assert r["message"] == "Restore started" and r["backup_volid"] == volid
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"
    assert driver.disks[vm_id] == b"version one"
    assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a))["power_status"] == "running"

    # restore into another VM, renaming it
    r = await call(c, "POST", "/api/v1/backups/restore", params={"volid": volid, "target_vm_uuid": other, "new_name": "bk-copy", "add_restore_prefix": "true"})
    assert r["new_name"].startswith("RESTORE-") and r["new_name"].endswith("-bk-copy")
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"
    other_row = await s.rt.vms.get(other, _owner(s))
    assert driver.disks[other_row.id] == b"version one" and other_row.name == r["new_name"]
    taken = await call(c, "POST", "/api/v1/backups/restore", params={"volid": volid, "target_vm_uuid": other, "new_name": "bk-1"}, expect=400)
    assert taken["error"] == "invalid_name" and (await s.rt.vms.get(other, _owner(s))).name == r["new_name"]
    await call(c, "POST", "/api/v1/backups/restore", params={"volid": "bkp-nope", "target_vm_uuid": other}, expect=404)
    await call(c, "POST", "/api/v1/backups/restore", params={"volid": volid, "target_vm_uuid": "3f2b1c4d-0000-4000-8000-000000000000"}, expect=404)
    await call(c, "POST", "/api/v1/backups/restore", params={"volid": volid}, expect=422)

    storage = await call(c, "GET", "/api/v1/backups/storage")
    assert storage["total_bytes"] == len(b"version one") and storage["vms"][0]["backups"] == 1

    # a deleted VM's backups stay listed
    await call(c, "DELETE", "/api/v1/instances/{instance_id}", path_args=a)
    everything = await call(c, "GET", "/api/v1/backups")
    (gone,) = everything["backups"]
    assert gone["volid"] == volid and gone["vm_deleted"] is True and gone["vm_name"] == "bk-1" and gone["vm_uuid"] is None
    r = await call(c, "DELETE", "/api/v1/backups", params={"volid": volid})
    assert r["status"] == "success"
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"
    assert (await call(c, "GET", "/api/v1/backups"))["backups"] == []
    await call(c, "DELETE", "/api/v1/backups", params={"volid": volid}, expect=404)

    # schedules
    sa = {"vm_uuid": other}
    path = "/api/v1/instances/{vm_uuid}/backup-schedule"
    assert (await call(c, "GET", path, path_args=sa, expect=404))["error"] == "schedule_not_found"
    r = await call(c, "POST", path, path_args=sa, json={"frequency": "weekly", "hour_utc": 3, "day_of_week": 0})
    sch = r["schedule"]
    assert (sch["frequency"], sch["hour_utc"], sch["day_of_week"], sch["day_of_month"], sch["keep_last"]) == ("weekly", 3, 0, None, 7)
    assert sch["next_run"] is not None
    r = await call(c, "POST", path, path_args=sa, json={"frequency": "daily", "hour_utc": 4})  # replaces it
    assert (await call(c, "GET", path, path_args=sa))["frequency"] == "daily"
    for bad in ({"frequency": "hourly", "hour_utc": 1}, {"frequency": "daily", "hour_utc": 24}, {"frequency": "weekly", "hour_utc": 1}):
        assert (await call(c, "POST", path, path_args=sa, json=bad, expect=400))["error"] == "invalid_schedule", bad
    await call(c, "POST", path, path_args=sa, json={"frequency": "daily"}, expect=422)
    assert (await call(c, "DELETE", path, path_args=sa))["status"] == "success"
    await call(c, "DELETE", path, path_args=sa, expect=404)

    # a restore that cannot start leaves the VM named as it was
    named = (await s.rt.vms.get(other, _owner(s))).name
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/backup", path_args={"instance_id": other})
    refused = await call(c, "POST", "/api/v1/backups/restore", params={"volid": r["volid"], "target_vm_uuid": other, "new_name": "bk-renamed"}, expect=400)
    assert refused["error"] == "invalid_backup"  # the backup is still being taken
    assert (await s.rt.vms.get(other, _owner(s))).name == named
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"


async def test_stats_and_console(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    uuid, _ = await launch(c, name="st-1")
    a = {"instance_id": uuid}
    st = await call(c, "GET", "/api/v1/instances/{instance_id}/stats", path_args=a)
    assert st == {
        "instance_id": uuid, "status": "running", "cpu": {"usage_percent": 50.0, "cores": 2},
        "memory": {"used_bytes": 2048 << 20, "total_bytes": 8192 << 20, "usage_percent": 25.0},
        "disk": {"read_bytes_sec": 10, "write_bytes_sec": 20}, "network": {"in_bytes_sec": 30, "out_bytes_sec": 40}, "uptime_seconds": 12,
    }  # fmt: skip
    t = await call(c, "POST", "/api/v1/instances/{instance_id}/console", path_args=a)
    assert t["instance_id"] == uuid and t["host"] == "127.0.0.1" and t["port"] == s.port and t["type"] == "serial"
    assert t["websocket_path"] == f"{P}/api/v1/instances/{uuid}/console/ws"
    import calendar
    import time as _time

    expires = calendar.timegm(_time.strptime(t["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert 25 <= expires - _time.time() <= 31
    url = f"ws://127.0.0.1:{s.port}{t['websocket_path']}?ticket={t['ticket']}"
    async with websockets.connect(url) as ws:
        await ws.send(b"hello\n")
        got = b""
        while b"hello" not in got:
            got += await ws.recv()  # type: ignore[operator]
    with pytest.raises(websockets.exceptions.InvalidStatus) as denied:  # good once
        async with websockets.connect(url):
            pass
    assert denied.value.response.status_code == 404
    with pytest.raises(websockets.exceptions.InvalidStatus) as denied:
        async with websockets.connect(f"ws://127.0.0.1:{s.port}{t['websocket_path']}"):
            pass
    assert denied.value.response.status_code == 400

    # a stopped instance: zeros, and no console
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/force-shutdown", path_args=a)
    await wait_task(c, r["task_id"])
    st = await call(c, "GET", "/api/v1/instances/{instance_id}/stats", path_args=a)
    assert st["status"] == "stopped" and st["cpu"]["usage_percent"] == 0.0 and st["uptime_seconds"] == 0
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/console", path_args=a, expect=400)
    assert r == {"error": "invalid_state", "message": "Instance must be running to access console"}
    nf = {"instance_id": "3f2b1c4d-0000-4000-8000-000000000000"}
    await call(c, "GET", "/api/v1/instances/{instance_id}/stats", path_args=nf, expect=404)
    await call(c, "POST", "/api/v1/instances/{instance_id}/console", path_args=nf, expect=404)


async def test_billing_log(bl: tuple[Server, httpx.AsyncClient]) -> None:
    import time as _time

    s, c = bl
    kept, _ = await launch(c, name="bill-1")  # v1_cpu_small: 3 cents an hour
    gone, _ = await launch(c, instance_type="v1_cpu_medium", name="bill-2")
    await call(c, "DELETE", "/api/v1/instances/{instance_id}", path_args={"instance_id": gone})
    now = _time.time()

    def iso(t: float) -> str:
        return _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime(t))

    log = await call(c, "POST", "/api/v1/instances/log", json={"start_time": iso(now - 3600), "end_time": iso(now + 60)})
    assert log["total_records"] == 2 and log["time_range"] == {"start": iso(now - 3600), "end": iso(now + 60)}
    by_name = {r["name"]: r for r in log["instances"]}
    k, g = by_name["bill-1"], by_name["bill-2"]
    assert k["uuid"] == kept and k["status"] == "rented" and k["host_id"] == "px1" and k["instance_type"] == "v1_cpu_small"
    assert (k["cpu_cores"], k["memory_gb"], k["disk_gb"], k["price_cents_per_hour"]) == (2, 8, 80, 3)
    # whole cents: a few seconds at 3 cents an hour bill one cent (partial cents round up)
    assert 0 <= k["total_hours_billed"] < 0.1 and k["total_billed_cents"] == 1 and isinstance(k["price_cents_per_hour"], int)
    assert g["status"] == "deleted" and g["deleted_at"] == g["last_billed_at"] and g["price_cents_per_hour"] == 6
    # the same metering on the native API
    usage = (await s.client.get("/api/v1/usage", params={"start": iso(now - 3600), "end": iso(now + 60)})).json()
    assert {i["name"] for i in usage["items"]} == {"bill-1", "bill-2"}

    too_long = {"start_time": iso(now - 91 * 86400), "end_time": iso(now)}
    r = await call(c, "POST", "/api/v1/instances/log", json=too_long, expect=422)
    assert r == {"error": "invalid_time_range", "message": "Maximum time range is 90 days"}  # the contract's body
    r = await call(c, "POST", "/api/v1/instances/log", json={"start_time": iso(now), "end_time": iso(now - 60)}, expect=422)
    assert r["error"] == "invalid_time_range"
    r = await call(c, "POST", "/api/v1/instances/log", json={"start_time": "yesterday", "end_time": iso(now)}, expect=422)
    assert r["error"] == "invalid_time_range" and "start_time" in r["message"]
    assert (await call(c, "POST", "/api/v1/instances/log", json={"start_time": iso(now - 7200), "end_time": iso(now - 3600)}))["instances"] == []


async def test_teams_assign_remove_list(bl: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bl
    vm, _ = await launch(c, name="tm-1")
    a = {"instance_id": vm}
    team = (await s.client.post("/api/v1/teams", json={"name": "green"})).json()
    for user, role in (("gil", "member"), ("ada", "admin")):
        assert (await s.client.post("/api/v1/users", json={"name": user, "role": role})).status_code == 201
    team_key = (await s.client.post("/api/v1/api-keys", json={"name": "t", "userId": "gil", "teamId": "green"})).json()["key"]
    member_key = (await s.client.post("/api/v1/api-keys", json={"name": "m", "userId": "gil"})).json()["key"]
    admin_key = (await s.client.post("/api/v1/api-keys", json={"name": "a", "userId": "ada"})).json()["key"]
    tc, mc, ac = (httpx.AsyncClient(base_url=s.url + P, headers={"X-API-Key": k}, timeout=30) for k in (team_key, member_key, admin_key))
    try:
        path = "/api/v1/instances/{instance_id}/team"
        assert await call(tc, "GET", "/api/v1/instances") == []
        # members cannot move VMs between teams; admins and owners can
        assert (await call(mc, "PUT", path, path_args=a, json={"team_id": "green"}, expect=403))["error"] == "forbidden"
        r = await call(ac, "PUT", path, path_args=a, json={"team_id": "green"})
        assert r == {"status": "success", "message": "Instance assigned to team", "instance_id": vm, "team_id": team["id"], "team_name": "green"}
        assert [v["uuid"] for v in await call(tc, "GET", "/api/v1/instances")] == [vm]  # the team's key sees it now
        details = await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a)
        assert (details["team_id"], details["team_name"]) == (team["id"], "green")
        listed = await call(tc, "GET", "/api/v1/teams/{team_id}/instances", path_args={"team_id": team["id"]})
        assert listed["team_name"] == "green" and [v["uuid"] for v in listed["instances"]] == [vm] and listed["total"] == 1
        assert (await call(c, "GET", "/api/v1/teams/{team_id}/instances", path_args={"team_id": "green"}))["total"] == 1
        # a team key cannot move VMs, nor see another team
        await call(tc, "DELETE", path, path_args=a, expect=403)
        (await s.client.post("/api/v1/teams", json={"name": "red"})).json()
        await call(tc, "GET", "/api/v1/teams/{team_id}/instances", path_args={"team_id": "red"}, expect=403)
        assert (await call(c, "GET", "/api/v1/teams/{team_id}/instances", path_args={"team_id": "team-nope"}, expect=404))["error"] == "team_not_found"
        assert (await call(c, "PUT", path, path_args=a, json={"team_id": "team-nope"}, expect=404))["error"] == "team_not_found"
        await call(c, "PUT", path, path_args=a, json={}, expect=422)
        r = await call(c, "DELETE", path, path_args=a)
        assert r["message"] == "Instance removed from team" and r["team_id"] is None
        assert await call(tc, "GET", "/api/v1/instances") == []
        assert (await call(c, "GET", "/api/v1/teams/{team_id}/instances", path_args={"team_id": "green"}))["instances"] == []
        nf = {"instance_id": "3f2b1c4d-0000-4000-8000-000000000000"}
        await call(c, "PUT", path, path_args=nf, json={"team_id": "green"}, expect=404)
        await call(c, "DELETE", path, path_args=nf, expect=404)
        # the native API moves VMs too
        r = await s.client.put(f"/api/v1/vms/{vm}/team", json={"teamId": "green"})
        assert r.status_code == 200, r.text
        assert (await call(c, "GET", "/api/v1/instances/{instance_id}", path_args=a))["team_name"] == "green"
        assert (await s.client_with(member_key).put(f"/api/v1/vms/{vm}/team", json={"teamId": None})).status_code == 403
    finally:
        for client in (tc, mc, ac):
            await client.aclose()


async def test_launch_from_an_iso_url(bl: tuple[Server, httpx.AsyncClient], tmp_path: Path) -> None:
    """`iso_url` becomes an ISO of the account's library, fetched by the core through the
    outbound policy; the instance boots it from its CD-ROM on a blank disk (its create waits for
    the download). A second launch from the same URL uses the same ISO."""
    import functools
    import http.server
    import threading

    from ..iso_support import small_iso

    s, c = bl
    www = tmp_path / "www"
    www.mkdir()
    small_iso(www / "steamos.iso")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/steamos.iso"
    try:
        uuid, task = await launch(c, name="installer", iso_url=url)
        assert task["status"] == "COMPLETED", task
        custom = {"name": "custom-iso", "instance_type": "v1_cpu_small", "host": "px1", "cores": 1, "memory": 8, "disk_size": 40,
                  "gpu_count": 0, "username": "ubuntu", "iso_url": url}  # fmt: skip
        out = await call(c, "POST", "/api/v1/instances/launch-custom", json=custom)
        assert (await wait_task(c, out["task_id"]))["status"] == "COMPLETED"
    finally:
        httpd.shutdown()
    isos = (await s.client.get("/api/v1/isos")).json()["items"]
    assert len(isos) == 1 and isos[0]["sourceUrl"] == url and isos[0]["status"] == "ready", isos
    for ref in (uuid, out["vm_uuid"]):
        vm = (await s.client.get(f"/api/v1/vms/{ref}")).json()
        assert vm["blank"] is True and vm["cdrom"] == {"isoId": isos[0]["id"]}, vm
