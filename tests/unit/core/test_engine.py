"""The job engine over the SQLite store, no HTTP: a cancel before the run discards what the
submit recorded; a task whose worker's lease ran out goes back to the queue (one whose lease
still holds does not) and is resumed by the next worker."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import Row, update

from vmplane import clock
from vmplane.domain import NewVm, Resources
from vmplane.errors import DriverError, NotFound
from vmplane.jobs.handlers import vm_create
from vmplane.services.vms import VmChange
from vmplane.store import StoreUnavailable
from vmplane.store import jobs as job_q
from vmplane.store import nodes as node_q
from vmplane.store import vms as vm_q
from vmplane.store.tables import tasks

from .conftest import NODE, Core


async def test_cancel_before_the_run_discards_the_vm(core: Core) -> None:
    job_id, [vm_id] = await core.vms.create([NewVm(name="web")], core.owner)

    await core.engine.cancel(job_id)
    await core.engine.start(core.deps)
    outcome = await core.jobs.wait(job_id, 10)

    assert outcome.state == "cancelled" and [t.state for t in outcome.tasks] == ["cancelled"]
    with pytest.raises(NotFound):
        await core.vms.get(vm_id, core.owner)  # vm-create's discard took the record back
    assert await core.driver.list_vms() == []


async def _claim_as(core: Core, owner: str, lease_until: float) -> None:
    async with core.store.write() as conn:
        claimed = await job_q.claim_tasks(conn, owner=owner, limit=1, lease_until=lease_until, now=clock.now(), postgres=False)
    assert len(claimed) == 1


async def _task(core: Core, job_id: str) -> Row[Any]:
    async with core.store.read() as conn:
        [task] = await job_q.job_tasks(conn, job_id)
    return task


async def test_an_expired_lease_is_requeued_and_resumed(core: Core) -> None:
    live_job, _ = await core.vms.create([NewVm(name="held")], core.owner)
    await _claim_as(core, "worker-alive", clock.now() + 60)
    dead_job, [vm_id] = await core.vms.create([NewVm(name="orphan")], core.owner)
    await _claim_as(core, "worker-gone", clock.now() - 1)  # its worker died: the lease ran out

    await core.engine.recover()
    assert (await _task(core, live_job)).state == "running"  # a lease that holds is left alone
    orphan = await _task(core, dead_job)
    assert (orphan.state, orphan.lease_owner) == ("queued", None)

    await core.engine.start(core.deps)
    outcome = await core.jobs.wait(dead_job, 10)
    assert outcome.state == "succeeded", outcome.error("")
    [task] = outcome.tasks
    assert task.attempts == 2
    async with core.store.read() as conn:
        log = [r.message for r in await job_q.task_log(conn, task.id)]
    assert any("resuming after an interruption" in line for line in log)
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("running", NODE)


async def test_a_run_that_loses_the_store_stops_without_undoing_and_is_resumed(core: Core) -> None:
    """The store out of reach mid-task (a PostgreSQL restart) is no failure of the task: the
    run neither rolls back what it did on the node nor records an end; once its lease runs out
    a later attempt resumes it. (Found by the chaos soak, bench/chaos.py: the run was failed and
    its rollback deleted the VM on the node, so the next attempt defined it there again.)"""
    real_write, real_create = core.store.write, core.driver.create_vm
    armed = {"fail": False, "creates": 0}

    @asynccontextmanager
    async def write() -> AsyncIterator[Any]:
        if armed["fail"]:
            armed["fail"] = False
            raise StoreUnavailable("the database cannot be reached now (ConnectionRefusedError); try again shortly")
        async with real_write() as conn:
            yield conn

    async def create_vm(spec: Any) -> None:
        await real_create(spec)
        armed["creates"] += 1
        armed["fail"] = armed["creates"] == 1  # the store goes away right after the node made the VM

    core.store.write = write  # type: ignore[method-assign]
    core.driver.create_vm = create_vm  # type: ignore[method-assign]
    job_id, [vm_id] = await core.vms.create([NewVm(name="through-a-restart")], core.owner)
    await core.engine.start(core.deps)
    for _ in range(200):  # the run stops; its task stays running under the lease it held
        if armed["creates"] and not core.engine.running_count:
            break
        await asyncio.sleep(0.02)
    task = await _task(core, job_id)
    assert (task.state, task.attempts) == ("running", 1)
    assert [v.vm_id for v in await core.driver.list_vms()] == [vm_id]  # not undone on the node

    async with core.store.write() as conn:  # its lease runs out
        await conn.execute(update(tasks).where(tasks.c.id == task.id).values(lease_expires=clock.now() - 1))
    await core.engine.recover()
    outcome = await core.jobs.wait(job_id, 10)
    assert outcome.state == "succeeded", outcome.error("")
    assert outcome.tasks[0].attempts == 2
    vm = await core.vms.get(vm_id, core.owner)
    assert vm.status == "running" and [v.vm_id for v in await core.driver.list_vms()] == [vm_id]


async def test_a_delete_given_up_after_the_node_dropped_the_vm_is_complete(core: Core) -> None:
    """A delete interrupted until it is given up ("interrupted 3 times") whose node had already
    removed the VM finishes the delete instead of leaving the VM `error`, holding its claim, in
    the store only (found by the chaos soak, bench/chaos.py)."""
    await core.engine.start(core.deps)
    job_id, [vm_id] = await core.vms.create([NewVm(name="gone")], core.owner)
    assert (await core.jobs.wait(job_id, 10)).state == "succeeded"
    core.engine.wakeup = lambda: None  # type: ignore[method-assign]  # this engine does not take the delete first
    delete_job = await core.vms.delete([vm_id], core.owner)
    await _claim_as(core, "worker-gone", clock.now() - 1)
    async with core.store.write() as conn:  # its third attempt died too, after the node had removed the VM
        await conn.execute(update(tasks).where(tasks.c.job_id == delete_job).values(attempts=core.settings.max_task_attempts))
    await core.driver.delete_vm(vm_id)

    await core.engine.recover()
    outcome = await core.jobs.wait(delete_job, 10)
    assert outcome.state == "failed" and "giving up" in (outcome.tasks[0].error or "")
    with pytest.raises(NotFound):
        await core.vms.get(vm_id, core.owner)
    async with core.store.read() as conn:
        assert (await node_q.get_node(conn, NODE)).cpu_used == 0  # type: ignore[union-attr]


async def test_a_refused_shrink_keeps_its_claim_and_size(core: Core) -> None:
    """A shrink releases its claim only once the node has resized: when the node refuses, the
    VM keeps its size and its claim, though others took every free vCPU meanwhile (the claim was
    released first and could not be taken back, leaving the VM's row smaller than the VM:
    found by the chaos soak, bench/chaos.py)."""
    await core.engine.start(core.deps)
    job_id, [vm_id] = await core.vms.create([NewVm(name="big", resources=Resources(4, 1024, 10))], core.owner)
    assert (await core.jobs.wait(job_id, 10)).state == "succeeded"
    real_resize = core.driver.resize_vm

    async def refused(vm: str, resources: Resources) -> None:
        async with core.store.write() as conn:  # meanwhile another VM takes every free vCPU
            node = await node_q.get_node(conn, NODE)
            assert node is not None
            free = int(node.cpu_total * core.settings.cpu_overcommit) - node.cpu_used
            assert await node_q.claim(conn, NODE, free, 0, 0, (core.settings.cpu_overcommit, 1.0, 1.0), clock.now())
        raise DriverError(f"simulated refusal to resize {vm}")

    core.driver.resize_vm = refused  # type: ignore[method-assign]
    try:
        outcome = await core.jobs.wait(await core.vms.update(vm_id, VmChange(cpu=1), core.owner), 10)
    finally:
        core.driver.resize_vm = real_resize  # type: ignore[method-assign]
    assert outcome.state == "failed" and "simulated refusal" in (outcome.tasks[0].error or "")
    assert (await core.vms.get(vm_id, core.owner)).cpu == 4
    async with core.store.read() as conn:
        node = await node_q.get_node(conn, NODE)
    assert node is not None and node.cpu_used == int(node.cpu_total * core.settings.cpu_overcommit)  # the 4 stayed claimed


async def test_a_vm_is_placed_once_when_two_attempts_race(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    """An earlier attempt of a create, stalled past its lease, places the VM between this
    attempt's read and its placement: this attempt takes that placement instead of placing the
    VM a second time (claiming twice, and sending the VM's later work to another node than the
    one the stalled attempt created it on: found by the chaos soak, bench/chaos.py)."""
    real_load = vm_create.load_vm

    async def load_then_placed_by_the_stalled_attempt(ctx: Any) -> Any:
        vm = await real_load(ctx)
        async with core.store.write() as conn:
            await node_q.claim(conn, NODE, vm.cpu, vm.ram_mb, vm.disk_gb, (core.settings.cpu_overcommit, 1.0, 1.0), clock.now())
            await vm_q.set_status(conn, vm.id, "starting", node_id=NODE, updated_at=clock.now())
        return vm  # as read before: not placed yet

    monkeypatch.setattr(vm_create, "load_vm", load_then_placed_by_the_stalled_attempt)
    job_id, [vm_id] = await core.vms.create([NewVm(name="once", resources=Resources(2, 1024, 10))], core.owner)
    await core.engine.start(core.deps)
    assert (await core.jobs.wait(job_id, 10)).state == "succeeded"
    async with core.store.read() as conn:
        node = await node_q.get_node(conn, NODE)
    assert node is not None and node.cpu_used == 2  # claimed once
    assert (await core.vms.get(vm_id, core.owner)).node_id == NODE


async def test_a_run_that_fails_after_losing_its_lease_does_not_roll_back(core: Core) -> None:
    """A run whose call fails after its task passed to another worker, before it heard so,
    leaves the task to its new holder: no rollback, whose writes would undo the holder's work
    (a stale create's rollback unplaced a VM the next attempt had made, leaving it orphaned on
    its node: found by the chaos soak, bench/chaos.py)."""
    real_create = core.driver.create_vm

    async def taken_over_then_refused(spec: Any) -> None:
        await real_create(spec)
        async with core.store.write() as conn:  # meanwhile the lease passed on: another attempt holds the task
            await conn.execute(
                update(tasks).where(tasks.c.resource_id == spec.id).values(lease_owner="worker-elsewhere", attempts=tasks.c.attempts + 1)
            )
        raise DriverError(f"the agent did not answer the create of {spec.id} in time")

    core.driver.create_vm = taken_over_then_refused  # type: ignore[method-assign]
    job_id, [vm_id] = await core.vms.create([NewVm(name="kept")], core.owner)
    await core.engine.start(core.deps)
    for _ in range(200):
        if not core.engine.running_count and (await _task(core, job_id)).attempts == 2:  # the run has stopped
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    task = await _task(core, job_id)
    assert (task.state, task.lease_owner) == ("running", "worker-elsewhere")  # the holder's, untouched
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("starting", NODE)  # not unplaced, not error
    assert [v.vm_id for v in await core.driver.list_vms()] == [vm_id]  # not deleted from its node


async def test_a_vm_whose_create_failed_meanwhile_is_not_placed_again(core: Core, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another attempt's create failed (the VM `error`, on no node, holding nothing) between
    this attempt's read and its placement: this one places nothing (it placed the VM again,
    counting it against the quota and the node: found by the chaos soak, bench/chaos.py)."""
    real_load = vm_create.load_vm

    async def load_then_failed_elsewhere(ctx: Any) -> Any:
        vm = await real_load(ctx)
        async with core.store.write() as conn:
            await vm_q.set_status(conn, vm.id, "error", node_id=None, error="failed elsewhere", updated_at=clock.now())
        return vm  # as read before: still provisioning

    monkeypatch.setattr(vm_create, "load_vm", load_then_failed_elsewhere)
    job_id, [vm_id] = await core.vms.create([NewVm(name="failed", resources=Resources(2, 1024, 10))], core.owner)
    await core.engine.start(core.deps)
    outcome = await core.jobs.wait(job_id, 10)
    assert outcome.state == "failed" and "nothing to create" in (outcome.tasks[0].error or "")
    async with core.store.read() as conn:
        node = await node_q.get_node(conn, NODE)
    assert node is not None and node.cpu_used == 0
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("error", None) and await core.driver.list_vms() == []


async def test_a_stale_delete_does_not_release_its_vms_claim_twice(core: Core) -> None:
    """A delete's run that stalls past its lease after the node removed the VM, and wakes once
    its successor has forgotten the VM (claim released, record gone), releases nothing: its
    release, done a second time, left the node's claims 1 GB short of what it held, and the
    node over its RAM (found by the chaos soak, bench/chaos.py)."""
    await core.engine.start(core.deps)
    job_id, [gone, kept] = await core.vms.create([NewVm(name="gone", resources=Resources(2, 1024, 10)), NewVm(name="kept")], core.owner)
    assert (await core.jobs.wait(job_id, 10)).state == "succeeded"
    real_delete = core.driver.delete_vm

    async def deleted_then_overtaken(vm_id: str) -> None:
        await real_delete(vm_id)
        vm = await core.vms.get(vm_id, core.owner)
        async with core.store.write() as conn:  # meanwhile the next attempt finished the delete
            await node_q.release(conn, NODE, vm.cpu, vm.ram_mb, vm.disk_gb, clock.now())
            await vm_q.delete_vm(conn, vm_id)
            await conn.execute(
                update(tasks)
                .where(tasks.c.resource_id == vm_id, tasks.c.state == "running")
                .values(lease_owner="worker-elsewhere", attempts=tasks.c.attempts + 1)
            )

    core.driver.delete_vm = deleted_then_overtaken  # type: ignore[method-assign]
    job_id = await core.vms.delete([gone], core.owner)
    for _ in range(200):
        if not core.engine.running_count:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    async with core.store.read() as conn:
        node = await node_q.get_node(conn, NODE)
    left = await core.vms.get(kept, core.owner)
    assert node is not None and (node.cpu_used, node.ram_mb_used, node.disk_gb_used) == (left.cpu, left.ram_mb, left.disk_gb)


async def test_a_running_vm_shrunk_keeps_its_claim_until_it_restarts(core: Core) -> None:
    """A running VM keeps the CPU and RAM it was started with until it is restarted, so its
    node's claim shrinks then, not at the resize: released at once, the room went to other VMs
    while this one still used it, and the node ran over its RAM (found by the chaos soak,
    bench/chaos.py). Counted the same way when a replica recounts the claims at its start."""
    await core.engine.start(core.deps)
    job_id, [vm_id] = await core.vms.create([NewVm(name="shrunk", resources=Resources(2, 2048, 10))], core.owner)
    assert (await core.jobs.wait(job_id, 10)).state == "succeeded"

    async def used() -> tuple[int, int, int]:
        async with core.store.read() as conn:
            node = await node_q.get_node(conn, NODE)
        assert node is not None
        return node.cpu_used, node.ram_mb_used, node.disk_gb_used

    assert (await core.jobs.wait(await core.vms.update(vm_id, VmChange(cpu=1, ram_mb=1024), core.owner), 10)).state == "succeeded"
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.cpu, vm.ram_mb) == (1, 1024) and vm.pending == ["cpu", "ramMb"]
    assert await used() == (2, 2048, 10)  # what it still runs with
    async with core.store.write() as conn:
        await node_q.recompute_usage(conn, clock.now())
    assert await used() == (2, 2048, 10)
    assert (await core.jobs.wait(await core.vms.power(vm_id, "stop", core.owner), 10)).state == "succeeded"
    assert await used() == (1, 1024, 10)  # stopped: the new shape is all it holds
    assert (await core.jobs.wait(await core.vms.power(vm_id, "start", core.owner), 10)).state == "succeeded"
    assert await used() == (1, 1024, 10)
    async with core.store.write() as conn:
        await node_q.recompute_usage(conn, clock.now())
    assert await used() == (1, 1024, 10)


async def test_a_clean_up_the_store_cannot_record_is_done_again(core: Core) -> None:
    """A failed create whose clean-up meets the store out of reach (a PostgreSQL restart) does
    not end its task: a later attempt fails again and cleans up, so the VM is not left placed
    on a node that never had it, holding its claim (found by the chaos soak, bench/chaos.py)."""
    real_rollback = vm_create.VmCreate.rollback
    calls = {"n": 0}

    async def rollback(self: Any, ctx: Any, error: str, cancelled: bool) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StoreUnavailable("the database cannot be reached now (ConnectionRefusedError); try again shortly")
        await real_rollback(self, ctx, error, cancelled)

    async def refused(spec: Any) -> None:
        raise DriverError(f"simulated failure creating {spec.name}")

    core.driver.create_vm = refused  # type: ignore[method-assign]
    vm_create.VmCreate.rollback = rollback  # type: ignore[method-assign]
    try:
        job_id, [vm_id] = await core.vms.create([NewVm(name="twice", resources=Resources(2, 1024, 10))], core.owner)
        await core.engine.start(core.deps)
        for _ in range(200):
            if calls["n"] and not core.engine.running_count:
                break
            await asyncio.sleep(0.02)
        task = await _task(core, job_id)
        assert (task.state, task.attempts) == ("running", 1)  # no end recorded
        async with core.store.write() as conn:  # its lease runs out
            await conn.execute(update(tasks).where(tasks.c.id == task.id).values(lease_expires=clock.now() - 1))
        await core.engine.recover()
        outcome = await core.jobs.wait(job_id, 10)
    finally:
        vm_create.VmCreate.rollback = real_rollback  # type: ignore[method-assign]
    assert outcome.state == "failed" and calls["n"] == 2
    vm = await core.vms.get(vm_id, core.owner)
    assert (vm.status, vm.node_id) == ("error", None)
    async with core.store.read() as conn:
        node = await node_q.get_node(conn, NODE)
    assert node is not None and (node.cpu_used, node.ram_mb_used) == (0, 0)
