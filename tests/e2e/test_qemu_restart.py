"""A resize of a running real guest (issue 22, item 5), on the qemu driver with the tiny guest:
the RAM waits for a restart (`pendingRestart`), a guest reboot does not apply it (QEMU keeps
its command line), `vmplane vm restart` does; the disk grows live and the job says why the
guest's filesystem was not grown (the tiny guest's root is its initramfs). One guest."""

from pathlib import Path
from typing import Any

import pytest

from ..support import qemu_processes_of, require_qemu, tiny_template
from .test_qemu_cli import cli_env, run_cli
from .test_qemu_vm import wait_for

pytestmark = pytest.mark.slow

GIB = 1 << 30
BOOT_LINE = "vmplane-tiny: init starting"




async def test_ram_resize_waits_for_a_restart_and_the_disk_grows_live(server_factory: Any, tmp_path: Path) -> None:
    require_qemu()
    s = await server_factory(driver="qemu", accel="tcg", cpu_overcommit=8.0, shutdown_timeout_seconds=20)
    c = s.client
    job = await s.create({"name": "rs-1", "templateId": await tiny_template(s), "resources": {"cpu": 1, "ramMb": 256, "diskGb": 2}})
    assert job["state"] == "succeeded", job["tasks"]
    vm_id = job["tasks"][0]["resourceId"]

    async def guest(*argv: str) -> str:
        async def answered() -> str | None:
            r = await c.post(f"/api/v1/vms/{vm_id}/exec", json={"command": list(argv), "timeoutSec": 10})
            return r.json()["stdout"] if r.status_code == 200 and r.json()["exitCode"] == 0 else None

        return str(await wait_for(answered, 180, f"the guest to answer {argv}"))

    async def mem_mb() -> int:
        line = next(ln for ln in (await guest("cat", "/proc/meminfo")).splitlines() if ln.startswith("MemTotal:"))
        return int(line.split()[1]) // 1024

    async def boots() -> int:
        return (await c.get(f"/api/v1/vms/{vm_id}/console/log")).text.count(BOOT_LINE)

    async def vm() -> dict[str, Any]:
        return dict((await c.get(f"/api/v1/vms/{vm_id}")).json())

    before = await mem_mb()
    assert 160 < before <= 256, before
    assert (await vm())["pendingRestart"] is False

    r = await c.patch(f"/api/v1/vms/{vm_id}", json={"resources": {"ramMb": 384, "diskGb": 3}})
    assert r.status_code == 202, r.text
    done = await s.wait_job(r.json()["jobId"], timeout=120)
    assert done["state"] == "succeeded", done
    log = (await c.get(f"/api/v1/jobs/{done['id']}/tasks/{done['tasks'][0]['id']}")).json()["log"]
    said = [line for line in log if "disk grown to 3 GiB" in line]
    # the tiny guest's / is its initramfs: said, not attempted (and it has no growpart either)
    assert said and "filesystem not grown: the root filesystem is on 'rootfs'" in said[0], log
    v = await vm()
    assert v["resources"]["ramMb"] == 384 and v["pendingRestart"] is True and v["pending"] == ["ramMb"]
    # the guest sees the grown disk at once (sectors of 512 bytes)
    assert int(await guest("cat", "/sys/block/vda/size")) * 512 == 3 * GIB

    # a guest reboot keeps the QEMU process and its command line: the RAM stays as it was
    booted = await boots()
    assert booted >= 1
    r = await c.post(f"/api/v1/vms/{vm_id}/reboot")
    assert r.status_code == 202 and (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"

    async def rebooted() -> bool:
        return await boots() > booted

    await wait_for(rebooted, 240, "the guest to boot again")
    assert await mem_mb() == before
    v = await vm()
    assert v["status"] == "running" and v["pendingRestart"] is True and v["pending"] == ["ramMb"]

    # the CLI's restart power-cycles: a new QEMU with the new RAM
    env = {**cli_env(s, tmp_path), "COLUMNS": "200"}
    code, out, err = await run_cli(env, "vm", "list")
    assert code == 0 and "restart to apply" in out, out + err
    code, out, err = await run_cli(env, "vm", "restart", "rs-1", timeout=180)
    assert code == 0 and "rs-1 restarted" in out, out + err
    v = await vm()
    assert v["status"] == "running" and v["pendingRestart"] is False and v["pending"] == []
    after = await mem_mb()
    assert 256 < after <= 384 and after > before, (before, after)
    assert int(await guest("cat", "/sys/block/vda/size")) * 512 == 3 * GIB

    r = await c.request("DELETE", "/api/v1/vms", json={"vmIds": [vm_id]})
    assert r.status_code == 202 and (await s.wait_job(r.json()["jobId"], timeout=120))["state"] == "succeeded"
    assert qemu_processes_of(vm_id) == []
