"""What the cloud-init seed of a VM made from a snapshot, or imported, holds (sim driver: the
seed is built by the qemu driver's own `seed_files` from the spec the node was given).

A VM from a snapshot keeps its source's SSH keys and cloud-init documents unless its request
gives its own (each given field replaces the source's), and its seed names the new VM (its
own instance-id and hostname). Imports take `sshKeys` and `cloudInit` as a VM create does."""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane.domain import VmSpec
from vmplane.drivers.qemu.seed import seed_files

from ..support import Server, require_qemu

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA source@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB new@test"
USER_DATA = "#cloud-config\nruncmd:\n  - [touch, /root/from-the-source]\n"


def node_spec(server: Server, vm_id: str) -> VmSpec:
    """The spec the VM's node was given at create (what its seed is built from)."""
    for _node, driver in server.rt.registry.items():
        vm = driver._vms.get(vm_id)  # type: ignore[attr-defined]
        if vm is not None:
            spec: VmSpec = vm.spec
            return spec
    raise AssertionError(f"no node holds {vm_id}")


def seed(server: Server, vm_id: str) -> tuple[dict[str, Any], str]:
    """(meta-data, user-data) of the VM's seed."""
    files = seed_files(node_spec(server, vm_id))
    return json.loads(files["meta-data"]), files["user-data"].decode()


async def vm_from(server: Server, body: dict[str, Any]) -> str:
    job = await server.create(body)
    assert job["state"] == "succeeded", job
    vm_id: str = job["tasks"][0]["resourceId"]
    return vm_id


async def test_a_vm_from_a_snapshot_keeps_the_sources_keys_and_user_data_unless_given_new_ones(server: Server) -> None:
    c = server.client
    source = await vm_from(server, {
        "name": "source", "sshKeys": [KEY_A],
        "cloudInit": {"userData": USER_DATA, "metaData": {"instance-id": "pinned-by-user", "local-hostname": "source-host", "tier": "web"}},
    })  # fmt: skip
    meta, user = seed(server, source)
    assert meta["instance-id"] == "pinned-by-user" and meta["public-keys"] == [KEY_A] and user == USER_DATA
    r = await c.post(f"/api/v1/vms/{source}/snapshots", json={"name": "golden"})
    assert r.status_code == 202, r.text
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap = r.json()["snapshotId"]

    # nothing given: the source's keys and user-data, under the clone's own identity
    clone = await vm_from(server, {"name": "clone", "snapshotId": snap})
    meta, user = seed(server, clone)
    assert meta["instance-id"] == clone and meta["local-hostname"] == "clone", meta  # cloud-init runs again, for this VM
    assert meta["public-keys"] == [KEY_A] and meta["tier"] == "web" and user == USER_DATA

    # new keys replace the source's (they are not added to them); the user-data still carries over
    rekeyed = await vm_from(server, {"name": "rekeyed", "snapshotId": snap, "sshKeys": [KEY_B]})
    meta, user = seed(server, rekeyed)
    assert meta["public-keys"] == [KEY_B] and user == USER_DATA and meta["instance-id"] == rekeyed

    # new cloud-init replaces the source's whole; the keys still carry over (no user-data: they go into it)
    fresh = await vm_from(server, {"name": "fresh", "snapshotId": snap, "cloudInit": {"metaData": {"role": "db"}}})
    meta, user = seed(server, fresh)
    assert "tier" not in meta and meta["role"] == "db" and meta["instance-id"] == fresh
    assert user == f"#cloud-config\nssh_authorized_keys:\n  - {json.dumps(KEY_A)}\n"

    # a clone's keys are checked as any VM's, and a refused clone changes nothing
    before = [v["id"] for v in (await c.get("/api/v1/vms")).json()["items"]]
    r = await c.post("/api/v1/vms", json={"name": "bad", "snapshotId": snap, "sshKeys": ["not a key"]})
    assert r.status_code == 400 and r.json()["details"]["field"] == "sshKeys[0]", r.text
    # no VM made (the VMs' own fields may move meanwhile: a guest becoming ready)
    assert [v["id"] for v in (await c.get("/api/v1/vms")).json()["items"]] == before


async def test_a_clone_through_another_face_carries_the_seed_too(server: Server) -> None:
    """FastVM's restore-from-snapshot (a new VM) goes through the same core."""
    source = await vm_from(server, {"name": "origin", "sshKeys": [KEY_A], "cloudInit": {"userData": USER_DATA}})
    r = await server.client.post(f"/api/v1/vms/{source}/snapshots", json={"name": "s1"})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    snap = (await server.client.get(f"/api/v1/snapshots/{r.json()['snapshotId']}")).json()
    r = await server.client.post("/compat/fastvm/v1/vms", json={"name": "fv-clone", "snapshotId": snap["uuid"]})
    assert r.status_code in (200, 201), r.text
    clone = next(v["id"] for v in (await server.client.get("/api/v1/vms")).json()["items"] if v["name"] == "fv-clone")
    meta, user = seed(server, clone)
    assert meta["public-keys"] == [KEY_A] and user == USER_DATA and meta["instance-id"] == clone


def carried_meta_text(server: Server, vm_id: str) -> str:
    return seed_files(node_spec(server, vm_id))["meta-data"].decode()


async def test_yaml_meta_data_of_the_source_loses_only_the_lines_that_name_it(server: Server) -> None:
    """Volant's config takes meta-data as a document (YAML text), kept as written."""
    meta_yaml = "instance-id: pinned\nlocal-hostname: origin-host\nregion: north\n"
    config = {"cloud_init": {"user_data": {"content": USER_DATA}, "meta_data": {"content": meta_yaml}}}
    async with httpx.AsyncClient(base_url=server.url + "/compat/volant", timeout=30, headers={"X-Volant-API-Key": server.admin_key}) as v:
        r = await v.post("/api/v1/vms", json={"name": "yaml-src", "cpu_cores": 1, "memory_mb": 256, "config": config})
        assert r.status_code in (200, 201), r.text
    source = next(x["id"] for x in (await server.client.get("/api/v1/vms")).json()["items"] if x["name"] == "yaml-src")
    assert "pinned" in carried_meta_text(server, source)  # the source's own seed as the user wrote it
    r = await server.client.post(f"/api/v1/vms/{source}/snapshots", json={"name": "y"})
    assert (await server.wait_job(r.json()["jobId"]))["state"] == "succeeded"
    clone = await vm_from(server, {"name": "yaml-clone", "snapshotId": r.json()["snapshotId"]})
    text = carried_meta_text(server, clone)
    assert "pinned" not in text and "origin-host" not in text and "region: north" in text
    assert f'"instance-id": "{clone}"' in text and '"local-hostname": "yaml-clone"' in text
    assert seed_files(node_spec(server, clone))["user-data"].decode() == USER_DATA


@pytest.fixture
def disk_image(server: Server) -> Path:
    if shutil.which("qemu-img") is None:
        require_qemu()
    d = server.rt.data_dir / "imports"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "disk.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(path), "16M"], check=True, capture_output=True)
    return path


async def test_imports_take_ssh_keys_and_cloud_init_checked_as_a_vm_create(server: Server, disk_image: Path) -> None:
    c = server.client
    source = {"type": "disk", "path": str(disk_image)}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sshKeys": ["not a key"]}, "sshKeys[0]"),
        ({"sshKeys": [KEY_A, "ssh-rsa"]}, "sshKeys[1]"),
        ({"sshKeys": "ssh-ed25519 AAAA"}, "sshKeys"),
        ({"sshKeys": [KEY_A] * 33}, "sshKeys"),
        ({"cloudInit": {"userData": 42}}, "cloudInit.userData"),
        ({"cloudInit": {"userData": "x" * 65537}}, "cloudInit.userData"),
        ({"cloudInit": {"metaData": "text"}}, "cloudInit.metaData"),
        ({"cloudInit": {"surprise": 1}}, "cloudInit.surprise"),
        ({"cloudInit": "#cloud-config"}, "cloudInit"),
    ]
    for extra, field in cases:
        r = await c.post("/api/v1/imports", json={"source": source, **extra})
        assert r.status_code == 400, (extra, r.text)
        assert r.json()["details"]["field"] == field, (extra, r.json())
    assert (await c.get("/api/v1/imports")).json()["items"] == []

    r = await c.post("/api/v1/imports", json={
        "source": source, "name": "imported", "sshKeys": [KEY_B], "cloudInit": {"userData": USER_DATA, "metaData": {"tier": "app"}},
    })  # fmt: skip
    assert r.status_code == 202, r.text
    job = await server.wait_job(r.json()["jobId"], timeout=90)
    assert job["state"] == "succeeded", job
    imp = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    assert imp["options"]["sshKeys"] == [KEY_B] and imp["options"]["cloudInit"]["userData"] == USER_DATA
    meta, user = seed(server, imp["vmId"])
    assert meta["public-keys"] == [KEY_B] and meta["tier"] == "app" and user == USER_DATA
    assert meta["instance-id"] == imp["vmId"] and meta["local-hostname"] == "imported"

    # without them an import's seed is as before: no keys, an empty #cloud-config
    r = await c.post("/api/v1/imports", json={"source": source, "name": "plain"})
    job = await server.wait_job(r.json()["jobId"], timeout=90)
    assert job["state"] == "succeeded", job
    plain = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()["vmId"]
    meta, user = seed(server, plain)
    assert "public-keys" not in meta and user == "#cloud-config\n"
