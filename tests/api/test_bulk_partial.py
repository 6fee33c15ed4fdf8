"""Bulk deletes as the cluster contract models them: one task per resource, a `partial` job.

A VM or template the caller cannot see (missing, another organization's or team's) or may
not delete now gets a task failed at submission with the 404's (or 409's) sentence; the
others are deleted. The list itself (empty, too long, a resource twice) stays a 400.
"""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from vmplane.store.tables import vms as vms_table

from ..cli.test_cli import cli
from ..support import Server, new_pg_database
from .test_events import collect, sse_events
from .test_tenancy import key_for, new_org


async def _delete(client: Any, path: str, body: dict[str, Any]) -> Any:
    return await client.request("DELETE", path, json=body)


async def _job(server: Server, job_id: str, client: Any = None) -> dict[str, Any]:
    return (await (client or server.client).get(f"/api/v1/jobs/{job_id}")).json()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_known_and_unknown_vms_delete_the_known_and_end_partial(server_factory: Any, backend: str) -> None:
    server = await server_factory(**({"database_url": await new_pg_database()} if backend == "postgresql" else {}))
    c = server.client
    job = await server.create([{"name": "keep-going-1"}, {"name": "keep-going-2"}])
    a, b = (t["resourceId"] for t in job["tasks"])
    b_uuid = (await c.get(f"/api/v1/vms/{b}")).json()["uuid"]
    r = await _delete(c, "/api/v1/vms", {"vmIds": [a, "vm-nope00000000", b_uuid]})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/api/v1/jobs/{r.json()['jobId']}"
    done = await server.wait_job(r.json()["jobId"])
    assert done["state"] == "partial" and done["progress"] == 100
    tasks = done["tasks"]
    assert [t["resourceId"] for t in tasks] == [a, "vm-nope00000000", b]  # in the order asked, ids as the VMs' own
    assert [t["state"] for t in tasks] == ["succeeded", "failed", "succeeded"]
    missing = (await c.get("/api/v1/vms/vm-nope00000000")).json()
    assert tasks[1]["error"] == missing["error"] == "VM vm-nope00000000 does not exist"  # the 404's own sentence
    assert tasks[1]["startedAt"] and tasks[1]["finishedAt"]
    detail = (await c.get(f"/api/v1/jobs/{done['id']}/tasks/{tasks[1]['id']}")).json()
    assert detail["log"][-1].endswith(": Error: VM vm-nope00000000 does not exist")
    assert (await c.get("/api/v1/vms")).json()["items"] == []
    cluster = (await c.get("/api/v1/cluster/resources")).json()
    assert cluster["cpuUsed"] == cluster["ramMbUsed"] == cluster["diskGbUsed"] == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_only_unknown_vms_answer_202_with_a_job_failed_at_once(server_factory: Any, backend: str) -> None:
    server = await server_factory(**({"database_url": await new_pg_database()} if backend == "postgresql" else {}))
    c = server.client
    await server.create({"name": "bystander"})
    r = await _delete(c, "/api/v1/vms", {"vmIds": ["vm-nope00000000", "no-such-name"]})
    assert r.status_code == 202, r.text
    job = await _job(server, r.json()["jobId"])  # no wait: nothing of it ever runs
    assert job["state"] == "failed" and job["finishedAt"] and job["type"] == "vm-delete"
    assert [(t["resourceId"], t["state"], t["error"]) for t in job["tasks"]] == [
        ("vm-nope00000000", "failed", "VM vm-nope00000000 does not exist"),
        ("no-such-name", "failed", "VM no-such-name does not exist"),
    ]
    assert [v["name"] for v in (await c.get("/api/v1/vms")).json()["items"]] == ["bystander"]
    listed = (await c.get("/api/v1/jobs", params={"type": "vm-delete"})).json()["items"]
    assert [(j["id"], j["state"]) for j in listed] == [(job["id"], "failed")]
    # watchers hear of it as of any job: submitted, then failed (webhooks see the same events)
    job_events = await collect(sse_events(c, {"since": "0", "resource": job["id"]}), 2)
    assert [e["event"] for e in job_events] == ["job.submitted", "job.failed"]
    task_events = await collect(sse_events(c, {"since": "0", "resource": "no-such-name"}), 1)
    assert task_events[0]["event"] == "task.failed" and task_events[0]["data"]["data"]["error"] == "VM no-such-name does not exist"


async def test_another_organizations_or_teams_vm_fails_as_a_missing_one(server: Server) -> None:
    c = server.client
    theirs = (await server.create({"name": "not-yours"}))["tasks"][0]["resourceId"]
    _org, b = await new_org(server)
    r = await b.post("/api/v1/vms", json={"name": "mine"})
    mine = r.json()["vmIds"][0]
    await server.wait_job(r.json()["jobId"], client=b)
    r = await _delete(b, "/api/v1/vms", {"vmIds": [mine, theirs, "vm-nope00000000"]})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], client=b)
    assert job["state"] == "partial"
    errors = [t["error"] for t in job["tasks"]]
    assert errors == [None, f"VM {theirs} does not exist", "VM vm-nope00000000 does not exist"]  # no tell between the two
    assert (await c.get(f"/api/v1/vms/{theirs}")).json()["status"] == "running"
    assert (await c.get(f"/api/v1/jobs/{job['id']}")).status_code == 404  # B's job, not A's
    await b.aclose()

    # a team-scoped key: another team's VM is unknown too, and the job stays the caller's team's
    assert (await c.post("/api/v1/teams", json={"name": "red"})).status_code == 201
    red = server.client_with(await key_for(c, "rudy", "member", teamId="red"))
    r = await _delete(red, "/api/v1/vms", {"vmIds": [theirs]})
    assert r.status_code == 202, r.text
    job = await _job(server, r.json()["jobId"], red)
    assert job["state"] == "failed" and job["tasks"][0]["error"] == f"VM {theirs} does not exist"
    assert (await c.get(f"/api/v1/vms/{theirs}")).json()["status"] == "running"
    await red.aclose()


async def test_a_vm_already_being_deleted_fails_its_task_only(server: Server) -> None:
    c = server.client
    job = await server.create([{"name": "going"}, {"name": "also-going"}])
    busy, other = (t["resourceId"] for t in job["tasks"])
    async with server.rt.store.write() as conn:  # as while another delete of it runs
        await conn.execute(update(vms_table).where(vms_table.c.id == busy).values(status="deleting"))
    r = await _delete(c, "/api/v1/vms", {"vmIds": [busy, other]})
    assert r.status_code == 202, r.text
    done = await server.wait_job(r.json()["jobId"])
    assert done["state"] == "partial"
    assert [(t["resourceId"], t["state"]) for t in done["tasks"]] == [(busy, "failed"), (other, "succeeded")]
    assert done["tasks"][0]["error"] == f"VM {busy} is already being deleted"
    # the one-VM path still answers 409, as before
    r = await c.delete(f"/api/v1/vms/{busy}")
    assert r.status_code == 409 and r.json()["code"] == "invalid_state"


async def test_bad_lists_are_400_and_delete_nothing(server_factory: Any) -> None:
    server = await server_factory(max_bulk=3)
    c = server.client
    job = await server.create([{"name": f"stay-{i}"} for i in range(2)])
    a, b = (t["resourceId"] for t in job["tasks"])
    a_uuid = (await c.get(f"/api/v1/vms/{a}")).json()["uuid"]
    cases = [
        ({"vmIds": []}, "vmIds"),
        ({"vmIds": [a, a]}, "vmIds"),
        ({"vmIds": [a, a_uuid]}, "vmIds"),  # one VM by its id and by its uuid
        ({"vmIds": [a, b, "x", "y"]}, "vmIds"),  # over VMPLANE_MAX_BULK
        ({"vmIds": [a, "x" * 65]}, "vmIds[1]"),
        ({"vmIds": [a, ""]}, "vmIds[1]"),
    ]
    for body, field in cases:
        r = await _delete(c, "/api/v1/vms", body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["details"]["field"] == field, (body, r.text)
    r = await _delete(c, "/api/v1/vms", {"vmIds": [a, b, "x", "y"]})
    assert "at most 3" in r.json()["error"]
    assert len((await c.get("/api/v1/vms")).json()["items"]) == 2
    assert (await c.get("/api/v1/jobs", params={"type": "vm-delete"})).json()["items"] == []


async def test_templates_bulk_delete_is_per_template(server: Server, tmp_path: Path) -> None:
    c = server.client
    img = tmp_path / "data" / "imports" / "t.img"  # where an organization's user may name local files
    img.parent.mkdir(parents=True, exist_ok=True)
    img.write_bytes(b"x" * 4096)
    made = {}
    for name in ("shared-one", "shared-two"):  # the bootstrap key is an operator's: shared templates
        r = await c.post("/api/v1/templates", json={"name": name, "sourceUrl": f"file://{img}"})
        assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
        made[name] = r.json()["templateId"]
    r = await _delete(c, "/api/v1/templates", {"templateIds": [made["shared-one"], "tpl-nothere", "shared-two"]})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "partial"
    assert [(t["resourceId"], t["state"], t["error"]) for t in job["tasks"]] == [
        (made["shared-one"], "succeeded", None),
        ("tpl-nothere", "failed", "template tpl-nothere does not exist"),
        (made["shared-two"], "succeeded", None),
    ]
    assert (await c.get(f"/api/v1/templates/{made['shared-one']}")).status_code == 404

    # another organization: its private template is one, another's is unknown, a shared one is refused
    r = await c.post("/api/v1/templates", json={"name": "shared-three", "sourceUrl": f"file://{img}"})
    await server.wait_job(r.json()["jobId"])
    shared = r.json()["templateId"]
    _org_b, b = await new_org(server, "bravo", "bob")
    _org_c, other = await new_org(server, "charlie", "carl")
    r = await other.post("/api/v1/templates", json={"name": "private", "sourceUrl": f"file://{img}"})
    await server.wait_job(r.json()["jobId"], client=other)
    theirs = r.json()["templateId"]
    r = await b.post("/api/v1/templates", json={"name": "private", "sourceUrl": f"file://{img}"})
    await server.wait_job(r.json()["jobId"], client=b)
    mine = r.json()["templateId"]
    r = await _delete(b, "/api/v1/templates", {"templateIds": ["private", theirs, shared]})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], client=b)
    assert job["state"] == "partial"
    assert [(t["resourceId"], t["state"]) for t in job["tasks"]] == [(mine, "succeeded"), (theirs, "failed"), (shared, "failed")]
    assert job["tasks"][1]["error"] == f"template {theirs} does not exist"
    assert "shared by the operators" in job["tasks"][2]["error"]
    assert (await other.get(f"/api/v1/templates/{theirs}")).status_code == 200
    assert (await c.get(f"/api/v1/templates/{shared}")).json()["status"] == "ready"
    for bad, field in (({"templateIds": []}, "templateIds"), ({"templateIds": [shared, shared]}, "templateIds")):
        r = await _delete(b, "/api/v1/templates", bad)
        assert r.status_code == 400 and r.json()["details"]["field"] == field, r.text
    await b.aclose()
    await other.aclose()


async def test_cli_delete_prints_each_vm_that_failed(server: Server) -> None:
    job = await server.create([{"name": "cli-a"}, {"name": "cli-b"}])
    code, out, err = await cli(server, "vm", "delete", "cli-a", "no-such-vm", "cli-b", "--force")
    assert code == 1, (out, err)
    assert "cli-a and cli-b deleted; no-such-vm failed" in out and "partial" in out and "no-such-vm: VM no-such-vm does not exist" in err
    assert (await server.client.get("/api/v1/vms")).json()["items"] == []
    assert {t["resourceId"] for t in job["tasks"]} <= {
        t["resourceId"] for j in (await server.client.get("/api/v1/jobs", params={"type": "vm-delete"})).json()["items"]
        for t in (await server.client.get(f"/api/v1/jobs/{j['id']}")).json()["tasks"]
    }  # fmt: skip
