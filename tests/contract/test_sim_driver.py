"""The sim driver against the driver contract, plus what only the sim has: faults, capacity."""

from pathlib import Path

import pytest

from vmplane import ids
from vmplane.domain import Resources, VmSpec
from vmplane.drivers.base import HypervisorDriver, PowerState
from vmplane.drivers.sim import SimDriver, SimFaults
from vmplane.errors import DriverError, NoCapacity

from .driver_contract import DriverContract


class TestSimDriver(DriverContract):
    async def make_driver(self, state_dir: Path) -> HypervisorDriver:
        return SimDriver(hostname="sim-test", cpu=8, ram_mb=8192, disk_gb=100, latency=0.001, state_dir=state_dir)


def spec(name: str, cpu: int = 1) -> VmSpec:
    return VmSpec(id=ids.new_id("vm"), uuid=ids.new_uuid(), name=name, resources=Resources(cpu, 256, 1))


async def test_fault_by_name_pattern_leaves_nothing() -> None:
    d = SimDriver(hostname="s", latency=0, faults=SimFaults(name_pattern="^bad-"))
    with pytest.raises(DriverError, match="simulated failure"):
        await d.create_vm(spec("bad-1"))
    assert await d.list_vms() == []
    await d.create_vm(spec("good-1"))


async def test_fault_fraction_is_deterministic() -> None:
    faults = SimFaults(fraction=0.3, seed=7)
    names = [f"vm-{i}" for i in range(1000)]
    picked = [n for n in names if faults.should_fail(spec(n))]
    assert picked == [n for n in names if SimFaults(fraction=0.3, seed=7).should_fail(spec(n))]
    assert 220 < len(picked) < 380


async def test_sim_holds_capacity_honestly() -> None:
    d = SimDriver(hostname="s", cpu=4, latency=0)
    await d.create_vm(spec("a", cpu=3))
    with pytest.raises(NoCapacity):
        await d.create_vm(spec("b", cpu=2))
    await d.create_vm(spec("c", cpu=1))


async def test_shutdown_forces_a_guest_that_ignores_acpi() -> None:
    d = SimDriver(hostname="s", latency=0, faults=SimFaults(ignore_acpi_pattern="stubborn"))
    s = spec("stubborn-1")
    await d.create_vm(s)
    await d.start_vm(s.id)
    assert await d.shutdown_vm(s.id, timeout=0.05) is False
    assert (await d.get_vm(s.id)).state == PowerState.STOPPED
