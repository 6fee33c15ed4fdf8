"""Snapshots through the API (sim driver): live and offline, clones, revert, the rules."""

from typing import Any

from ..support import Server


async def snapshot(server: Server, vm_id: str, name: str) -> dict[str, Any]:
    r = await server.client.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": name})
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"])
    assert job["state"] == "succeeded", job
    return (await server.client.get(f"/api/v1/snapshots/{r.json()['snapshotId']}")).json()


async def test_snapshot_clone_revert_and_delete_rules(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "origin", "resources": {"cpu": 2, "ramMb": 2048, "diskGb": 20}})
    vm_id = job["tasks"][0]["resourceId"]
    snap = await snapshot(server, vm_id, "before-upgrade")
    assert snap["status"] == "ready" and snap["vmId"] == vm_id and snap["resources"] == {"cpu": 2, "ramMb": 2048, "diskGb": 20}
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"  # taken live
    assert [s["id"] for s in (await c.get("/api/v1/snapshots", params={"vmId": vm_id})).json()["items"]] == [snap["id"]]

    # a clone takes the snapshot's shape and node; its disk may only grow
    r = await c.post("/api/v1/vms", json={"name": "clone", "snapshotId": snap["id"], "resources": {"cpu": 1, "ramMb": 512, "diskGb": 10}})
    assert r.status_code == 400 and r.json()["details"]["field"] == "resources.diskGb"
    clone_job = await server.create({"name": "clone", "snapshotId": snap["id"]})
    assert clone_job["state"] == "succeeded", clone_job
    clone = (await c.get(f"/api/v1/vms/{clone_job['tasks'][0]['resourceId']}")).json()
    assert clone["snapshotId"] == snap["id"] and clone["resources"] == snap["resources"] and clone["node"] == snap["nodeId"]

    # deleting a snapshot that backs a clone is refused; renaming is fine
    r = await c.delete(f"/api/v1/snapshots/{snap['id']}")
    assert r.status_code == 409 and "cloned" in r.json()["error"]
    assert (await c.patch(f"/api/v1/snapshots/{snap['id']}", json={"name": "renamed"})).json()["name"] == "renamed"

    # revert: the VM is stopped, restored and started again
    r = await c.post(f"/api/v1/vms/{vm_id}/revert", json={"snapshotId": snap["id"]})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await c.get(f"/api/v1/vms/{vm_id}")).json()["status"] == "running"
    r = await c.post(f"/api/v1/vms/{clone['id']}/revert", json={"snapshotId": snap["id"]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "snapshotId"  # not its own snapshot

    # once the clone is gone the snapshot can go
    r = await c.delete(f"/api/v1/vms/{clone['id']}")
    await server.wait_job(r.json()["jobId"])
    r = await c.delete(f"/api/v1/snapshots/{snap['id']}")
    assert r.status_code == 202 and (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    assert (await c.get(f"/api/v1/snapshots/{snap['id']}")).status_code == 404


async def test_offline_snapshot_quota_and_validation(server: Server) -> None:
    c = server.client
    job = await server.create({"name": "cold", "start": False})
    vm_id = job["tasks"][0]["resourceId"]
    snap = await snapshot(server, vm_id, "offline-one")
    assert snap["status"] == "ready"
    assert (await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "bad\nname"})).status_code == 400  # names are display text, one line
    assert (await c.post("/api/v1/vms/vm-none00000000/snapshots", json={"name": "x"})).status_code == 404
    assert (await c.post("/api/v1/vms", json={"name": "x", "snapshotId": "snap-nope"})).status_code == 404
    await c.put("/api/v1/orgs/org-default/quotas", json={"snapshots": 1})
    r = await c.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "two"})
    assert r.status_code == 409 and r.json()["code"] == "quota_exceeded"
    assert (await c.get("/api/v1/org/quotas")).json()["usage"]["snapshots"] == 1


async def test_backups_need_a_driver_that_exports_disks(server: Server) -> None:
    job = await server.create({"name": "simvm"})
    vm_id = job["tasks"][0]["resourceId"]
    r = await server.client.post(f"/api/v1/vms/{vm_id}/backups", json={"notes": "x"})
    assert r.status_code == 409 and "cannot back up" in r.json()["error"]
    assert (await server.client.get("/api/v1/backups")).json()["items"] == []
    assert (await server.client.get("/api/v1/backups/bkp-nothere")).status_code == 404
    listed = (await server.client.get(f"/api/v1/vms/{vm_id}/backups")).json()
    assert listed == {"items": [], "backupInProgress": False, "restoreInProgress": False}


async def test_firewall_on_create_is_captured_by_snapshots_and_taken_by_clones(server: Server) -> None:
    c = server.client
    fw = {"enabled": True, "policyIn": "DROP", "rules": [{"type": "in", "action": "ACCEPT", "proto": "tcp", "dport": "22"}]}
    r = await c.post("/api/v1/vms", json={"name": "walled", "firewall": {**fw, "rules": [{"type": "in", "action": "ACCEPT", "dport": "x"}]}})
    assert r.status_code == 400 and r.json()["details"]["field"] == "firewall.rules[0].dport"
    r = await c.post("/api/v1/vms", json=[{"name": "ok-1"}, {"name": "walled", "firewall": {"policyIn": "NOPE"}}])
    assert r.status_code == 400 and r.json()["details"]["field"] == "[1].firewall.policyIn"
    job = await server.create({"name": "walled", "firewall": fw})
    vm_id = job["tasks"][0]["resourceId"]
    got = (await c.get(f"/api/v1/vms/{vm_id}/firewall")).json()
    assert got["enabled"] and got["policyIn"] == "DROP" and got["rules"][0]["dport"] == "22"
    node = (await c.get(f"/api/v1/vms/{vm_id}")).json()["node"]  # the node got it with the VM
    assert server.rt.registry.driver(node)._vms[vm_id].spec.firewall.policy_in == "DROP"

    snap = await snapshot(server, vm_id, "walled-snap")
    assert snap["firewall"] == {k: v for k, v in got.items() if k != "jobId"}
    assert (await c.get(f"/api/v1/snapshots/{snap['uuid']}")).json()["id"] == snap["id"]  # by uuid too
    await c.put(f"/api/v1/vms/{vm_id}/firewall", json={"enabled": False})  # the snapshot keeps what it had
    clone = await server.create({"name": "walled-clone", "snapshotId": snap["uuid"]})
    clone_id = clone["tasks"][0]["resourceId"]
    assert (await c.get(f"/api/v1/vms/{clone_id}/firewall")).json()["policyIn"] == "DROP"
    own = await server.create({"name": "own-wall", "snapshotId": snap["id"], "firewall": {"enabled": False}})
    assert (await c.get(f"/api/v1/vms/{own['tasks'][0]['resourceId']}/firewall")).json()["enabled"] is False
