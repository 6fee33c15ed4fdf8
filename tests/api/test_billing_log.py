"""The Blue Lobster billing log (`POST /api/v1/instances/log`) field by field as its contract
types it: `vmid` the VM's integer VMID (never reused), a deleted instance's row keeping the
uuid, host, address (address/prefix), disk and template a client saw, whole cents (partial
cents rounded up), and the documented `invalid_time_range` 422; and the same kept facts on the
native usage report."""

import ipaddress
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import update

from vmplane.store.tables import vm_usage

from ..support import Server
from .test_bluelobster import bl, call, launch  # noqa: F401  (bl is a fixture)

LOG = "/api/v1/instances/log"


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def last_hour() -> dict[str, str]:
    now = time.time()
    return {"start_time": iso(now - 3600), "end_time": iso(now + 60)}


async def native_vm(s: Server, uuid: str) -> dict[str, Any]:
    r = await s.client.get(f"/api/v1/vms/{uuid}")
    assert r.status_code == 200, r.text
    vm: dict[str, Any] = r.json()
    return vm


async def ubuntu_template(s: Server, tmp_path: Path) -> None:
    """A ready template the face lists as UBUNTU-22-04."""
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * 1024 * 1024)
    r = await s.client.post("/api/v1/templates", json={"os": "linux", "name": "ubuntu-22-04", "sourceUrl": f"file://{img}"})
    assert (await s.wait_job(r.json()["jobId"]))["state"] == "succeeded"


async def delete(c: httpx.AsyncClient, uuid: str) -> None:
    r = await call(c, "DELETE", "/api/v1/instances/{instance_id}", path_args={"instance_id": uuid})
    assert r["status"] == "success", r


async def log_rows(c: httpx.AsyncClient, period: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    log = await call(c, "POST", LOG, json=period or last_hour())
    return {r["name"]: r for r in log["instances"]}


async def test_a_deleted_instance_keeps_what_its_row_needs(bl: tuple[Server, httpx.AsyncClient], tmp_path: Path) -> None:  # noqa: F811
    s, c = bl
    await ubuntu_template(s, tmp_path)
    uuid, _ = await launch(c, name="gone-1", template_name="UBUNTU-22-04")
    seen = await native_vm(s, uuid)
    ip = seen["nics"][0]["ipAddresses"][0]
    kept, _ = await launch(c, name="kept-1")
    await delete(c, uuid)
    rows = await log_rows(c)
    g, k = rows["gone-1"], rows["kept-1"]
    # the row joins with the instance the client saw: its uuid, not the native id
    assert g["uuid"] == uuid and g["status"] == "deleted" and g["deleted_at"] is not None
    assert g["vmid"] == seen["vmid"] and isinstance(g["vmid"], int) and not isinstance(g["vmid"], bool)
    assert (g["host_id"], g["disk_gb"], g["template_name"], g["gpu_count"]) == ("px1", 80, "UBUNTU-22-04", 0)
    # CIDR notation, as the description promises: the address within its network
    assert g["ip_address"].split("/")[0] == ip and ipaddress.ip_interface(g["ip_address"]).network.prefixlen < 32
    assert g["created_at"] <= g["updated_at"] == g["deleted_at"] == g["last_billed_at"]
    # a live instance: the same shapes
    live = await native_vm(s, kept)
    assert k["uuid"] == kept and k["status"] == "rented" and k["deleted_at"] is None and k["vmid"] == live["vmid"] != g["vmid"]
    assert k["ip_address"] == f"{live['nics'][0]['ipAddresses'][0]}/{ipaddress.ip_interface(g['ip_address']).network.prefixlen}"
    for row in (g, k):
        assert isinstance(row["total_billed_cents"], int) and isinstance(row["price_cents_per_hour"], int)


async def test_vmid_is_not_reused_after_the_newest_instance_is_deleted(bl: tuple[Server, httpx.AsyncClient]) -> None:  # noqa: F811
    s, c = bl
    await launch(c, name="first-1")
    newest, _ = await launch(c, name="newest-1")
    newest_vmid = (await native_vm(s, newest))["vmid"]
    await delete(c, newest)
    after, _ = await launch(c, name="after-1")
    after_vmid = (await native_vm(s, after))["vmid"]
    assert after_vmid != newest_vmid and after_vmid > newest_vmid
    rows = await log_rows(c)
    assert rows["newest-1"]["vmid"] == newest_vmid and rows["after-1"]["vmid"] == after_vmid
    assert len({r["vmid"] for r in rows.values()}) == len(rows) == 3


async def test_whole_cents_round_partial_cents_up(bl: tuple[Server, httpx.AsyncClient]) -> None:  # noqa: F811
    """A deleted instance billed exactly 1.5 hours: at 3 cents an hour 4.5 cents are billed 5,
    at 6 cents 9; a core price with a fraction of a cent (vmplane's own pricing of a shape with
    no instance type: 1 vCPU and 512 MiB are 1.25 cents an hour) shows as the next whole cent
    and its cost rounds up once per instance."""
    s, c = bl
    small, _ = await launch(c, name="half-1")
    medium, _ = await launch(c, name="whole-1", instance_type="v1_cpu_medium")
    r = await s.client.post("/api/v1/vms", json={"name": "odd-1", "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
    assert r.status_code == 202, r.text
    await s.wait_job(r.json()["jobId"])
    odd = r.json()["vmIds"][0]
    await delete(c, small)
    await delete(c, medium)
    await delete(c, (await native_vm(s, odd))["uuid"])
    async with s.rt.store.write() as conn:  # each span: exactly 1.5 hours, ending when its VM was deleted
        for vm_id in (small, medium, odd):
            await conn.execute(update(vm_usage).where(vm_usage.c.vm_uuid == vm_id).values(start=vm_usage.c.end - 5400))
            await conn.execute(update(vm_usage).where(vm_usage.c.vm_id == vm_id).values(start=vm_usage.c.end - 5400))
    now = time.time()
    rows = await log_rows(c, {"start_time": iso(now - 4 * 3600), "end_time": iso(now + 60)})
    half, whole, frac = rows["half-1"], rows["whole-1"], rows["odd-1"]
    assert (half["total_hours_billed"], half["price_cents_per_hour"], half["total_billed_cents"]) == (1.5, 3, 5)
    assert (whole["total_hours_billed"], whole["price_cents_per_hour"], whole["total_billed_cents"]) == (1.5, 6, 9)
    assert (frac["total_hours_billed"], frac["price_cents_per_hour"], frac["total_billed_cents"]) == (1.5, 2, 2)  # 1.875 cents
    usage = (await s.client.get("/api/v1/usage", params={"start": iso(now - 4 * 3600), "end": iso(now + 60)})).json()
    by_name = {i["name"]: i for i in usage["items"]}
    assert by_name["odd-1"]["costCents"] == 1.88 and by_name["odd-1"]["billedCents"] == 2
    assert usage["totalBilledCents"] == 5 + 9 + 2


async def test_a_bad_range_is_the_documented_invalid_time_range(bl: tuple[Server, httpx.AsyncClient]) -> None:  # noqa: F811
    _, c = bl
    now = time.time()
    bad: list[tuple[Any, str]] = [
        ({"start_time": iso(now - 91 * 86400), "end_time": iso(now)}, "90 days"),
        ({"start_time": iso(now), "end_time": iso(now - 60)}, "start_time"),
        ({"start_time": iso(now), "end_time": iso(now)}, "start_time"),
        ({"start_time": "yesterday", "end_time": iso(now)}, "start_time"),
        ({"start_time": iso(now - 60), "end_time": "2026-13-45T99:00:00Z"}, "end_time"),
        ({"start_time": iso(now - 60)}, "end_time"),
        ([], "start_time and end_time"),
    ]
    for body, named in bad:
        r = await call(c, "POST", LOG, json=body, expect=422)
        assert set(r) == {"error", "message"} and r["error"] == "invalid_time_range" and named in r["message"], (body, r)
    r = await c.post(LOG, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_time_range"
    # exactly 90 days is allowed
    assert (await call(c, "POST", LOG, json={"start_time": iso(now - 90 * 86400), "end_time": iso(now)}))["total_records"] >= 0


async def test_native_usage_shows_the_kept_facts(bl: tuple[Server, httpx.AsyncClient], tmp_path: Path) -> None:  # noqa: F811
    s, c = bl
    await ubuntu_template(s, tmp_path)
    uuid, _ = await launch(c, name="native-1", template_name="UBUNTU-22-04")
    seen = await native_vm(s, uuid)
    await delete(c, uuid)
    usage = (await s.client.get("/api/v1/usage")).json()
    (item,) = [i for i in usage["items"] if i["name"] == "native-1"]
    assert item["vmId"] == seen["id"] and item["uuid"] == uuid and item["vmid"] == seen["vmid"] and item["status"] == "deleted"
    assert item["nodeId"] == seen["nodeId"] and item["ipAddress"].startswith(seen["nics"][0]["ipAddresses"][0] + "/")
    assert (item["diskGb"], item["templateName"], item["gpuCount"]) == (80, "ubuntu-22-04", 0)
    assert item["deletedAt"] is not None and isinstance(item["billedCents"], int) and item["billedCents"] >= 1


async def test_the_log_shows_the_name_the_client_last_gave(bl: tuple[Server, httpx.AsyncClient]) -> None:  # noqa: F811
    """A rename (with `_`, which the VM's own name cannot hold) shows in the log, while the
    instance lives and after it is gone."""
    _, c = bl
    uuid, _ = await launch(c, name="first-name")
    await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args={"instance_id": uuid}, json={"name": "second_name"})
    assert (await log_rows(c))["second_name"]["uuid"] == uuid
    await call(c, "PUT", "/api/v1/instances/{instance_id}/rename", path_args={"instance_id": uuid}, json={"name": "third-name"})
    await delete(c, uuid)
    rows = await log_rows(c)
    assert set(rows) == {"third-name"} and rows["third-name"]["uuid"] == uuid and rows["third-name"]["status"] == "deleted"
