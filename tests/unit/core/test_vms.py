"""VmService over the SQLite store and a sim node, no HTTP: a create runs to completion
through the job engine; names and quotas are refused before anything is recorded."""

import pytest

from vmplane.auth import DEFAULT_ORG
from vmplane.domain import NewVm
from vmplane.drivers.base import PowerState
from vmplane.errors import Conflict
from vmplane.services.tenancy import QuotaExceeded

from .conftest import NODE, Core


async def test_create_runs_to_completion(core: Core) -> None:
    job_id, [vm_id] = await core.vms.create([NewVm(name="web")], core.owner)
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("provisioning", None)  # recorded; nothing runs before the engine does

    await core.engine.start(core.deps)
    outcome = await core.jobs.wait(job_id, 10)

    assert outcome.state == "succeeded", outcome.error("")
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("running", NODE)
    runtime = await core.driver.get_vm(vm_id)
    assert runtime is not None and runtime.state == PowerState.RUNNING


async def test_a_taken_name_is_refused(core: Core) -> None:
    await core.vms.create([NewVm(name="web")], core.owner)
    with pytest.raises(Conflict):
        await core.vms.create([NewVm(name="web")], core.owner)
    assert [v.name for v in await core.vms.every(core.owner)] == ["web"]


async def test_quota_refuses_before_recording(core: Core) -> None:
    await core.tenancy.set_quotas(core.owner, DEFAULT_ORG, {"vms": 1})
    await core.vms.create([NewVm(name="one")], core.owner)
    with pytest.raises(QuotaExceeded):
        await core.vms.create([NewVm(name="two"), NewVm(name="three")], core.owner)
    assert [v.name for v in await core.vms.every(core.owner)] == ["one"]
