"""vSphere discovery, power, CD-ROM removal and an import by datastore download against a real
vCenter simulator (govmomi's vcsim, built from Debian's source package by
scripts/build-vcsim.sh). Its VMs' disks are empty placeholders: a real VMDK is uploaded over
one first (datastore /folder PUT); the imported VM's disk must then hold the same bytes."""

import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vmplane.domain.vsphere import Connection

from ..imports_support import real_disk_on_vcsim, running_vcsim
from ..support import Server, require_qemu

pytestmark = pytest.mark.slow
USER, PASSWORD = "vcadmin", "vc-Pa55-word"


@pytest.fixture
async def vcsim(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    with running_vcsim(tmp_path, USER, PASSWORD) as vc:
        yield vc


def _conn(vc: dict[str, Any]) -> dict[str, Any]:
    return {"vcenterUrl": vc["url"], "username": USER, "password": PASSWORD, "insecure": True}


async def test_discovery_power_and_cdroms_through_the_api(server: Server, vcsim: dict[str, Any]) -> None:
    c = server.client
    r = await c.post("/api/v1/vsphere/vms/list", json=_conn(vcsim))
    assert r.status_code == 200, r.text
    vms = r.json()["items"]
    assert [v["path"] for v in vms] == ["DC0/vm/DC0_C0_RP0_VM0", "DC0/vm/DC0_C0_RP0_VM1", "DC0/vm/DC0_H0_VM0", "DC0/vm/DC0_H0_VM1"]
    assert all(v["powerState"] == "poweredOn" and v["numCpu"] >= 1 and v["memoryMb"] > 0 and v["guestOs"] for v in vms), vms
    assert PASSWORD not in r.text
    # a stored profile works the same; a wrong password or an unknown profile are 400s naming the field
    r = await c.post("/api/v1/vsphere/profiles", json={"name": "sim", "url": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True})
    assert r.status_code == 201, r.text
    r = await c.post("/api/v1/vsphere/vms/list", json={"profile": "sim", "datacenter": "DC0"})
    assert len(r.json()["items"]) == 4
    r = await c.post("/api/v1/vsphere/vms/list", json={**_conn(vcsim), "password": "wrong"})
    assert r.status_code == 400 and r.json()["details"]["field"] == "username", r.text
    r = await c.post("/api/v1/vsphere/vms/list", json={**_conn(vcsim), "insecure": False})
    assert r.status_code == 400 and r.json()["details"]["field"] == "insecure", r.text
    r = await c.post("/api/v1/vsphere/vms/info", json={"profile": "sim", "vmPath": "DC0/vm/nope"})
    assert r.status_code == 404 and r.json()["details"]["field"] == "vmPath"

    path = "DC0/vm/DC0_H0_VM0"
    info = (await c.post("/api/v1/vsphere/vms/info", json={"profile": "sim", "vmPath": path})).json()
    assert info["name"] == "DC0_H0_VM0" and info["datacenter"] == "DC0" and info["hardware"]["numVirtualDisks"] == 1
    assert info["disks"][0]["filePath"].startswith("[LocalDS_0] ") and info["disks"][0]["capacityBytes"] > 0
    assert info["nics"] and info["nics"][0]["network"] and len(info["cdroms"]) == 1
    r = await c.post("/api/v1/vsphere/vms/remove-cdrom", json={"profile": "sim", "vmPath": path})
    assert r.json() == {"success": True, "message": "1 CD-ROM device(s) removed"}
    assert (await c.post("/api/v1/vsphere/vms/info", json={"profile": "sim", "vmPath": path})).json()["cdroms"] == []
    r = await c.post("/api/v1/vsphere/vms/remove-cdrom", json={"profile": "sim", "vmPath": path})
    assert r.json()["message"] == "the VM has no CD-ROM device"

    r = await c.post("/api/v1/vsphere/vms/shutdown", json={"profile": "sim", "vmPath": path, "timeoutSec": 20})
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    r = await c.post("/api/v1/vsphere/vms/shutdown", json={"profile": "sim", "vmPath": path})
    assert r.status_code == 409 and r.json()["details"]["current"] == "poweredOff", r.text
    assert (await c.post("/api/v1/vsphere/vms/poweron", json={"profile": "sim", "vmPath": path})).status_code == 200
    r = await c.post("/api/v1/vsphere/vms/poweroff", json={"profile": "sim", "vmPath": path})
    assert r.json() == {"success": True, "message": "VM powered off"}
    assert (await c.post("/api/v1/vsphere/vms/poweroff", json={"profile": "sim", "vmPath": path})).status_code == 409
    states = {v["path"]: v["powerState"] for v in (await c.post("/api/v1/vsphere/vms/list", json={"profile": "sim"})).json()["items"]}
    assert states[path] == "poweredOff" and states["DC0/vm/DC0_H0_VM1"] == "poweredOn"


async def test_import_by_datastore_download(server_factory: Any, vcsim: dict[str, Any], tmp_path: Path) -> None:
    require_qemu()
    s: Server = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0)
    c = s.client
    path = "DC0/vm/DC0_H0_VM1"
    conn = Connection(vcsim["url"], USER, PASSWORD, True)
    raw = tmp_path / "source.raw"
    info = await real_disk_on_vcsim(s.rt, vcsim["addr"], conn, path, raw, 48, (0, 5, 47))

    # the simulator has no export lease: asking for it fails plainly and leaves nothing
    r = await c.post("/api/v1/imports", json={"source": {"type": "vsphere", "vcenterUrl": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True, "vmPath": path, "exportMethod": "lease"}})
    job = await s.wait_job(r.json()["jobId"], timeout=60)
    assert job["state"] == "failed" and "no export lease" in job["tasks"][0]["error"], job
    assert (await c.get("/api/v1/vms")).json()["items"] == [] and not (s.rt.data_dir / "imports" / "work" / r.json()["importId"]).exists()
    r = await c.post("/api/v1/imports", json={
        "source": {"type": "vsphere", "vcenterUrl": vcsim["url"], "username": USER, "password": PASSWORD, "insecure": True, "vmPath": path},
        "name": "from-vsphere", "removeCdroms": True, "start": False, "ramMb": 256,
    })  # fmt: skip
    assert r.status_code == 202, r.text
    job = await s.wait_job(r.json()["jobId"], timeout=120)
    assert job["state"] == "succeeded", job
    imp = (await c.get(f"/api/v1/imports/{r.json()['importId']}")).json()
    assert imp["shape"]["cpu"] == info.vm.num_cpu and imp["shape"]["cdroms"] == 1 and imp["bytesDone"] == imp["bytesTotal"] == 48 << 20
    assert "username" in imp["source"] and PASSWORD not in str(imp)
    task = (await c.get(f"/api/v1/jobs/{job['id']}/tasks/{job['tasks'][0]['id']}")).json()
    log = "\n".join(task["log"])
    assert "removed 1 CD-ROM drive(s) from the source VM" in log
    assert "fetched 1 disk(s) by datastore download" in log  # vcsim 0.24 has no ExportVm: auto fell back
    db = sqlite3.connect(s.rt.data_dir / "vmplane.db")
    assert not any(PASSWORD in str(row) for row in db.execute("select payload from tasks")), "the password is stored in clear"
    assert (await s.rt.vsphere.vm_info(conn, path)).cdroms == ()
    vm = (await c.get(f"/api/v1/vms/{imp['vmId']}")).json()
    assert vm["status"] == "stopped" and vm["resources"]["ramMb"] == 256 and vm["resources"]["diskGb"] == 1
    disk = s.rt.data_dir / "qemu" / "vms" / imp["vmId"] / "disk.qcow2"
    # same bytes as the source (the VM's disk is grown to its 1 GiB: compare the first 48 MiB)
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(raw), str(disk)], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
