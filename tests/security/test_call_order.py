"""A node agent refuses a changing call older than one it already took on the same resource.

The chaos soak found the case: a create request sat in a slow network to an agent past its
run's lease; the task's next run found the create had not happened, the client deleted the VM
(the delete found nothing on the node), and then the held request landed and created the VM:
a VM on the node the store does not know of, counted against nobody's quota. Each changing
call of a run now carries its order (task seq, attempt, call number; `CallOrder`), and the
agent keeps the newest order per resource, deleted ones included, across restarts.
"""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane import ids
from vmplane.agent.calls import KEEP_SECONDS, CallLedger
from vmplane.domain import Resources, VmSpec
from vmplane.drivers import remote_wire as wire
from vmplane.drivers.base import CallOrder, call_order
from vmplane.drivers.sim import SimDriver
from vmplane.errors import InvalidRequest, Superseded
from vmplane.jobs.fencing import FencedDriver, LeaseLost

from ..support_agent import AgentServer


class HeldCreates(httpx.AsyncBaseTransport):
    """The network to the agent, holding back every create request until `release` is set."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/vms"):
            self.holding.set()
            await self.release.wait()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def spec_of(vm_id: str) -> VmSpec:
    return VmSpec(id=vm_id, uuid=ids.new_uuid(), name="held", resources=Resources(cpu=1, ram_mb=256, disk_gb=1))


async def as_run(order: CallOrder, call: Any) -> Any:
    """`call` made as a run of a task makes it (its order set, in an asyncio task of its own)."""

    async def run() -> Any:
        call_order.set(order)
        return await call

    return await asyncio.create_task(run())


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentServer]:
    server = await AgentServer(SimDriver(hostname="fenced", state_dir=tmp_path / "sim"), tmp_path / "agent").start()
    yield server
    await server.stop()


async def test_a_create_held_in_the_network_past_the_vms_delete_is_refused(agent: AgentServer) -> None:
    vm = ids.new_id("vm")
    net = HeldCreates()
    slow, fast = agent.remote(transport=net), agent.remote()
    try:
        create = asyncio.create_task(as_run(CallOrder(10, 1, 2, vm), slow.create_vm(spec_of(vm))))
        await asyncio.wait_for(net.holding.wait(), 5)
        await as_run(CallOrder(11, 1, 1, vm), fast.delete_vm(vm))  # the delete's task: nothing there yet
        net.release.set()
        with pytest.raises(Superseded, match="older than one this node already took"):
            await create
        assert await agent.driver.get_vm(vm) is None, "the stale create made a VM the store does not know of"
    finally:
        await slow.close()
        await fast.close()


async def test_the_orders_taken_outlive_the_agent(tmp_path: Path) -> None:
    vm = ids.new_id("vm")
    first = await AgentServer(SimDriver(hostname="n", state_dir=tmp_path / "sim"), tmp_path / "agent").start()
    remote = first.remote()
    await as_run(CallOrder(5, 1, 1, vm), remote.create_vm(spec_of(vm)))
    await as_run(CallOrder(6, 1, 1, vm), remote.delete_vm(vm))
    await remote.close()
    await first.stop()
    again = await AgentServer(SimDriver(hostname="n", state_dir=tmp_path / "sim"), tmp_path / "agent").start()
    remote = again.remote()
    try:
        with pytest.raises(Superseded):
            await as_run(CallOrder(5, 3, 1, vm), remote.create_vm(spec_of(vm)))
        assert await again.driver.get_vm(vm) is None
        await as_run(CallOrder(7, 1, 1, vm), remote.create_vm(spec_of(vm)))  # a later task may bring it back (a move, say)
        assert await again.driver.get_vm(vm) is not None
    finally:
        await remote.close()
        await again.stop()


async def test_a_stale_call_stops_its_run_as_one_that_lost_its_lease(agent: AgentServer) -> None:
    vm = ids.new_id("vm")

    class StaleRun:
        async def fence(self) -> None:
            return None

        def next_call(self) -> CallOrder:
            return CallOrder(3, 1, 1, vm)

    remote = agent.remote()
    try:
        await as_run(CallOrder(4, 1, 1, vm), remote.delete_vm(vm))
        with pytest.raises(LeaseLost, match="refused a stale call"):
            await FencedDriver(remote, StaleRun()).create_vm(spec_of(vm))  # type: ignore[attr-defined]
        assert await agent.driver.get_vm(vm) is None
    finally:
        await remote.close()


async def test_orders_about_other_resources_and_calls_without_one_pass(agent: AgentServer) -> None:
    vm, snap = ids.new_id("vm"), ids.new_id("snap")
    remote = agent.remote()
    try:
        await as_run(CallOrder(9, 1, 1, vm), remote.create_vm(spec_of(vm)))
        await remote.start_vm(vm)  # not a run's call (no order): neither checked nor marked
        # a snapshot's task (seq 8, queued before the create's on its own resource) runs beside
        # the VM's tasks: its order is about the snapshot, so the VM's mark does not refuse it
        await as_run(CallOrder(8, 1, 1, snap), remote.snapshot_vm(vm, snap))
        await as_run(CallOrder(8, 1, 2, snap), remote.delete_snapshot(snap))
        with pytest.raises(Superseded):
            await as_run(CallOrder(8, 1, 1, snap), remote.snapshot_vm(vm, snap))
        assert agent.state.calls.mark(vm) == (9, 1, 1)
        assert agent.state.calls.mark(snap) == (8, 1, 2)
    finally:
        await remote.close()


@pytest.mark.parametrize("value", ["{vm} 1 2", "../{vm} 1 1 1", "{vm} 1 -1 1", "{vm} 1 1 99999999999999999999", "{vm} 1 1 1 1", "{vm} 1 1 1e3"])
async def test_a_malformed_order_is_refused_before_anything_happens(agent: AgentServer, value: str) -> None:
    vm = ids.new_id("vm")
    value = value.format(vm=vm)
    await agent.driver.create_vm(spec_of(vm))
    async with httpx.AsyncClient(base_url=agent.url + wire.AGENT_PREFIX, headers={"Authorization": f"Bearer {agent.key}"}) as http:
        resp = await http.delete(f"/vms/{vm}", headers={wire.ORDER_HEADER: value})
    assert resp.status_code == 400
    assert resp.json()["details"]["field"] == wire.ORDER_HEADER
    assert await agent.driver.get_vm(vm) is not None


async def test_calls_on_one_resource_with_orders_run_one_at_a_time(tmp_path: Path) -> None:
    """A call that passed the check runs to its end before a newer one starts: the stale create
    that got in just before the delete is carried out before it, never beside it."""
    ledger = CallLedger(tmp_path / "calls.sqlite")
    seen: list[str] = []
    inside = asyncio.Event()
    go_on = asyncio.Event()

    async def call(order: CallOrder, name: str, block: bool) -> None:
        async with ledger.taking({wire.ORDER_HEADER: wire.order_to_wire(order)}, order.resource):
            seen.append(f"{name} in")
            if block:
                inside.set()
                await go_on.wait()
            seen.append(f"{name} out")

    a, b = ids.new_id("vm"), ids.new_id("vm")
    first = asyncio.create_task(call(CallOrder(1, 1, 1, a), "create", True))
    await inside.wait()
    second = asyncio.create_task(call(CallOrder(2, 1, 1, a), "delete", False))
    other = asyncio.create_task(call(CallOrder(1, 1, 1, b), "other", False))
    await other
    await asyncio.sleep(0.05)
    assert seen == ["create in", "other in", "other out"]
    go_on.set()
    await asyncio.gather(first, second)
    assert seen[-2:] == ["delete in", "delete out"]
    ledger.close()


def test_marks_are_dropped_a_day_after_their_last_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time as time_mod

    ledger = CallLedger(tmp_path / "calls.sqlite")
    ledger._take(CallOrder(1, 1, 1, "vm-old"))
    ledger.close()
    real = time_mod.time()
    monkeypatch.setattr("vmplane.agent.calls.time.time", lambda: real + KEEP_SECONDS + 1)
    ledger = CallLedger(tmp_path / "calls.sqlite")
    ledger._take(CallOrder(2, 1, 1, "vm-new"))
    assert ledger.mark("vm-old") is None and ledger.mark("vm-new") == (2, 1, 1)
    ledger.close()


def test_the_order_header_round_trips() -> None:
    vm = ids.new_id("vm")
    order = CallOrder(12, 3, 4, vm)
    assert wire.order_from_wire(wire.order_to_wire(order)) == order
    assert CallOrder(12, 3, 4, "x") == order  # the resource is not part of the comparison
    assert CallOrder(12, 2, 99, vm) < order < CallOrder(13, 1, 1, vm)
    with pytest.raises(InvalidRequest):
        wire.order_from_wire("")
