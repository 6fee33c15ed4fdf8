"""The Blue Lobster face's shapes, field by field against the contract (issue 21): who started a
task and from where, launch-custom's answer, both readings of launch-instance's fields, the
team of PUT …/team, power actions and stats that answer only documented codes, and bodies
that cannot be read answering the documented 422."""

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..support import Server
from .test_bluelobster import KEY, OFFERINGS, P, call, launch, nodes, wait_task

KEY2 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIsecondkeysecondkeysecondkeysecondkey two@host"
INSTANCE = "/api/v1/instances/{instance_id}"
LAUNCH = "/api/v1/instances/launch-instance"


@pytest.fixture
async def bls(server_factory: Any, tmp_path: Path, database_url: str) -> AsyncIterator[tuple[Server, httpx.AsyncClient]]:
    """The Blue Lobster test installation (px1 in us-east-dev, px2 in eu-west), except that
    px2's driver measures nothing (the plain sim driver's capabilities); on SQLite and on
    PostgreSQL (jobs now record their origin, and refusals as jobs already failed)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "offerings.toml").write_text(OFFERINGS)
    drivers = nodes()
    px2 = drivers[1][1]
    px2.capabilities = replace(px2.capabilities, stats=False)
    s = await server_factory(nodes=drivers, database_url=database_url)
    client = httpx.AsyncClient(base_url=s.url + P, timeout=30, headers={"X-API-Key": s.admin_key})
    yield s, client
    await client.aclose()


async def _count(c: httpx.AsyncClient) -> int:
    return len(await call(c, "GET", "/api/v1/instances"))


async def test_tasks_show_the_credentials_prefix_and_the_client_address(bls: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bls
    uuid, task = await launch(c, name="who-1")
    assert task["auth_token_partial"] == s.admin_key[:10] and task["client_ip"] == "127.0.0.1"
    assert len(task["auth_token_partial"]) < len(s.admin_key)  # a hint, never the key
    # another key of the account: its own prefix, on the task and in the list
    other = (await s.client.post("/api/v1/api-keys", json={"name": "ci"})).json()["key"]
    oc = httpx.AsyncClient(base_url=s.url + P, headers={"X-API-Key": other}, timeout=30)
    try:
        r = await call(oc, "POST", "/api/v1/instances/{instance_id}/force-shutdown", path_args={"instance_id": uuid})
        done = await wait_task(c, r["task_id"])
        assert done["auth_token_partial"] == other[:10] != s.admin_key[:10] and done["client_ip"] == "127.0.0.1"
    finally:
        await oc.aclose()
    listed = {t["task_id"]: t for t in (await call(c, "GET", "/api/v1/tasks"))["tasks"]}
    assert listed[r["task_id"]]["auth_token_partial"] == other[:10]
    assert listed[task["task_id"]]["auth_token_partial"] == s.admin_key[:10]
    assert all(t["client_ip"] == "127.0.0.1" for t in listed.values())
    # the native API shows the same on the job, and in the list of jobs
    native = (await s.client.get(f"/api/v1/jobs/{r['task_id']}")).json()
    assert (native["keyPrefix"], native["clientIp"]) == (other[:10], "127.0.0.1")
    jobs = {j["id"]: j for j in (await s.client.get("/api/v1/jobs")).json()["items"]}
    assert jobs[r["task_id"]]["keyPrefix"] == other[:10] and jobs[task["task_id"]]["keyPrefix"] == s.admin_key[:10]


async def test_launch_custom_answers_timestamp_and_next_steps(bls: tuple[Server, httpx.AsyncClient]) -> None:
    _, c = bls
    body = {"name": "custom-ts", "instance_type": "custom", "host": "px1", "cores": 2, "memory": 8, "disk_size": 40,
            "gpu_count": 0, "username": "admin", "ssh_key": KEY}  # fmt: skip
    out = await call(c, "POST", "/api/v1/instances/launch-custom", json=body)
    assert out["status"] == "PENDING" and out["timestamp"].endswith("Z") and out["vm_uuid"]
    steps = out["next_steps"]
    assert steps["task_status_endpoint"] == f"/api/v1/tasks/{out['task_id']}"
    assert set(steps["expected_states"]) == {"PENDING", "PROCESSING", "COMPLETED", "FAILED"} and steps["description"]
    assert (await wait_task(c, out["task_id"]))["status"] == "COMPLETED"


async def test_launch_instance_takes_the_field_names_its_description_uses(bls: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bls
    base = {"region": "us-east-dev", "username": "ubuntu"}
    out = (await call(c, "POST", LAUNCH, json={**base, "instance_type_name": "v1_cpu_small", "ssh_key_names": [KEY, KEY2], "name": "desc-1"}))["data"]
    assert (await wait_task(c, out["task_id"]))["status"] == "COMPLETED"
    uuid = out["instance_ids"][0]
    vm = await call(c, "GET", INSTANCE, path_args={"instance_id": uuid})
    assert (vm["instance_type"], vm["cpu_cores"], vm["memory"]) == ("v1_cpu_small", 2, 8)
    native = (await s.client.get(f"/api/v1/vms/{uuid}")).json()
    assert native["resources"] == {"cpu": 2, "ramMb": 8192, "diskGb": 80}
    # both readings at once are fine when they agree (ssh_key: the first, primary, key)
    both = {**base, "instance_type": "v1_cpu_small", "instance_type_name": "v1_cpu_small", "ssh_key": KEY, "ssh_key_names": [KEY, KEY2]}
    out = (await call(c, "POST", LAUNCH, json={**both, "name": "desc-2"}))["data"]
    assert (await wait_task(c, out["task_id"]))["status"] == "COMPLETED"

    before = await _count(c)
    refusals: list[tuple[dict[str, Any], list[Any], str]] = [
        ({**both, "instance_type_name": "v1_cpu_medium"}, ["body", "instance_type_name"], "instance_type"),
        ({**both, "ssh_key": KEY2}, ["body", "ssh_key_names"], "ssh_key"),
        ({**base, "instance_type": "v1_cpu_small", "ssh_key_names": ["laptop"]}, ["body", "ssh_key_names", 0], "SSH public key"),
        ({**base, "ssh_key": KEY}, ["body", "instance_type"], "instance_type_name"),
    ]
    for body, loc, words in refusals:
        r = await call(c, "POST", LAUNCH, json={**body, "name": "desc-bad"}, expect=422)
        assert r["detail"][0]["loc"] == loc and words in r["detail"][0]["msg"], r
    await call(c, "POST", LAUNCH, json={**base, "instance_type": "v1_cpu_small", "ssh_key_names": KEY}, expect=422)  # not a list
    assert await _count(c) == before  # nothing was created


async def test_put_team_from_the_body_the_query_or_the_callers_key(bls: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bls
    path = "/api/v1/instances/{instance_id}/team"
    vm, _ = await launch(c, name="tq-1")
    a = {"instance_id": vm}
    green = (await s.client.post("/api/v1/teams", json={"name": "green"})).json()
    red = (await s.client.post("/api/v1/teams", json={"name": "red"})).json()
    # no body at all: the query's team_id
    r = await call(c, "PUT", path, path_args=a, params={"team_id": "green"})
    assert (r["team_id"], r["team_name"]) == (green["id"], "green")
    # the body wins over the query
    r = await call(c, "PUT", path, path_args=a, params={"team_id": "green"}, json={"team_id": red["id"]})
    assert r["team_name"] == "red"
    assert (await call(c, "GET", INSTANCE, path_args=a))["team_id"] == red["id"]
    # neither, from a key of the whole account: 422 naming team_id, and nothing changes
    for kw in ({}, {"json": {}}):
        r = await call(c, "PUT", path, path_args=a, expect=422, **kw)
        assert r["detail"][0]["loc"] == ["body", "team_id"], r
    assert (await call(c, "GET", INSTANCE, path_args=a))["team_id"] == red["id"]
    # neither, from a team-scoped admin key: the key's own team (its VMs are in it already)
    assert (await s.client.post("/api/v1/users", json={"name": "ada", "role": "admin"})).status_code == 201
    key = (await s.client.post("/api/v1/api-keys", json={"name": "t", "userId": "ada", "teamId": "red"})).json()["key"]
    tc = httpx.AsyncClient(base_url=s.url + P, headers={"X-API-Key": key}, timeout=30)
    try:
        r = await call(tc, "PUT", path, path_args=a)
        assert (r["team_id"], r["team_name"], r["instance_id"]) == (red["id"], "red", vm)
        # it still cannot move the VM to another team, nor out of its own
        assert (await call(tc, "PUT", path, path_args=a, params={"team_id": "green"}, expect=403))["error"] == "forbidden"
        await call(tc, "DELETE", path, path_args=a, expect=403)
    finally:
        await tc.aclose()
    assert (await call(c, "GET", INSTANCE, path_args=a))["team_id"] == red["id"]


async def test_power_actions_in_the_wrong_state_answer_a_failed_task(bls: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bls
    uuid, _ = await launch(c, name="pw-state")
    a = {"instance_id": uuid}
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/power-on", path_args=a)  # it runs already
    assert r["status"] == "FAILED" and r["instance_id"] == uuid and r["host"] == "px1"
    assert r["message"].startswith("Cannot power on the instance: ") and "running" in r["message"]
    task = await call(c, "GET", "/api/v1/tasks/{task_id}", path_args={"task_id": r["task_id"]})
    assert task["status"] == "FAILED" and task["operation"] == "power_on_instance" and "running" in task["message"]
    assert task["params"]["vm_uuid"] == uuid and task["auth_token_partial"] == s.admin_key[:10]
    assert (await call(c, "GET", INSTANCE, path_args=a))["power_status"] == "running"  # nothing changed
    native = (await s.client.get(f"/api/v1/jobs/{r['task_id']}")).json()
    assert native["state"] == "failed" and native["tasks"][0]["state"] == "failed"
    # stopped: shutdown and force-shutdown are refused the same way; power-on works
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/force-shutdown", path_args=a)
    assert r["status"] == "PENDING" and (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"
    for op, words in (("shutdown", "shutdown"), ("force-shutdown", "force shutdown")):
        r = await call(c, "POST", f"/api/v1/instances/{{instance_id}}/{op}", path_args=a)
        assert r["status"] == "FAILED" and r["message"].startswith(f"Cannot {words} the instance: "), r
        assert (await wait_task(c, r["task_id"]))["status"] == "FAILED"
    assert (await call(c, "GET", INSTANCE, path_args=a))["power_status"] == "stopped"
    r = await call(c, "POST", "/api/v1/instances/{instance_id}/power-on", path_args=a)
    assert r["status"] == "PENDING" and r["message"] == "VM power on queued"
    assert (await wait_task(c, r["task_id"]))["status"] == "COMPLETED"


async def test_stats_on_a_node_that_measures_nothing_are_zeros_that_say_so(bls: tuple[Server, httpx.AsyncClient]) -> None:
    _, c = bls
    uuid, _ = await launch(c, name="st-px2", region="eu-west")
    st = await call(c, "GET", "/api/v1/instances/{instance_id}/stats", path_args={"instance_id": uuid})
    assert st["status"] == "running" and st["cpu"] == {"usage_percent": 0.0, "cores": 2} and st["uptime_seconds"] == 0
    assert st["message"].startswith("not measured: ") and "stats" in st["message"]
    measured, _ = await launch(c, name="st-px1")  # px1 measures
    st = await call(c, "GET", "/api/v1/instances/{instance_id}/stats", path_args={"instance_id": measured})
    assert "message" not in st and st["uptime_seconds"] == 12


async def test_bodies_that_cannot_be_read_answer_the_documented_422(bls: tuple[Server, httpx.AsyncClient]) -> None:
    s, c = bls
    before = await _count(c)
    latin1 = '{"region": "us-east-dev", "instance_type": "v1_cpu_small", "username": "ubuntu", "name": "caf\xe9"}'.encode("latin-1")
    r = await c.post(LAUNCH, content=latin1, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json() == {"detail": [{"loc": ["body"], "msg": "the body is not JSON in UTF-8", "type": "json_invalid"}]}
    deep = ("[" * (s.rt.settings.max_json_depth + 5) + "]" * (s.rt.settings.max_json_depth + 5)).encode()
    r = await c.put("/api/v1/instances/x/rename", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
    assert await _count(c) == before
