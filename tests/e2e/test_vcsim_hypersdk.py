"""The HyperSDK face against a real vCenter simulator (govmomi's vcsim, see test_vcsim.py): its
VM endpoints called the ways HyperSDK's clients call them (the document's GET with query
parameters, the Python client's POST with a `vcenter` object, the top-level connection fields),
and a HyperSDK job importing a vSphere VM by datastore download."""

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from vmplane.domain.vsphere import Connection

from ..imports_support import real_disk_on_vcsim
from ..support import Server, require_qemu
from ..support_hypersdk import P
from . import test_vcsim
from .test_vcsim import PASSWORD, USER

vcsim = test_vcsim.vcsim  # the simulator fixture

pytestmark = pytest.mark.slow


async def test_discovery_power_and_cdroms_through_the_face(server: Server, vcsim: dict[str, Any]) -> None:
    c = server.client
    query = {"vcenter_url": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": "true"}
    r = await c.get(f"{P}/vms/list", params=query)
    assert r.status_code == 200, r.text
    listed = r.json()
    assert listed["total"] == 4 and PASSWORD not in r.text
    vm = next(v for v in listed["vms"] if v["path"] == "DC0/vm/DC0_H0_VM0")
    assert vm["power_state"] == "poweredOn" and vm["num_cpu"] >= 1 and vm["memory_mb"] > 0 and vm["storage"] >= 0 and vm["guest_os"]
    vcenter = {"server": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True}  # the client's VCenterConfig
    r = await c.post(f"{P}/vms/list", json=vcenter)
    assert [v["path"] for v in r.json()["vms"]] == [v["path"] for v in listed["vms"]]

    path = "DC0/vm/DC0_H0_VM0"
    info = (await c.post(f"{P}/vms/info", json={"vcenter": vcenter, "vm_path": path})).json()
    assert info["name"] == "DC0_H0_VM0" and info["hardware"]["num_virtual_disks"] == 1 and info["hardware"]["num_cpu"] == vm["num_cpu"]
    assert info["disks"][0]["file_path"].startswith("[LocalDS_0] ") and info["disks"][0]["capacity_kb"] > 0 and len(info["cdroms"]) == 1
    r = await c.get(f"{P}/vms/info", params={**query, "vm_path": "DC0/vm/nope"})
    assert r.status_code == 404 and r.json()["error"]

    body = {"vcenter_url": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True, "vm_path": path}  # the document's
    r = await c.post(f"{P}/vms/remove-cdrom", json=body)
    assert r.status_code == 200 and r.json()["message"] == "CD-ROM devices removed" and r.json()["removed"] == 1, r.text
    assert (await c.post(f"{P}/vms/info", json=body)).json()["cdroms"] == []
    r = await c.post(f"{P}/vms/shutdown", json={**body, "timeout": 20})
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["powered_off"] is True, r.text
    r = await c.post(f"{P}/vms/poweroff", json=body)  # already off: the wrong state
    assert r.status_code == 409 and r.json()["error"]
    r = await c.post(f"{P}/vms/poweroff", json={**body, "vm_path": "DC0/vm/DC0_H0_VM1"})
    assert r.json()["success"] is True and r.json()["message"] == "VM powered off"
    states = {v["path"]: v["power_state"] for v in (await c.get(f"{P}/vms/list", params=query)).json()["vms"]}
    assert states[path] == states["DC0/vm/DC0_H0_VM1"] == "poweredOff" and states["DC0/vm/DC0_C0_RP0_VM0"] == "poweredOn"
    r = await c.post(f"{P}/vms/list", json={**vcenter, "password": "wrong"})
    assert r.status_code == 400 and r.json()["error"]


async def test_a_hypersdk_job_imports_a_vsphere_vm_by_datastore_download(server_factory: Any, vcsim: dict[str, Any], tmp_path: Path) -> None:
    """The document's job definition (vm_path + a vCenter), `export_method: web` (HyperSDK's HTTP
    download of the datastore files): the VM's disk comes over, byte for byte."""
    require_qemu()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    c = s.client
    path = "DC0/vm/DC0_H0_VM1"
    conn = Connection(vcsim["url"], USER, PASSWORD, True)
    raw = tmp_path / "source.raw"
    await real_disk_on_vcsim(s.rt, vcsim["addr"], conn, path, raw, 16, (0,))
    definition = {
        "name": "from-vcenter", "vm_path": path, "export_method": "web",
        "source": {"type": "vsphere", "vcenter_url": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True},
        "options": {"start": False, "remove_cdrom": True},
    }  # fmt: skip
    r = await c.post(f"{P}/jobs/submit", json=definition)
    assert r.status_code == 201 and r.json()["accepted"] == 1, r.text
    job_id = r.json()["job_id"]
    deadline = time.monotonic() + 120
    while (job := (await c.get(f"{P}/jobs/{job_id}")).json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)
    assert job["status"] == "completed", job
    assert job["definition"]["vm_path"] == path and job["definition"]["export_method"] == "web" and PASSWORD not in json.dumps(job)
    vm = (await c.get(f"/api/v1/vms/{job['vm_id']}")).json()
    assert vm["name"] == "from-vcenter" and vm["status"] == "stopped"
    assert (await s.rt.vsphere.vm_info(conn, path)).cdroms == ()
    disk = s.rt.data_dir / "qemu" / "vms" / job["vm_id"] / "disk.qcow2"
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(raw), str(disk)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
