"""The qemu driver against the driver contract, plus what only real VMs show: boot, exec,
console, stats, crash detection, re-attach, port forwarding, cleanup. Real guests are the
tiny image (built once into the shared cache); the command line, the seed ISO and the guest
agent client also have unit tests here that need no QEMU.

VMPLANE_REQUIRE_QEMU=1 turns "qemu-system-x86_64 missing" from a skip into a failure;
VMPLANE_TEST_ACCEL=auto|kvm|tcg picks the accelerator (default auto: probes KVM).
"""

import asyncio
import base64
import dataclasses
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from vmplane import ids
from vmplane.domain import Resources, VmSpec
from vmplane.drivers.base import HypervisorDriver, PowerState
from vmplane.drivers.qemu import QemuDriver, build_argv, pick_accel
from vmplane.drivers.qemu.accel import probe_kvm
from vmplane.drivers.qemu.agent import AgentNotResponding, GuestAgent
from vmplane.drivers.qemu.layout import Forward, KernelBoot, VmConfig, VmPaths, mac_for
from vmplane.drivers.qemu.seed import read_seed_iso, seed_files, volume_id, write_seed_iso
from vmplane.drivers.qemu.unix import connect_unix
from vmplane.errors import DriverError, InvalidState
from vmplane.images.tiny import BOOT_COMPLETE_LINE, INIT_START_LINE, TinyImage, build_tiny_image, tiny_dir

from .driver_contract import DriverContract

HAVE_QEMU = shutil.which("qemu-system-x86_64") is not None and shutil.which("qemu-img") is not None
REQUIRE_QEMU = os.environ.get("VMPLANE_REQUIRE_QEMU") == "1"
needs_qemu = pytest.mark.skipif(not HAVE_QEMU and not REQUIRE_QEMU, reason="qemu-system-x86_64 / qemu-img not installed")
shared_loop = pytest.mark.asyncio(loop_scope="module")

BOOT_TIMEOUT = 120.0
"""Seconds a tiny guest may take to print its boot line (~5 s alone under TCG)."""
TEST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0LWtleS1mb3Itdm1wbGFuZS10ZXN0cw vmplane-test"


def require_qemu() -> None:
    if not HAVE_QEMU:
        pytest.fail("VMPLANE_REQUIRE_QEMU=1 but qemu-system-x86_64 / qemu-img are not installed")


@functools.cache
def tiny_image() -> TinyImage:
    """The tiny guest image, built once into the cache the server uses too."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return build_tiny_image(tiny_dir(cache / "vmplane" / "images"))


_accel: tuple[str, str] | None = None


async def accel_for_tests() -> str:
    global _accel
    if _accel is None:
        _accel = await pick_accel(os.environ.get("VMPLANE_TEST_ACCEL", "auto"), tiny_image())
        print(f"[qemu] accelerator {_accel[0]}: {_accel[1]}")
    return _accel[0]


async def new_driver(state_dir: Path, **kw: Any) -> QemuDriver:
    require_qemu()
    return QemuDriver(state_dir=state_dir, hostname="qemu-test", accel=await accel_for_tests(), **kw)


def tiny_spec(name: str | None = None, resources: Resources = Resources(1, 256, 2), **extra: Any) -> VmSpec:
    image = tiny_image()
    vm_id = ids.new_id("vm")
    return VmSpec(
        id=vm_id,
        uuid=ids.new_uuid(),
        name=name or "t-" + vm_id[3:],
        resources=resources,
        template_id="tpl-tiny00000000",
        template_image=str(image.disk),
        template_boot={"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline},
        extra=extra,
    )


def vm_processes(vm_dir: Path) -> list[int]:
    """Live processes whose command line mentions the VM's directory."""
    needle = os.fsencode(vm_dir) + b"/"
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


async def wait_for_console(driver: HypervisorDriver, vm_id: str, text: str, timeout: float = BOOT_TIMEOUT, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while (await driver.console_log(vm_id, 1 << 20)).decode(errors="replace").count(text) < count:
        if time.monotonic() > deadline:
            tail = (await driver.console_log(vm_id, 2000)).decode(errors="replace")
            raise AssertionError(f"{text!r} not on the console after {timeout:g} s; console ends with:\n{tail}")
        await asyncio.sleep(0.1)


async def wait_for_state(driver: HypervisorDriver, vm_id: str, state: PowerState, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        rt = await driver.get_vm(vm_id)
        if rt is not None and rt.state == state:
            return rt
        if time.monotonic() > deadline:
            raise AssertionError(f"{vm_id} is {rt and rt.state}, not {state}, after {timeout:g} s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the contract --------------------------------------------------------------------------


@pytest.mark.slow
@needs_qemu
class TestQemuDriver(DriverContract):
    async def make_driver(self, state_dir: Path) -> HypervisorDriver:
        return await new_driver(state_dir)

    template_boot: dict[str, str] | None = None

    async def prepare_image(self, driver: HypervisorDriver, tmp_path: Path) -> tuple[str | None, str | None]:
        image = tiny_image()
        self.template_boot = {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}
        return "tpl-tiny00000000", str(image.disk)


# -- one booted guest shared by the tests below (TCG boots cost ~5 s each) -----------------


class Guest:
    def __init__(self, driver: QemuDriver, spec: VmSpec, host_port: int, spare: VmSpec) -> None:
        self.driver, self.spec, self.id, self.host_port = driver, spec, spec.id, host_port
        self.spare = spare
        """a second guest, booted alongside, for the test that powers a guest off unwatched"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def guest(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Guest]:
    if not HAVE_QEMU and not REQUIRE_QEMU:
        pytest.skip("qemu-system-x86_64 / qemu-img not installed")
    state = tmp_path_factory.mktemp("qemu") / "state"
    driver = await new_driver(state)
    await driver.open()
    host_port = free_port()
    spec = tiny_spec(
        name="shared-guest",
        cloudInit={"userData": "#!/bin/sh\necho \"user-data ran for $(hostname)\" > /root/from-user-data\n"},
        sshKeys=[TEST_KEY],
        expose=[{"port": 8000, "hostPort": host_port, "protocol": "tcp"}],
    )
    spare = tiny_spec(name="spare-guest")
    t0 = time.monotonic()
    await driver.create_vm(spec)
    t1 = time.monotonic()
    await driver.start_vm(spec.id)
    t2 = time.monotonic()
    await driver.create_vm(spare)
    await driver.start_vm(spare.id)
    await wait_for_console(driver, spec.id, BOOT_COMPLETE_LINE)
    t3 = time.monotonic()
    await wait_for_console(driver, spare.id, BOOT_COMPLETE_LINE)
    print(f"[timing] create {t1 - t0:.3f} s, start->running {t2 - t1:.3f} s, start->boot line {t3 - t1:.2f} s"
          f" (two guests booting), both up after {time.monotonic() - t1:.2f} s")
    try:
        yield Guest(driver, spec, host_port, spare)
    finally:
        await driver.open()
        for vm in (spec, spare):
            await driver.delete_vm(vm.id)
        await driver.close()


@pytest.mark.slow
@needs_qemu
class TestBootedGuest:
    """In file order; the last ones reboot and power the guest off."""

    @shared_loop
    async def test_boot_lines_reach_the_console_log(self, guest: Guest) -> None:
        log = (await guest.driver.console_log(guest.id, 1 << 20)).decode(errors="replace")
        assert INIT_START_LINE in log and BOOT_COMPLETE_LINE in log
        assert log.index(INIT_START_LINE) < log.index(BOOT_COMPLETE_LINE)
        assert len(await guest.driver.console_log(guest.id, 10)) == 10

    @shared_loop
    async def test_exec_reads_what_user_data_wrote(self, guest: Guest) -> None:
        t = time.monotonic()
        r = await guest.driver.exec_vm(guest.id, ["cat", "/root/from-user-data"], timeout=20, max_output=4096)
        print(f"[timing] exec round trip {time.monotonic() - t:.3f} s")
        assert r.exit_code == 0 and not r.timed_out
        assert r.stdout == b"user-data ran for shared-guest\n"

    @shared_loop
    async def test_ssh_key_lands_in_authorized_keys(self, guest: Guest) -> None:
        r = await guest.driver.exec_vm(guest.id, ["cat", "/root/.ssh/authorized_keys"], timeout=20, max_output=4096)
        assert r.exit_code == 0
        assert TEST_KEY.encode() + b"\n" in r.stdout  # whole, comment included

    @shared_loop
    async def test_exec_reports_status_truncation_and_timeouts(self, guest: Guest) -> None:
        d, vm = guest.driver, guest.id
        r = await d.exec_vm(vm, ["sh", "-c", "echo 0123456789; echo oops >&2; exit 3"], timeout=20, max_output=4)
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"0123", b"oops")
        assert r.stdout_truncated and r.stderr_truncated
        r = await d.exec_vm(vm, ["no-such-program"], timeout=20, max_output=4096)
        assert r.exit_code == 127 and b"no-such-program" in r.stderr
        t = time.monotonic()
        r = await d.exec_vm(vm, ["sleep", "30"], timeout=0.5, max_output=4096)
        assert r.timed_out and r.exit_code is None and time.monotonic() - t < 5
        r = await d.exec_vm(vm, ["sh", "-c", "pgrep -x sleep || echo gone"], timeout=20, max_output=4096)
        assert r.stdout.strip() == b"gone"  # the timed-out command was killed

    @shared_loop
    async def test_stats_measure_the_running_guest(self, guest: Guest) -> None:
        first = await guest.driver.stats_vm(guest.id)
        await asyncio.sleep(0.3)
        s = await guest.driver.stats_vm(guest.id)
        assert s.uptime_seconds > first.uptime_seconds > 0
        assert s.memory_mb > 0 and s.memory_total_mb == 256
        assert s.cpu_percent >= 0
        assert s.disk_read_bytes > 0  # the guest mounted its disk
        assert s.net_rx_bytes > 0  # DHCP went over eth0

    @shared_loop
    async def test_console_round_trip(self, guest: Guest) -> None:
        marker = f"hi-{secrets.token_hex(4)}"
        reader, writer = await guest.driver.open_console(guest.id)
        try:
            writer.write(f"\necho {marker}-$((6*7))\n".encode())
            await writer.drain()
            seen = b""
            async with asyncio.timeout(20):
                while f"{marker}-42".encode() not in seen:
                    chunk = await reader.read(4096)
                    assert chunk, "console closed"
                    seen += chunk
        finally:
            writer.close()
        await wait_for_console(guest.driver, guest.id, f"{marker}-42", timeout=5)

    @shared_loop
    async def test_expose_forwards_a_host_port(self, guest: Guest) -> None:
        await guest.driver.exec_vm(
            guest.id,
            ["sh", "-c", "nc -l -p 8000 -e echo hello-from-guest </dev/null >/dev/null 2>&1 &"],
            timeout=20,
            max_output=4096,
        )
        got = b""
        deadline = time.monotonic() + 30
        while b"hello-from-guest" not in got:  # slirp holds a connection made before the guest listens
            assert time.monotonic() < deadline, f"nothing from 127.0.0.1:{guest.host_port} (last read {got!r})"
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", guest.host_port), 2)
                try:
                    got = await asyncio.wait_for(reader.read(100), 2)
                finally:
                    writer.close()
            except (TimeoutError, OSError):
                await asyncio.sleep(0.2)

    @shared_loop
    async def test_calls_need_a_running_vm(self, guest: Guest) -> None:
        d = guest.driver
        spec = tiny_spec()
        await d.create_vm(spec)
        try:
            with pytest.raises(InvalidState):
                await d.exec_vm(spec.id, ["true"], timeout=5, max_output=10)
            with pytest.raises(InvalidState):
                await d.stats_vm(spec.id)
            with pytest.raises(InvalidState):
                await d.open_console(spec.id)
            assert await d.console_log(spec.id, 100) == b""
        finally:
            await d.delete_vm(spec.id)

    @shared_loop
    async def test_reboot_restarts_the_guest_in_the_same_process(self, guest: Guest) -> None:
        d, vm = guest.driver, guest.id
        before = await d.get_vm(vm)
        pid = int((d.state_dir / "vms" / vm / "qemu.pid").read_text())
        t = time.monotonic()
        await d.reboot_vm(vm)  # through the guest agent: the guest runs `reboot -f`
        await wait_for_console(d, vm, BOOT_COMPLETE_LINE, count=2)
        print(f"[timing] reboot -> boot line {time.monotonic() - t:.2f} s")
        after = await d.get_vm(vm)
        assert after.state == PowerState.RUNNING and after.started_at == before.started_at
        assert int((d.state_dir / "vms" / vm / "qemu.pid").read_text()) == pid
        log = (await d.console_log(vm, 1 << 20)).decode(errors="replace")
        assert "user-data already ran" in log  # once per instance, remembered on the disk
        r = await d.exec_vm(vm, ["cat", "/root/from-user-data"], timeout=30, max_output=100)
        assert r.exit_code == 1  # the initramfs is fresh; the script did not run again

    @shared_loop
    async def test_guest_poweroff_is_a_stop_not_a_crash(self, guest: Guest) -> None:
        d, vm = guest.driver, guest.id
        vm_dir = d.state_dir / "vms" / vm
        reader, writer = await d.open_console(vm)
        try:  # stay connected: QEMU drops what the guest has not read yet when we hang up
            writer.write(b"\npoweroff -f\n")
            await writer.drain()
            rt = await wait_for_state(d, vm, PowerState.STOPPED, timeout=20)
        finally:
            writer.close()
        assert rt.error is None
        assert vm_processes(vm_dir) == []
        assert not any((vm_dir / n).exists() for n in ("qmp.sock", "qga.sock", "serial.sock", "qemu.pid", "run.json"))

    @shared_loop
    async def test_a_guest_that_powered_off_unwatched_is_stopped_on_reattach(self, guest: Guest) -> None:
        d, vm = guest.driver, guest.spare.id
        vm_dir = d.state_dir / "vms" / vm
        await d.close()  # no driver watches now
        reader, writer = await asyncio.open_unix_connection(sock=connect_unix(vm_dir / "serial.sock"))
        try:
            writer.write(b"\npoweroff -f\n")
            await writer.drain()
            await wait_for_console(d, vm, "reboot: Power down", timeout=20)
        finally:
            writer.close()
        assert len(vm_processes(vm_dir)) == 1  # QEMU waits, paused (-no-shutdown)
        await d.open()  # re-attaching notices the powered-off guest and ends its QEMU
        rt = await wait_for_state(d, vm, PowerState.STOPPED, timeout=20)
        assert rt.error is None and vm_processes(vm_dir) == []


# -- lifecycle tests that need a QEMU process but no booted guest ---------------------------


@pytest.fixture
async def qdriver(tmp_path: Path) -> AsyncIterator[QemuDriver]:
    driver = await new_driver(tmp_path / "state")
    await driver.open()
    yield driver
    for rt in await driver.list_vms():
        await driver.delete_vm(rt.vm_id)
    await driver.close()


@pytest.mark.slow
@needs_qemu
class TestQemuLifecycle:
    async def test_a_killed_qemu_is_reported_crashed(self, qdriver: QemuDriver) -> None:
        spec = tiny_spec()
        await qdriver.create_vm(spec)
        await qdriver.start_vm(spec.id)
        pid = int((qdriver.state_dir / "vms" / spec.id / "qemu.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        rt = await wait_for_state(qdriver, spec.id, PowerState.CRASHED)
        assert rt.error and "signal 9" in rt.error
        with pytest.raises(InvalidState):
            await qdriver.reboot_vm(spec.id)
        again = await new_driver(qdriver.state_dir)  # a crash is still a crash after a restart
        await again.open()
        rt = await again.get_vm(spec.id)
        assert rt.state == PowerState.CRASHED and rt.error
        await again.close()
        await qdriver.start_vm(spec.id)  # and the VM starts again
        assert (await qdriver.get_vm(spec.id)).state == PowerState.RUNNING

    async def test_a_fresh_driver_reattaches_and_stops_a_running_vm(self, qdriver: QemuDriver) -> None:
        spec = tiny_spec()
        await qdriver.create_vm(spec)
        await qdriver.start_vm(spec.id)
        before = await qdriver.get_vm(spec.id)
        await qdriver.close()
        again = await new_driver(qdriver.state_dir)
        await again.open()
        try:
            rt = await again.get_vm(spec.id)
            assert rt.state == PowerState.RUNNING and rt.started_at == before.started_at
            assert (await again.stats_vm(spec.id)).uptime_seconds > 0  # QMP works from here
            await again.stop_vm(spec.id)
            assert (await again.get_vm(spec.id)).state == PowerState.STOPPED
            assert vm_processes(again.state_dir / "vms" / spec.id) == []
        finally:
            await again.close()
        await qdriver.open()

    async def test_delete_leaves_no_process_socket_or_file(self, qdriver: QemuDriver) -> None:
        spec = tiny_spec()
        vm_dir = qdriver.state_dir / "vms" / spec.id
        await qdriver.create_vm(spec)
        await qdriver.start_vm(spec.id)
        assert len(vm_processes(vm_dir)) == 1 and (vm_dir / "qmp.sock").exists()
        await qdriver.delete_vm(spec.id)
        assert vm_processes(vm_dir) == []
        assert not vm_dir.exists()
        assert list((qdriver.state_dir / "vms").iterdir()) == []
        await qdriver.delete_vm(spec.id)

    async def test_a_failed_start_leaves_the_vm_stopped_and_clean(self, qdriver: QemuDriver) -> None:
        with socket.socket() as busy:  # QEMU cannot forward a port that is taken
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            spec = tiny_spec(expose=[{"port": 22, "hostPort": port, "protocol": "tcp"}])
            vm_dir = qdriver.state_dir / "vms" / spec.id
            await qdriver.create_vm(spec)
            with pytest.raises(DriverError, match="host forwarding"):
                await qdriver.start_vm(spec.id)
        assert (await qdriver.get_vm(spec.id)).state == PowerState.STOPPED
        assert vm_processes(vm_dir) == []
        left = {p.name for p in vm_dir.iterdir()}
        assert {"disk.qcow2", "seed.iso", "vm.json"} <= left <= {"disk.qcow2", "seed.iso", "vm.json", "qemu.log", "serial.log"}

    async def test_a_failed_create_leaves_nothing(self, qdriver: QemuDriver, tmp_path: Path) -> None:
        spec = dataclasses.replace(tiny_spec(), template_image=str(tmp_path / "missing.qcow2"))
        with pytest.raises(DriverError, match="does not exist"):
            await qdriver.create_vm(spec)
        assert await qdriver.get_vm(spec.id) is None
        assert list((qdriver.state_dir / "vms").iterdir()) == []

    async def test_shutdown_forces_a_guest_that_ignores_acpi(self, qdriver: QemuDriver) -> None:
        spec = dataclasses.replace(tiny_spec(), template_image=None, template_boot=None)  # blank disk: no OS
        await qdriver.create_vm(spec)
        await qdriver.start_vm(spec.id)
        t = time.monotonic()
        assert await qdriver.shutdown_vm(spec.id, timeout=1.0) is False
        assert time.monotonic() - t < 5
        assert (await qdriver.get_vm(spec.id)).state == PowerState.STOPPED
        assert vm_processes(qdriver.state_dir / "vms" / spec.id) == []

    async def test_a_qemu_without_vm_directory_is_reported_not_killed(
        self, qdriver: QemuDriver, caplog: pytest.LogCaptureFixture
    ) -> None:
        spec = tiny_spec()
        await qdriver.create_vm(spec)
        await qdriver.start_vm(spec.id)
        vm_dir = qdriver.state_dir / "vms" / spec.id
        pid = int((vm_dir / "qemu.pid").read_text())
        await qdriver.close()
        hidden = qdriver.state_dir / "elsewhere"
        vm_dir.rename(hidden)
        try:
            with caplog.at_level("WARNING", logger="vmplane.drivers.qemu"):
                await qdriver.open()
            assert f"QEMU process {pid} looks like a VM" in caplog.text
            assert await qdriver.get_vm(spec.id) is None
            assert Path(f"/proc/{pid}").exists()
        finally:
            os.kill(pid, signal.SIGKILL)
            hidden.rename(vm_dir)
            await qdriver.open()

    async def test_disk_overlay_grows_live_and_offline(self, qdriver: QemuDriver) -> None:
        spec = tiny_spec(resources=Resources(1, 256, 2))
        disk = qdriver.state_dir / "vms" / spec.id / "disk.qcow2"
        await qdriver.create_vm(spec)

        async def info() -> dict[str, Any]:
            proc = await asyncio.create_subprocess_exec("qemu-img", "info", "-U", "--output=json", str(disk), stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            return json.loads(out)

        first = await info()
        assert first["virtual-size"] == 2 << 30 and first["format"] == "qcow2"
        assert first["backing-filename"] == str(tiny_image().disk)  # an overlay, never a copy
        assert disk.stat().st_size < 1 << 20
        await qdriver.resize_vm(spec.id, Resources(1, 256, 3))  # offline: qemu-img resize
        assert (await info())["virtual-size"] == 3 << 30
        await qdriver.start_vm(spec.id)
        await qdriver.resize_vm(spec.id, Resources(2, 512, 4))  # live: block_resize
        assert (await info())["virtual-size"] == 4 << 30
        cmd = json.loads((qdriver.state_dir / "vms" / spec.id / "run.json").read_text())["argv"]
        assert cmd[cmd.index("-m") + 1] == "256"  # RAM waits for the next start...
        await qdriver.power_cycle_vm(spec.id)  # ...which a power cycle is
        cmd = json.loads((qdriver.state_dir / "vms" / spec.id / "run.json").read_text())["argv"]
        assert cmd[cmd.index("-m") + 1] == "512" and cmd[cmd.index("-smp") + 1] == "2"

    async def test_import_image_checks_format_and_backing_file(self, qdriver: QemuDriver, tmp_path: Path) -> None:
        """A template's base is the node's own standalone qcow2 converted from the image
        (tests/security/test_images.py tries the hostile shapes)."""

        async def progress(_p: int, _m: str) -> None:
            return None

        info = await qdriver.import_image("tpl-tiny00000000", tiny_image().disk, progress)
        assert info.format == "qcow2" and info.virtual_size == 1 << 30
        assert info.path.is_relative_to(qdriver.state_dir / "images" / "tpl-tiny00000000")
        assert await qdriver.import_image("tpl-tiny00000000", tiny_image().disk, progress) == info  # once
        raw = tmp_path / "disk.raw"
        raw.write_bytes(b"\0" * 1024 * 1024)
        made = await qdriver.import_image("tpl-raw000000000", raw, progress)
        assert made.format == "qcow2" and made.virtual_size == 1 << 20 and made.path != raw
        await qdriver.delete_image("tpl-raw000000000")
        assert not made.path.exists() and raw.exists()
        overlay = tmp_path / "overlay.qcow2"
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(tiny_image().disk), str(overlay)
        )
        assert await proc.wait() == 0
        with pytest.raises(DriverError, match="backing file"):
            await qdriver.import_image("tpl-ovl000000000", overlay, progress)
        with pytest.raises(DriverError, match="does not exist"):
            await qdriver.import_image("tpl-none00000000", tmp_path / "nope.img", progress)


# -- unit tests: no QEMU needed -------------------------------------------------------------


def sample_config(**kw: Any) -> VmConfig:
    values: dict[str, Any] = {
        "id": "vm-abcdefgh1234",
        "uuid": "8c1e2f34-0a4b-4c5d-9e6f-7a8b9c0d1e2f",
        "name": "web-1",
        "resources": Resources(2, 1024, 10),
        "mac": mac_for("vm-abcdefgh1234"),
        "template_image": "/images/base.qcow2",
        "boot": KernelBoot("/images/vmlinuz", "/images/initrd.img", "console=ttyS0 quiet"),
        "forwards": (Forward("tcp", 2222, 22), Forward("udp", 5353, 53)),
    }
    values.update(kw)
    return VmConfig(**values)


def option_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


class TestCmdline:
    paths = VmPaths(Path("/var/lib/vmplane/vms/vm-abcdefgh1234"))

    def test_machine_memory_cpus_and_kernel(self) -> None:
        argv = build_argv(sample_config(), self.paths, accel="tcg")
        assert argv[0] == "qemu-system-x86_64"
        assert option_after(argv, "-machine") == ["pc"] and option_after(argv, "-accel") == ["tcg"]
        assert option_after(argv, "-m") == ["1024"] and option_after(argv, "-smp") == ["2"]
        assert {"-nodefaults", "-no-user-config", "-no-shutdown"} <= set(argv)
        assert "-no-reboot" not in argv  # reboot_vm relies on the guest's reset restarting it
        assert option_after(argv, "-display") == ["none"]
        assert option_after(argv, "-kernel") == ["/images/vmlinuz"]
        assert option_after(argv, "-initrd") == ["/images/initrd.img"]
        assert option_after(argv, "-append") == ["console=ttyS0 quiet"]
        assert "-cpu" not in argv

    def test_kvm_uses_the_host_cpu(self) -> None:
        argv = build_argv(sample_config(), self.paths, accel="kvm")
        assert option_after(argv, "-accel") == ["kvm"] and option_after(argv, "-cpu") == ["host"]
        with pytest.raises(ValueError):
            build_argv(sample_config(), self.paths, accel="hvf")

    def test_devices(self) -> None:
        argv = build_argv(sample_config(), self.paths, accel="tcg")
        devices = option_after(argv, "-device")
        drives = option_after(argv, "-drive")
        assert "virtio-blk-pci,drive=disk0,id=vda" in devices  # -kernel boots; no bootindex
        assert drives[0].startswith("file=/var/lib/vmplane/vms/vm-abcdefgh1234/disk.qcow2,") and "format=qcow2" in drives[0]
        assert "file=seed.iso," in drives[1] and "media=cdrom" in drives[1] and "readonly=on" in drives[1]
        assert "ide-cd,drive=seed0,bus=ide.1,unit=0" in devices
        assert f"virtio-net-pci,netdev=n0,mac={mac_for('vm-abcdefgh1234')},romfile=" in devices
        assert "virtio-rng-pci" in devices
        assert "virtio-balloon-pci,id=balloon0" in devices  # the guest's memory figures (stats), never inflated
        assert "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0" in devices
        chardevs = option_after(argv, "-chardev")
        assert "socket,id=qga0,path=qga.sock,server=on,wait=off" in chardevs
        assert "socket,id=ser0,path=serial.sock,server=on,wait=off,logfile=serial.log,logappend=on" in chardevs
        assert option_after(argv, "-serial") == ["chardev:ser0"]
        assert option_after(argv, "-qmp") == ["unix:qmp.sock,server=on,wait=off"]
        assert option_after(argv, "-pidfile") == ["/var/lib/vmplane/vms/vm-abcdefgh1234/qemu.pid"]

    def test_display_is_vga_with_vnc_on_a_unix_socket(self) -> None:
        argv = build_argv(sample_config(), self.paths, accel="tcg")
        assert "VGA,id=vga0" in option_after(argv, "-device")
        assert option_after(argv, "-vnc") == ["unix:vnc.sock"]  # beside QMP's, never a TCP port
        assert option_after(argv, "-display") == ["none"]  # no window on the host

    def test_port_forwards(self) -> None:
        argv = build_argv(sample_config(), self.paths, accel="tcg")
        assert option_after(argv, "-netdev") == [
            "user,id=n0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.1:5353-:53"
        ]
        argv = build_argv(sample_config(forwards=()), self.paths, accel="tcg", forward_address="0.0.0.0")
        assert option_after(argv, "-netdev") == ["user,id=n0"]

    def test_disk_boot_and_awkward_paths(self) -> None:
        paths = VmPaths(Path("/srv/a,b/vms/vm-abcdefgh1234"))
        argv = build_argv(sample_config(boot=None), paths, accel="tcg", sandbox=False)
        assert "-kernel" not in argv and "-sandbox" not in argv
        assert "virtio-blk-pci,drive=disk0,id=vda,bootindex=1" in option_after(argv, "-device")
        assert option_after(argv, "-drive")[0].startswith("file=/srv/a,,b/vms/vm-abcdefgh1234/disk.qcow2,")

    def test_config_survives_json(self) -> None:
        config = sample_config()
        assert VmConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


class TestSeed:
    def spec(self, **extra: Any) -> VmSpec:
        return VmSpec(id="vm-abcdefgh1234", uuid=ids.new_uuid(), name="Web_1.example", resources=Resources(1, 256, 1), extra=extra)

    def test_keys_without_user_data_go_to_cloud_config(self) -> None:
        files = seed_files(self.spec(sshKeys=[TEST_KEY]))
        meta = json.loads(files["meta-data"])
        assert meta == {"instance-id": "vm-abcdefgh1234", "local-hostname": "web-1-example"}
        assert files["user-data"].decode() == f'#cloud-config\nssh_authorized_keys:\n  - "{TEST_KEY}"\n'
        assert "network-config" not in files

    def test_keys_with_user_data_go_to_meta_data(self) -> None:
        files = seed_files(self.spec(
            sshKeys=[TEST_KEY],
            cloudInit={"userData": "#!/bin/sh\ntrue\n", "metaData": {"local-hostname": "mine", "zone": "a"},
                       "networkConfig": {"version": 2}},
        ))
        meta = json.loads(files["meta-data"])
        assert meta == {"instance-id": "vm-abcdefgh1234", "local-hostname": "mine", "zone": "a", "public-keys": [TEST_KEY]}
        assert files["user-data"] == b"#!/bin/sh\ntrue\n"
        assert json.loads(files["network-config"]) == {"version": 2}

    def test_yaml_meta_data_is_kept_and_completed(self) -> None:
        files = seed_files(self.spec(sshKeys=[TEST_KEY], cloudInit={
            "userData": "#cloud-config\n", "metaData": "local-hostname: other\nzone: b\n"}))
        assert files["meta-data"].decode() == (
            f'local-hostname: other\nzone: b\n"instance-id": "vm-abcdefgh1234"\n"public-keys": ["{TEST_KEY}"]\n'
        )

    def test_bad_input_is_a_driver_error(self) -> None:
        with pytest.raises(DriverError):
            seed_files(self.spec(sshKeys="ssh-ed25519 AAAA"))
        with pytest.raises(DriverError):
            seed_files(self.spec(cloudInit={"userData": 42}))

    def test_iso_is_cidata_with_long_names(self, tmp_path: Path) -> None:
        files = seed_files(self.spec(cloudInit={"userData": "#cloud-config\n", "networkConfig": "version: 2\n"}))
        iso = tmp_path / "seed.iso"
        write_seed_iso(iso, files)
        assert volume_id(iso) == "cidata"
        assert read_seed_iso(iso) == files


class FakeAgent:
    """qemu-guest-agent as seen on its socket: stale replies first, then sync and exec."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'\xff{"return": 12345}\n{"return": {"pid": 1}}\n')  # answers to syncs of a previous client
        buf = b""
        while chunk := await reader.read(4096):
            buf += chunk.replace(b"\xff", b"")
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                msg = json.loads(line)
                self.requests.append(msg)
                cmd, args = msg["execute"], msg.get("arguments", {})
                if cmd == "guest-sync-delimited":
                    writer.write(b"\xff" + json.dumps({"return": args["id"]}).encode() + b"\n")
                elif cmd == "guest-exec":
                    writer.write(b'{"return": {"pid": 77}}\n')
                elif cmd == "guest-exec-status":
                    out = base64.b64encode(b"x" * 10).decode()
                    writer.write(json.dumps({"return": {"exited": True, "exitcode": 0, "out-data": out}}).encode() + b"\n")
                else:
                    writer.write(b'{"error": {"class": "CommandNotFound", "desc": "nope"}}\n')
            await writer.drain()
        writer.close()


class TestGuestAgentClient:
    async def test_resync_discards_stale_replies_and_long_paths_work(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        deep = tmp_path / ("d" * 60) / ("e" * 60)
        deep.mkdir(parents=True)
        monkeypatch.chdir(deep)  # bind by a relative name: the absolute path is too long for sun_path
        fake = FakeAgent()
        server = await asyncio.start_unix_server(fake.serve, path="qga.sock")
        try:
            agent = GuestAgent("vm-abcdefgh1234", deep / "qga.sock")
            r = await agent.exec(["echo", "hi"], timeout=5, max_output=4)
            assert (r.exit_code, r.stdout, r.stdout_truncated, r.timed_out) == (0, b"xxxx", True, False)
            assert [m["execute"] for m in fake.requests] == ["guest-sync-delimited", "guest-exec", "guest-exec-status"]
            assert fake.requests[1]["arguments"] == {"path": "echo", "arg": ["hi"], "capture-output": True}
            with pytest.raises(DriverError, match="nope"):
                await agent.execute("guest-bogus")
            await agent.close()
        finally:
            server.close()
            await server.wait_closed()

    async def test_a_command_cancelled_before_its_reply_leaves_no_stale_reply(self, tmp_path: Path) -> None:
        """A caller cancelled between request and reply (a readiness watch that ends): the late
        reply must not be read as the next command's (a stale guest-exec pid once made a
        user's exec fail with "Invalid parameter 'pid'")."""
        requests: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := (await reader.readline()).replace(b"\xff", b""):
                msg = json.loads(line)
                requests.append(msg["execute"])
                if msg["execute"] == "guest-sync-delimited":
                    writer.write(b"\xff" + json.dumps({"return": msg["arguments"]["id"]}).encode() + b"\n")
                elif msg["execute"] == "guest-slow":
                    await asyncio.sleep(0.3)
                    writer.write(b'{"return": "slow"}\n')
                else:
                    writer.write(b'{"return": "info"}\n')
                await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(serve, path=str(tmp_path / "qga.sock"))
        try:
            agent = GuestAgent("vm-abcdefgh1234", tmp_path / "qga.sock")
            slow = asyncio.create_task(agent.execute("guest-slow"))
            await asyncio.sleep(0.1)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert await agent.execute("guest-info") == "info"
            assert requests == ["guest-sync-delimited", "guest-slow", "guest-sync-delimited", "guest-info"]
            await agent.close()
        finally:
            server.close()
            await server.wait_closed()

    async def test_a_missing_agent_is_reported_after_the_wait(self, tmp_path: Path) -> None:
        agent = GuestAgent("vm-abcdefgh1234", tmp_path / "absent.sock")
        t = time.monotonic()
        with pytest.raises(AgentNotResponding, match="not responding"):
            await agent.wait_ready(0.5)
        assert time.monotonic() - t < 2


class TestKvmProbe:
    """The probe against stand-in QEMUs: one whose guest boots, one that crawls, one that dies."""

    def fake_qemu(self, tmp_path: Path, body: str) -> str:
        path = tmp_path / "fake-qemu"
        path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
        path.chmod(0o755)
        return str(path)

    def image(self, tmp_path: Path) -> TinyImage:
        return TinyImage(kernel=tmp_path / "k", initrd=tmp_path / "i", disk=tmp_path / "d", cmdline="console=ttyS0")

    async def test_a_guest_that_prints_its_first_line_means_kvm_works(self, tmp_path: Path) -> None:
        qemu = self.fake_qemu(tmp_path, f"print('junk'); print({INIT_START_LINE!r}, flush=True); time.sleep(60)")
        ok, why = await probe_kvm(self.image(tmp_path), qemu_binary=qemu, timeout=5)
        assert ok, why
        assert vm_processes(tmp_path) == []  # the probe was killed

    async def test_a_silent_guest_is_given_up_on_in_time(self, tmp_path: Path) -> None:
        qemu = self.fake_qemu(tmp_path, "time.sleep(60)")
        t = time.monotonic()
        ok, why = await probe_kvm(self.image(tmp_path), qemu_binary=qemu, timeout=0.5)
        assert not ok and "printed nothing" in why and time.monotonic() - t < 3
        assert vm_processes(tmp_path) == []

    async def test_a_qemu_that_fails_says_why(self, tmp_path: Path) -> None:
        qemu = self.fake_qemu(tmp_path, "print('failed to set MSR 0x10a', file=sys.stderr); sys.exit(1)")
        ok, why = await probe_kvm(self.image(tmp_path), qemu_binary=qemu, timeout=5)
        assert not ok and why == "probe QEMU exited with status 1: failed to set MSR 0x10a"

    async def test_forced_modes_need_no_probe(self, tmp_path: Path) -> None:
        assert (await pick_accel("tcg", self.image(tmp_path)))[0] == "tcg"
        assert (await pick_accel("kvm", self.image(tmp_path)))[0] == "kvm"
        with pytest.raises(ValueError):
            await pick_accel("fast", self.image(tmp_path))
