"""The sim driver against the driver contract, plus what only the sim has: faults, capacity."""

import json
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


def calls(state_dir: Path, hostname: str = "s") -> list[dict]:
    path = state_dir / f"{hostname}.calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_call_log_says_what_each_call_really_did(tmp_path: Path) -> None:
    d = SimDriver(hostname="s", cpu=4, ram_mb=4096, disk_gb=10, latency=0, state_dir=tmp_path, call_log=True)
    d.overcommit = (2.0, 1.0, 1.0)
    await d.open()
    a = spec("a", cpu=3)
    await d.create_vm(a)
    await d.create_vm(a)  # a retry of the same create: the VM is there already
    with pytest.raises(NoCapacity):
        await d.create_vm(spec("b", cpu=6))
    await d.start_vm(a.id)
    await d.start_vm(a.id)
    await d.delete_vm(a.id)
    await d.delete_vm(a.id)
    with pytest.raises(DriverError):
        await d.stop_vm(a.id)
    await d.close()
    log = calls(tmp_path)
    assert [(c["call"], c["effect"]) for c in log] == [
        ("create_vm", "done"), ("create_vm", "noop"), ("create_vm", "error"), ("start_vm", "done"),
        ("start_vm", "noop"), ("delete_vm", "done"), ("delete_vm", "noop"), ("stop_vm", "error"),
    ]  # fmt: skip
    assert [c["held"] for c in log[:3]] == [[3, 256, 1]] * 3
    assert log[5]["held"] == [0, 0, 0] and log[5]["resources"] == [3, 256, 1]
    assert all(c["capacity"] == [8.0, 4096.0, 10.0] and c["node"] == "s" for c in log)
    assert log[0]["vm"] == a.id and log[0]["resources"] == [3, 256, 1] and log[0]["error"] is None
    assert "cannot hold" in log[2]["error"] and log[2]["resources"] == [6, 256, 1]
    assert "not defined" in log[7]["error"]
    assert all(isinstance(c["t"], float) for c in log) and [c["t"] for c in log] == sorted(c["t"] for c in log)


async def test_call_log_keeps_earlier_lines_across_a_restart(tmp_path: Path) -> None:
    first = SimDriver(hostname="s", latency=0, state_dir=tmp_path, call_log=True)
    await first.open()
    a = spec("a")
    await first.create_vm(a)
    again = SimDriver(hostname="s", latency=0, state_dir=tmp_path, call_log=True)  # the agent restarted
    await again.open()
    await again.create_vm(a)
    await again.snapshot_vm(a.id, "snap-1")
    await again.delete_snapshot("snap-1")
    await again.delete_snapshot("snap-1")
    log = calls(tmp_path)
    assert [(c["call"], c["effect"], c["snapshot"]) for c in log] == [
        ("create_vm", "done", None), ("create_vm", "noop", None), ("snapshot_vm", "done", "snap-1"),
        ("delete_snapshot", "done", "snap-1"), ("delete_snapshot", "noop", "snap-1"),
    ]  # fmt: skip


async def test_no_call_log_when_off(tmp_path: Path) -> None:
    d = SimDriver(hostname="s", latency=0, state_dir=tmp_path)
    await d.open()
    await d.create_vm(spec("a"))
    assert (tmp_path / "s.json").exists()
    assert not (tmp_path / "s.calls.jsonl").exists()


async def test_a_resize_while_stopped_is_what_the_next_start_runs_with() -> None:
    """A shape left pending by a resize while the VM ran does not outlive a later resize made
    while it is stopped (the next start ran the stale pending shape: found by the chaos soak)."""
    d = SimDriver(hostname="s", latency=0)
    s = spec("reshaped")
    await d.create_vm(s)
    await d.start_vm(s.id)
    await d.resize_vm(s.id, Resources(2, 4096, 1))  # waits for a restart
    await d.stop_vm(s.id)
    await d.resize_vm(s.id, Resources(2, 1024, 1))
    await d.start_vm(s.id)
    runtime = await d.get_vm(s.id)
    assert runtime is not None and runtime.running_spec == {"cpu": 2, "ramMb": 1024, "diskGb": 1}
