"""The HyperSDK face on sim nodes, as HyperSDK's clients use it: every example request of
hypersdk-api.md gets an answer of the documented shape, and the answers carry what HyperSDK's
published Python client requires (PEERS.md). Imports from a vCenter that refuses connections
fail at `connecting`: enough for the shapes, the webhook and the WebSocket; the e2e test
(tests/e2e/test_qemu_hypersdk.py) imports an OVA into a running guest."""

import asyncio
import json
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import websockets

from ..support import Server, free_port, new_pg_database
from ..support_hypersdk import DaemonClient, P, Receiver, check_client_job, check_client_status, doc_job
from .test_faces import serve_face
from .test_tenancy import key_for


@pytest.fixture
async def receiver() -> Any:
    r = await Receiver().start()
    yield r
    await r.stop()


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


async def wait_status(c: httpx.AsyncClient, job_id: str, statuses: tuple[str, ...], timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = (await c.get(f"{P}/jobs/{job_id}")).json()
        if job["status"] in statuses:
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.1)


def is_error(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"] and "timestamp" in body


async def test_every_example_of_the_document_gets_its_documented_shape(server: Server, receiver: Receiver) -> None:
    c = server.client
    assert (await c.get(f"{P}/health")).json()["status"] == "ok"
    status = (await c.get(f"{P}/status")).json()
    assert {"total_jobs", "running_jobs", "completed_jobs", "failed_jobs", "worker_count", "active_workers"} <= set(status)
    check_client_status(status)

    # POST /jobs/submit: 201 {job_id, message} (and the daemon's job_ids, accepted)
    r = await c.post(f"{P}/jobs/submit", json=doc_job(closed_port()))
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["message"] == "job submitted successfully" and sub["job_ids"] == [sub["job_id"]] and sub["accepted"] == 1 and sub["rejected"] == 0
    assert "br0" in sub["warnings"][0]  # a libvirt bridge is no vmplane network: the NIC goes to the default one
    job_id = sub["job_id"]

    # GET /jobs/{id}: definition/status/progress; the vCenter refuses, so it fails at connecting
    job = await wait_status(c, job_id, ("failed",))
    check_client_job(job)
    assert job["definition"]["id"] == job_id and job["definition"]["vm_path"] == "Datacenter/vm/production/web-server-1"
    assert job["progress"]["stage"] == job["progress"]["phase"] == "connecting" and job["error"]
    assert job["definition"]["vcenter_url"].startswith("127.0.0.1:") and job["definition"]["username"] == "admin@vsphere.local"

    # POST /jobs/query with the document's body, and the client's GET ?all=true
    r = await c.post(f"{P}/jobs/query", json={"all": True, "status": "running", "limit": 10})
    assert r.status_code == 200 and r.json()["jobs"] == [] and r.json()["total"] == 0
    q = (await c.post(f"{P}/jobs/query", json={"all": True})).json()
    assert [j["definition"]["id"] for j in q["jobs"]] == [job_id] and q["total"] == 1 and q["timestamp"]
    q = (await c.get(f"{P}/jobs/query", params={"all": "true"})).json()
    assert [j["definition"]["id"] for j in q["jobs"]] == [job_id]
    q = (await c.post(f"{P}/jobs/query", json={"job_ids": [job_id], "status": ["failed"]})).json()
    assert q["total"] == 1
    check_client_job(q["jobs"][0])
    assert (await c.get(f"{P}/jobs/progress/{job_id}")).json()["phase"] == "connecting"
    assert (await c.get(f"{P}/jobs/logs/{job_id}")).headers["content-type"].startswith("text/plain")

    # POST /jobs/cancel with the document's body: the client's shape and the document's
    r = await c.post(f"{P}/jobs/cancel", json={"job_ids": [job_id], "status": "running"})
    body = r.json()
    assert r.status_code == 200 and body["cancelled"] == [] and body["failed"] == [job_id] and "ended" in body["errors"][job_id]
    assert body["count"] == 0 and body["message"]
    is_error(await c.get(f"{P}/jobs/imp-nope"), 404)

    # schedules: create, list, get, update, enable, disable, stats, delete
    template = doc_job(closed_port())
    r = await c.post(f"{P}/schedules", json={"id": "daily-backup", "name": "Daily VM Backup", "description": "Backup production VMs every night",
                                              "schedule": "0 2 * * *", "enabled": True, "job_template": template})  # fmt: skip
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["message"] == "schedule created successfully" and created["schedule"]["id"] == "daily-backup"
    assert "password" not in json.dumps(created)
    is_error(await c.post(f"{P}/schedules", json={"id": "daily-backup", "schedule": "0 2 * * *", "job_template": template}), 409)
    is_error(await c.post(f"{P}/schedules", json={"id": "bad", "schedule": "not cron", "job_template": template}), 400)
    listing = (await c.get(f"{P}/schedules")).json()
    assert listing["total"] == 1 and listing["timestamp"]
    s = listing["schedules"][0]
    assert s["id"] == "daily-backup" and s["schedule"] == "0 2 * * *" and s["enabled"] is True and s["run_count"] == 0
    assert s["job_template"]["vm_path"] == template["vm_path"] and s["next_run"].endswith("02:00:00Z") and s["last_run"] is None
    got = (await c.get(f"{P}/schedules/daily-backup")).json()
    assert {"id", "name", "schedule", "enabled", "last_run", "next_run"} <= set(got)
    r = await c.put(f"{P}/schedules/daily-backup", json={"name": "Updated Name", "schedule": "0 3 * * *", "enabled": True})
    assert r.status_code == 200 and r.json()["message"] == "schedule updated successfully"
    assert (await c.get(f"{P}/schedules/daily-backup")).json()["schedule"] == "0 3 * * *"
    assert (await c.post(f"{P}/schedules/daily-backup/disable")).json()["message"] == "schedule disabled successfully"
    assert (await c.get(f"{P}/schedules/daily-backup")).json()["next_run"] is None
    assert (await c.post(f"{P}/schedules/daily-backup/enable")).json()["message"] == "schedule enabled successfully"
    stats = (await c.get(f"{P}/schedules/stats")).json()
    assert stats["total_schedules"] == 1 and stats["enabled_schedules"] == 1 and stats["disabled_schedules"] == 0
    assert {"total_runs", "successful_runs", "failed_runs"} <= set(stats)
    is_error(await c.get(f"{P}/schedules/nope"), 404)
    assert (await c.delete(f"{P}/schedules/daily-backup")).json()["message"] == "schedule deleted successfully"
    assert (await c.get(f"{P}/schedules")).json()["total"] == 0

    # webhooks: add, list, test, delete by index
    hook = {"url": receiver.url, "events": ["job.completed", "job.failed"], "enabled": True, "timeout": 30, "retry_count": 3,
            "headers": {"Authorization": "Bearer token123"}}  # fmt: skip
    r = await c.post(f"{P}/webhooks", json=hook)
    assert r.status_code == 201 and r.json()["message"] == "webhook added successfully" and r.json()["webhook"]["url"] == receiver.url
    listing = (await c.get(f"{P}/webhooks")).json()
    assert listing["total"] == 1 and {"url", "events", "enabled", "timeout", "retry_count"} <= set(listing["webhooks"][0])
    assert '"timeout":30,' in r.text and '"timeout":30,' in (await c.get(f"{P}/webhooks")).text  # an integer, as a Go client's int field needs
    is_error(await c.post(f"{P}/webhooks", json={**hook, "timeout": 2.5}), 400)  # whole seconds only: it could not be shown as the int it is
    assert isinstance(status["uptime_seconds"], int) and isinstance(status["worker_count"], int)
    r = await c.post(f"{P}/webhooks/test", json={"url": receiver.url, "event": "test"})
    assert r.status_code == 200 and r.json()["message"] == "test webhook sent"
    test = await receiver.wait_for("test")
    assert test["headers"]["user-agent"] == "HyperSDK-Webhook/1.0" and set(test["body"]) == {"event", "timestamp", "data"}
    is_error(await c.post(f"{P}/webhooks/test", json={"url": f"http://{closed_port()}/x"}), 400)
    is_error(await c.delete(f"{P}/webhooks/1"), 404)
    is_error(await c.delete(f"{P}/webhooks/first"), 400)
    assert (await c.delete(f"{P}/webhooks/0")).json()["message"] == "webhook deleted successfully"
    assert (await c.get(f"{P}/webhooks")).json()["webhooks"] == []

    # VM discovery with the document's query parameters: a vCenter that refuses is a clear 4xx/502
    r = await c.get(f"{P}/vms/list", params={"vcenter_url": closed_port(), "username": "u", "password": "p"})
    assert r.status_code in (400, 502) and r.json()["error"]
    is_error(await c.post(f"{P}/vms/shutdown", json={"vcenter_url": closed_port(), "username": "u", "password": "p"}), 400)  # no vm_path
    is_error(await c.get(f"{P}/vms/list"), 400)  # no vCenter named

    # errors: the document's {error}, 404 and 405 included; credentials as on every face
    is_error(await c.get(f"{P}/no/such/thing"), 404)
    r = await c.delete(f"{P}/jobs/submit")
    is_error(r, 405)
    assert r.headers["allow"] == "POST"
    async with httpx.AsyncClient(base_url=server.url) as anon:
        assert (await anon.get(f"{P}/health")).status_code == 200
        is_error(await anon.get(f"{P}/status"), 401)


async def test_submit_takes_one_an_array_jobs_and_yaml_and_says_what_it_refused(server: Server) -> None:
    c = server.client
    one = doc_job(closed_port(), "DC/vm/a")
    r = await c.post(f"{P}/jobs/submit", json=[one, {**doc_job(closed_port(), "DC/vm/b"), "name": "b-vm"}])
    assert r.status_code == 201 and r.json()["accepted"] == 2 and len(r.json()["job_ids"]) == 2
    r = await c.post(f"{P}/jobs/submit", json={"jobs": [one, {"name": "no-path", "vcenter_url": closed_port()}]})
    body = r.json()
    assert r.status_code == 201 and body["accepted"] == 1 and body["rejected"] == 1 and "jobs[1].vm_path" in body["errors"][0]
    yaml_body = f"""
vm_path: DC/vm/from-yaml
name: from-yaml
vcenter:
  server: {closed_port()}
  username: admin
  password: secret
  insecure: true
format: ova
export_method: govc
"""
    r = await c.post(f"{P}/jobs/submit", content=yaml_body, headers={"content-type": "application/yaml"})
    assert r.status_code == 201, r.text
    job = (await c.get(f"{P}/jobs/{r.json()['job_id']}")).json()
    check_client_job(job)
    assert job["definition"]["name"] == "from-yaml" and job["definition"]["insecure"] is True
    # the client's JobDefinition.to_dict(), other sources as a superset, and refusals naming the field
    r = await c.post(f"{P}/jobs/submit", json={"vm_path": "/Datacenter/vm/my-vm", "output_dir": "/exports", "format": "ovf", "export_method": "",
                                               "compress": False, "thin": False, "insecure": False, "vcenter_url": closed_port(), "username": "u"})
    assert r.status_code == 201, r.text
    r = await c.post(f"{P}/jobs/submit", json={"vm_path": "x", "source": {"type": "ova", "path": "/etc/passwd"}})
    assert r.status_code == 400 and r.json()["accepted"] == 0 and "source.path" in r.json()["error"]
    for bad in ("not json", "[1, 2]", '{"vm_path": 5}', '{"jobs": []}', "a: *b"):
        r = await c.post(f"{P}/jobs/submit", content=bad, headers={"content-type": "application/json" if bad.startswith(("[", "{")) else "text/plain"})
        is_error(r, 400)
    r = await c.post(f"{P}/jobs/submit", json={"vm_path": "x", "source": {"type": "ftp"}})
    is_error(r, 400)
    assert "source.type" in r.json()["error"]
    status = (await c.get(f"{P}/status")).json()
    assert status["total_jobs"] == 5


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_job_reads_back_the_definition_it_was_submitted_with(server_factory: Any, receiver: Receiver, backend: str) -> None:
    server = await server_factory(**({"database_url": await new_pg_database()} if backend == "postgresql" else {}))
    c = server.client
    await c.post(f"{P}/webhooks", json={"url": receiver.url, "events": ["job.submitted"]})
    sent = {
        "name": "Bar VM", "vm_path": "Datacenter/vm/bar-vm",
        "source": {"type": "ova", "url": f"http://{closed_port()}/bar.ova", "password": "never-shown"},
        "destination": {"type": "kvm", "libvirt_uri": "qemu:///system"}, "output_dir": "/exports", "format": "ova", "compress": True,
        "options": {"conversion_method": "vddk", "network_mapping": {"VM Network": "br0"}, "remove_cdrom": True},
    }  # fmt: skip
    r = await c.post(f"{P}/jobs/submit", json=sent)
    assert r.status_code == 201, r.text
    job_id = r.json()["job_id"]
    job = await wait_status(c, job_id, ("failed",))  # nothing listens at the OVA's URL
    query = (await c.post(f"{P}/jobs/query", json={"job_ids": [job_id]})).json()["jobs"][0]
    for d in (job["definition"], query["definition"]):
        assert d["id"] == job_id and d["vm_path"] == "Datacenter/vm/bar-vm" and d["name"] == "Bar VM"
        assert d["options"]["network_mapping"] == {"VM Network": "br0"} and d["options"]["conversion_method"] == "vddk"
        assert d["options"]["remove_cdrom"] is True and d["options"]["start"] is True  # what vmplane applied, beside
        assert d["destination"] == sent["destination"] and d["output_dir"] == "/exports" and d["format"] == "ova" and d["compress"] is True
        assert d["source"] == {"type": "ova", "url": sent["source"]["url"]}  # as sent, its password left out
        assert d["vmplane_source"] == {"type": "ova", "url": sent["source"]["url"]} and d["created_at"]
    check_client_job(job)
    native = (await c.get(f"/api/v1/imports/{job_id}")).json()
    assert native["origin"]["vm_path"] == "Datacenter/vm/bar-vm" and native["name"] == "bar-vm"  # the VM's name, made valid
    assert "never-shown" not in json.dumps(native)
    submitted = await receiver.wait_for("job.submitted")
    assert submitted["body"]["data"]["vm_path"] == "Datacenter/vm/bar-vm" and submitted["body"]["data"]["job_name"] == "Bar VM"
    # a value HyperSDK's client would refuse is vmplane's instead; a definition too large to keep is refused naming it
    r = await c.post(f"{P}/jobs/submit", json={**sent, "format": "vmx", "export_method": "nfc"})
    d = (await c.get(f"{P}/jobs/{r.json()['job_id']}")).json()["definition"]
    assert d["format"] == "ova" and d["export_method"] == ""
    r = await c.post(f"{P}/jobs/submit", json={**sent, "notes": "x" * 20000})
    is_error(r, 400)
    assert "job definition cannot be kept as sent" in r.json()["error"] and "larger than 16384 bytes" in r.json()["error"]
    r = await c.post(f"{P}/jobs/submit", content=json.dumps({**sent, "ratio": float("nan")}), headers={"content-type": "application/json"})
    assert (await c.get(f"{P}/jobs/{r.json()['job_id']}")).json()["definition"]["ratio"] is None  # NaN is no JSON: read back as null


async def test_websocket_status_jobs_updates_and_ping(server: Server) -> None:
    c = server.client
    ws_url = server.url.replace("http", "ws") + f"{P}/ws"
    async with websockets.connect(ws_url, additional_headers={"X-API-Key": server.admin_key}) as ws:
        first = json.loads(await ws.recv())
        second = json.loads(await ws.recv())
        assert first["type"] == "status" and "total_jobs" in first["data"] and first["timestamp"]
        assert second["type"] == "jobs" and second["data"]["jobs"] == []
        r = await c.post(f"{P}/jobs/submit", json=doc_job(closed_port()))
        job_id = r.json()["job_id"]
        await ws.send(json.dumps({"type": "ping"}))
        seen: dict[str, list[Any]] = {"status": [], "job_update": [], "pong": []}
        deadline = asyncio.get_running_loop().time() + 20
        while not (seen["pong"] and seen["status"] and any(u["status"] == "failed" for u in seen["job_update"])):
            assert asyncio.get_running_loop().time() < deadline, seen
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            seen.setdefault(msg["type"], []).append(msg["data"])
        updates = [u for u in seen["job_update"] if u["definition"]["id"] == job_id]
        assert updates and updates[-1]["status"] == "failed"
        for u in updates:
            check_client_job(u)
    with pytest.raises(websockets.InvalidStatus):  # credentials as on HTTP
        async with websockets.connect(ws_url):
            pass


async def test_metrics_carry_the_documents_names_beside_vmplanes(server: Server) -> None:
    c = server.client
    await c.get(f"{P}/status")
    await c.post(f"{P}/jobs/submit", json=doc_job(closed_port()))
    text = (await c.get("/metrics")).text
    for name in ("hypersdk_api_requests_total", "hypersdk_api_request_duration_seconds_bucket", "hypersdk_jobs_total", "hypersdk_workers_active",
                 "hypersdk_build_info", "vmplane_jobs"):  # fmt: skip
        assert name in text, name
    assert 'hypersdk_api_requests_total{method="GET",path="/status",status="OK"} 1.0' in text
    assert 'hypersdk_api_requests_total{method="POST",path="/jobs/submit",status="Created"} 1.0' in text


async def test_metrics_under_the_faces_base_url_are_the_documents(server_factory: Any) -> None:
    server = await server_factory(metrics_token="scrape-" + "t" * 32)
    c = server.client
    await c.post(f"{P}/jobs/submit", json=doc_job(closed_port()))
    r = await c.get(f"{P}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    for name in ("hypersdk_api_requests_total", "hypersdk_api_request_duration_seconds_bucket", "hypersdk_jobs_total", "hypersdk_workers_active",
                 "hypersdk_build_info"):  # fmt: skip
        assert f"# TYPE {name.removesuffix('_bucket')}" in r.text, name
    assert 'hypersdk_api_requests_total{method="POST",path="/jobs/submit",status="Created"} 1.0' in r.text
    assert "vmplane_" not in r.text  # the document's metrics, not the installation's
    async with httpx.AsyncClient(base_url=server.url) as anon:  # who reads the root's /metrics reads it: the scrape token, operators
        assert "hypersdk_jobs_total" in (await anon.get(f"{P}/metrics", headers={"Authorization": "Bearer scrape-" + "t" * 32})).text
        is_error(await anon.get(f"{P}/metrics"), 401)
    member = server.client_with(await key_for(c, "mo", "member"))
    is_error(await member.get(f"{P}/metrics"), 403)
    face, task, url = await serve_face(server, "hypersdk")  # and at /metrics of the face's own listener
    try:
        r = await c.get(url + "/metrics")
        assert "hypersdk_jobs_total" in r.text and "vmplane_" not in r.text
    finally:
        face.should_exit = True
        await task


async def test_at_the_root_of_its_own_listener_as_the_python_client_builds_urls(server: Server) -> None:
    face, task, url = await serve_face(server, "hypersdk")
    try:
        base = url + "/api/v1/whatever"  # the client's urljoin(base_url, "/jobs/...") drops this path
        key = {"X-API-Key": server.admin_key}
        async with httpx.AsyncClient(headers=key) as c:
            r = await c.post(urljoin(base, "/jobs/submit"), json={"vm_path": "/Datacenter/vm/my-vm", "vcenter_url": closed_port(), "username": "u",
                                                                  "format": "ovf", "export_method": "", "compress": False, "thin": False, "insecure": False})  # fmt: skip
            assert r.status_code == 201 and r.json()["accepted"] == 1, r.text
            job_id = r.json()["job_ids"][0]
            check_client_job((await c.get(urljoin(base, f"/jobs/{job_id}"))).json())
            listed = (await c.get(urljoin(base, "/jobs/query"), params={"all": "true"})).json()["jobs"]
            assert [j["definition"]["id"] for j in listed] == [job_id]
            check_client_status((await c.get(urljoin(base, "/status"))).json())
            r = await c.post(urljoin(base, "/jobs/cancel"), json={"job_ids": [job_id]})
            assert set(r.json()) >= {"cancelled", "failed", "errors"}
            assert (await c.get(urljoin(base, "/health"))).json()["status"] == "ok"
            assert "hypersdk_jobs_total" in (await c.get(urljoin(base, "/metrics"))).text
        async with websockets.connect(url.replace("http", "ws") + "/ws", additional_headers=key) as ws:
            assert json.loads(await ws.recv())["type"] == "status"
    finally:
        face.should_exit = True
        await task


async def test_a_listener_acting_as_a_key_serves_the_documents_clients_without_one(server: Server) -> None:
    c = server.client
    key = await key_for(c, "daemon", "member")
    key_id = next(k["id"] for k in (await c.get("/api/v1/api-keys")).json()["items"] if k["name"] == "daemon key")
    face, task, url = await serve_face(server, "hypersdk", as_key=key)
    anon = DaemonClient(url + "/anything/the/client/had")  # no key at all, as the document's clients
    own = DaemonClient(url, api_key=server.admin_key)
    try:
        job_id = await anon.submit_job(doc_job(closed_port(), "DC/vm/keyless"))
        assert (await anon.get_job(job_id))["definition"]["vm_path"] == "DC/vm/keyless"
        assert [j["definition"]["id"] for j in await anon.list_jobs()] == [job_id]
        assert (await anon.status())["total_jobs"] == 1
        async with websockets.connect(url.replace("http", "ws") + "/ws") as ws:  # the WebSocket too
            assert json.loads(await ws.recv())["type"] == "status"
        # the identity middleware saw that key: its user made the import, the audit names the key
        assert (await c.get(f"/api/v1/imports/{job_id}")).json()["createdBy"] == "daemon"
        audit = (await c.get("/api/v1/audit", params={"limit": 100})).json()["items"]
        row = next(i for i in audit if i["route"] == "/compat/hypersdk/jobs/submit")
        assert row["actor"] == "daemon" and row["credential"] == key_id and row["status"] == 201
        # a request with credentials of its own is judged by those alone
        mine = await own.submit_job(doc_job(closed_port(), "DC/vm/owned"))
        assert (await c.get(f"/api/v1/imports/{mine}")).json()["createdBy"] == "admin"
        wrong = DaemonClient(url, api_key="vmp_" + "x" * 40)
        is_error(await wrong.http.get(wrong.url("/status")), 401)
        await wrong.aclose()
        # its role holds: revoke the key and the listener's keyless requests are refused
        assert (await c.delete(f"/api/v1/api-keys/{key_id}")).status_code in (200, 204)
        is_error(await anon.http.get(anon.url("/status")), 401)
    finally:
        await anon.aclose()
        await own.aclose()
        face.should_exit = True
        await task
    # the shared listener still asks every request for a key
    async with httpx.AsyncClient(base_url=server.url) as nokey:
        is_error(await nokey.get(f"{P}/status"), 401)


async def test_webhook_hears_of_import_jobs_in_hypersdks_format(server: Server, receiver: Receiver) -> None:
    c = server.client
    r = await c.post(f"{P}/webhooks", json={"url": receiver.url, "events": ["job_submitted", "job.failed"], "headers": {"Authorization": "Bearer t"}})
    assert r.status_code == 201 and r.json()["webhook"]["events"] == ["job.submitted", "job.failed"]
    await server.create({"name": "not-an-import"})  # a job that is no import: not for this receiver
    job_id = (await c.post(f"{P}/jobs/submit", json=doc_job(closed_port(), "DC/vm/web-7"))).json()["job_id"]
    failed = await receiver.wait_for("job.failed")
    submitted = await receiver.wait_for("job.submitted")
    assert failed["headers"]["user-agent"] == "HyperSDK-Webhook/1.0" and failed["headers"]["authorization"] == "Bearer t"
    for delivery in (submitted, failed):
        body = delivery["body"]
        assert set(body) == {"event", "timestamp", "data"}
        assert body["data"]["job_id"] == job_id and body["data"]["vm_path"] == "DC/vm/web-7" and body["data"]["job_name"] == "web-7"
    assert failed["body"]["data"]["status"] == "failed" and failed["body"]["data"]["error"]
    assert all(r["body"]["data"].get("job_id") == job_id for r in receiver.requests)


async def test_a_triggered_schedule_runs_an_import_and_says_so(server: Server, receiver: Receiver) -> None:
    c = server.client
    await c.post(f"{P}/webhooks", json={"url": receiver.url, "events": ["schedule.triggered", "schedule.completed", "schedule.failed"]})
    template = doc_job(closed_port(), "DC/vm/nightly")
    r = await c.post(f"{P}/schedules", json={"id": "nightly", "name": "Nightly", "schedule": "*/15 * * * *", "job_template": template, "tags": ["prod"]})
    assert r.status_code == 201, r.text
    row = await server.rt.schedules.get(r.json()["vmplane_schedule_id"], await server.rt.tenancy.principal_for_key(server.admin_key))
    assert "password" not in json.dumps(row.job_template) and row.job_template["body"]["source"]["profile"].startswith("hypersdk-")  # sealed
    ws_url = server.url.replace("http", "ws") + f"{P}/ws"
    async with websockets.connect(ws_url, additional_headers={"X-API-Key": server.admin_key}) as ws:
        r = await c.post(f"{P}/schedules/nightly/trigger")
        assert r.status_code == 200 and r.json()["message"] == "schedule triggered successfully", r.text
        job_id = r.json()["job_id"]
        assert job_id.startswith("imp-")
        job = (await c.get(f"{P}/jobs/{job_id}")).json()
        assert job["definition"]["vm_path"] == "DC/vm/nightly" and job["definition"]["profile"].startswith("hypersdk-")
        assert job["definition"]["options"]["network_mapping"] == {"VM Network": "br0"}  # the template as given
        events = []
        deadline = asyncio.get_running_loop().time() + 30
        while "failed" not in events:  # the vCenter refuses: the scheduled job fails
            assert asyncio.get_running_loop().time() < deadline, events
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg["type"] == "schedule_event":
                assert msg["data"]["schedule_id"] == "nightly"
                events.append(msg["data"]["event"])
        assert events[0] == "triggered"
    triggered = await receiver.wait_for("schedule.triggered")
    assert triggered["headers"]["user-agent"] == "HyperSDK-Webhook/1.0" and triggered["body"]["data"]["schedule_id"] == "nightly"
    failed = await receiver.wait_for("schedule.failed")
    assert failed["body"]["data"]["job_id"] == job_id
    s = (await c.get(f"{P}/schedules/nightly")).json()
    assert s["run_count"] == 1 and s["last_run"] and s["tags"] == ["prod"]
    stats = (await c.get(f"{P}/schedules/stats")).json()
    assert stats["total_runs"] == 1 and stats["failed_runs"] == 1
