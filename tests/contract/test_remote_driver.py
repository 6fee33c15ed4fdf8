"""The `remote` driver against the driver contract, wrapping `sim` and wrapping `qemu` through a
real agent HTTP face on loopback; plus what only `remote` has: keys, offline nodes, template
files fetched or pushed and checked, the console bridged over a WebSocket, disks as sparse
streams."""

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmplane import ids
from vmplane.domain import Resources, VmSpec
from vmplane.drivers import remote_wire as wire
from vmplane.drivers.base import HypervisorDriver, TemplateFiles
from vmplane.drivers.remote import RemoteDriver
from vmplane.drivers.sim import SimDriver
from vmplane.errors import DriverError, InvalidState, NotFound, Unauthorized

from ..support_agent import AgentServer
from .driver_contract import DriverContract
from .test_qemu_driver import BOOT_TIMEOUT, needs_qemu, new_driver, tiny_image, wait_for_console


class RemoteContract(DriverContract):
    """Each `make_driver` starts an agent around a fresh local driver on the same state (as
    restarting `vmplane agent` does) and returns a `remote` driver talking to it."""

    @pytest.fixture(autouse=True)
    async def _agents(self) -> AsyncIterator[None]:
        self.servers: list[AgentServer] = []
        yield
        for s in reversed(self.servers):
            await s.stop()

    async def local_driver(self, state_dir: Path) -> HypervisorDriver:
        raise NotImplementedError

    async def make_driver(self, state_dir: Path) -> HypervisorDriver:
        for old in self.servers:
            if old.state.data_dir == state_dir:  # a restarted agent: the old one lets go first
                await old.driver.close()
        server = await AgentServer(await self.local_driver(state_dir), state_dir).start()
        self.servers.append(server)
        return server.remote()


class TestRemoteSim(RemoteContract):
    async def local_driver(self, state_dir: Path) -> HypervisorDriver:
        return SimDriver(hostname="sim-remote", cpu=8, ram_mb=8192, disk_gb=100, latency=0.001, state_dir=state_dir / "sim")


@pytest.mark.slow
@needs_qemu
class TestRemoteQemu(RemoteContract):
    template_boot: dict[str, str] | None = None

    async def local_driver(self, state_dir: Path) -> HypervisorDriver:
        return await new_driver(state_dir / "qemu")

    async def prepare_image(self, driver: HypervisorDriver, tmp_path: Path) -> tuple[str | None, str | None]:
        """The tiny image reaches the node as a control plane's template would: pushed (this
        test has no control plane to fetch from), checked, imported."""
        image = tiny_image()
        boot = {"kernel": str(image.kernel), "initrd": str(image.initrd), "cmdline": image.cmdline}
        msgs: list[str] = []

        async def progress(_p: int, m: str) -> None:
            msgs.append(m)

        path, node_boot = await driver.provide_template(TemplateFiles("tpl-tiny00000000", image.disk, boot), progress)
        assert path != str(image.disk) and node_boot is not None and node_boot["cmdline"] == image.cmdline
        assert Path(node_boot["kernel"]).read_bytes() == image.kernel.read_bytes()
        again = await driver.provide_template(TemplateFiles("tpl-tiny00000000", image.disk, boot), progress)
        assert again == (path, node_boot)  # idempotent: nothing sent twice
        self.template_boot = node_boot
        return "tpl-tiny00000000", path

    async def test_a_booted_guest_through_the_agent(self, env: Any) -> None:
        """exec, the console (a WebSocket bridged to a stream pair), stats, console log, and
        the disk out and back in as a sparse stream."""
        d, spec = env.driver, env.spec()
        await d.create_vm(spec)
        await d.start_vm(spec.id)
        ready = await d.guest_state(spec.id, wait=BOOT_TIMEOUT)  # the agent's driver waits, the answer comes over
        assert ready.ready and "cloud-init is done" in ready.detail, ready
        await wait_for_console(d, spec.id, "vmplane-tiny: boot complete", timeout=BOOT_TIMEOUT)
        r = await d.exec_vm(spec.id, ["sh", "-c", "echo hello > /mnt/disk/mark; sync; cat /mnt/disk/mark; echo oops >&2; exit 3"], 20, 4096)
        assert (r.exit_code, r.stdout, r.stderr) == (3, b"hello\n", b"oops\n")
        reader, writer = await d.open_console(spec.id)
        writer.write(b"\necho console-$((6*7))\n")
        await writer.drain()
        seen = b""
        async with asyncio.timeout(20):
            while b"console-42" not in seen:
                chunk = await reader.read(4096)
                assert chunk, f"the console ended early: {seen!r}"  # (an empty read would spin past the timeout)
                seen += chunk
        writer.close()
        s = await d.stats_vm(spec.id)
        assert s.uptime_seconds > 0 and s.memory_total_mb == 256
        assert b"boot complete" in await d.console_log(spec.id, 1 << 20)
        (env.tmp / "small.raw").write_bytes(b"\0" * 4096)
        with pytest.raises(InvalidState):
            await d.import_disk(spec.id, env.tmp / "small.raw")  # running
        out = env.tmp / "disk.raw"
        size = await d.export_disk(spec.id, out)
        assert size == out.stat().st_size == 2 << 30
        assert os.stat(out).st_blocks * 512 < size // 4  # holes stayed holes
        await d.stop_vm(spec.id)
        other = env.spec()
        await d.create_vm(other)
        await d.import_disk(other.id, out)
        back = env.tmp / "back.raw"
        await d.export_disk(other.id, back)
        same = subprocess.run(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", str(out), str(back)])
        assert same.returncode == 0  # the same disk, read sparsely


# -- what only the remote driver has ---------------------------------------------------------


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentServer]:
    server = await AgentServer(SimDriver(hostname="s", latency=0, state_dir=tmp_path / "sim"), tmp_path / "agent").start()
    yield server
    await server.stop()


def spec(name: str = "r") -> VmSpec:
    return VmSpec(id=ids.new_id("vm"), uuid=ids.new_uuid(), name=name, resources=Resources(1, 256, 1))


async def test_the_agent_refuses_other_keys(agent: AgentServer) -> None:
    bad = RemoteDriver(agent.node_id, agent.url, "vmk_wrong", agent.driver.capabilities)
    await bad.open()
    with pytest.raises(Unauthorized, match="not this node's control plane"):
        await bad.list_vms()
    async with httpx.AsyncClient() as c:  # no key at all, and the console too
        assert (await c.get(agent.url + wire.AGENT_PREFIX + "/vms")).status_code == 401
    with pytest.raises(Unauthorized):
        await bad.open_console("vm-abcdabcdabcd")
    await bad.close()


async def test_errors_keep_their_type_and_ids_are_checked(agent: AgentServer) -> None:
    d = agent.remote()
    await d.open()
    s = spec()
    await d.create_vm(s)
    with pytest.raises(InvalidState) as exc:
        await d.reboot_vm(s.id)
    assert exc.value.details["current"] == "stopped"
    with pytest.raises(DriverError, match="not defined"):
        await d.start_vm(ids.new_id("vm"))
    with pytest.raises(DriverError, match="sim driver cannot run commands"):
        await d.exec_vm(s.id, ["true"], 5, 100)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {agent.key}"}) as c:
        for bad in ("..", "vm-.x", "etc%2Fshadow"):
            r = await c.get(agent.url + wire.AGENT_PREFIX + f"/vms/{bad}")
            assert 400 <= r.status_code < 500, bad  # never reaches the driver
        r = await c.get(agent.url + wire.AGENT_PREFIX + "/vms/Not_An_Id")
        assert r.status_code == 400 and r.json()["type"] == "InvalidRequest"
        r = await c.delete(agent.url + wire.AGENT_PREFIX + "/images/..")
        assert r.status_code in (400, 404)
    await d.close()


async def test_an_offline_node_fails_calls_at_once_and_abandons_calls_in_flight(tmp_path: Path) -> None:
    slow = SimDriver(hostname="slow", latency=1.5, state_dir=tmp_path / "sim")
    server = await AgentServer(slow, tmp_path / "agent").start()
    d = server.remote()
    await d.open()
    try:
        s = spec()
        call = asyncio.create_task(d.create_vm(s))
        await asyncio.sleep(0.2)
        t = time.monotonic()
        d.set_offline("no heartbeat for 15 s")
        with pytest.raises(DriverError, match="went offline during create"):
            await call
        with pytest.raises(DriverError, match="is offline: no heartbeat"):
            await d.get_vm(s.id)
        assert time.monotonic() - t < 1
        d.set_offline(None)
        slow.latency = 0
        assert [v.vm_id for v in await d.list_vms()] in ([], [s.id])
    finally:
        await d.close()
        await server.stop()


async def test_a_dead_agent_is_a_clear_driver_error(tmp_path: Path) -> None:
    from ..support import free_port

    d = RemoteDriver("node-gone00000000", f"http://127.0.0.1:{free_port()}", "vmk_x", SimDriver(hostname="x").capabilities)
    t = time.monotonic()
    with pytest.raises(DriverError, match="node-gone00000000 is unreachable"):
        await d.list_vms()
    assert time.monotonic() - t < 2
    await d.close()


async def test_template_files_are_checked_and_never_half_there(agent: AgentServer, tmp_path: Path) -> None:
    d = agent.remote()
    await d.open()
    img = tmp_path / "base.img"
    img.write_bytes(b"\0" * 4096 + b"data")

    async def quiet(_p: int, _m: str) -> None:
        return None

    path, boot = await d.provide_template(TemplateFiles("tpl-abcd00000000", img), quiet)
    assert boot is None and Path(path).read_bytes() == img.read_bytes()
    assert Path(path).is_relative_to(agent.state.data_dir)
    # a damaged upload is refused and leaves nothing behind
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {agent.key}"}) as c:
        url = agent.url + wire.AGENT_PREFIX + "/images/tpl-bad000000000/files/disk"
        r = await c.put(url, content=b"payload", headers={"x-vmplane-sha256": "0" * 64})
        assert r.status_code == 502 and "damaged" in r.json()["error"]
    assert not list((agent.state.data_dir / "images" / "tpl-bad000000000").glob("disk*"))
    with pytest.raises(DriverError, match="empty"):
        empty = tmp_path / "empty.img"
        empty.write_bytes(b"")
        await d.import_image("tpl-empty0000000", empty, quiet)
    assert not (agent.state.data_dir / "images" / "tpl-empty0000000").exists()
    await d.delete_image("tpl-abcd00000000")
    assert not Path(path).exists()
    await d.close()


async def test_a_spec_naming_files_outside_the_agent_is_refused(tmp_path: Path) -> None:
    """Real drivers define VMs only on base images the agent handed out."""
    from vmplane.agent.app import AgentState
    from vmplane.agent.images import ImageStore
    from vmplane.outbound import Policy

    state = AgentState(driver=SimDriver(hostname="s"), data_dir=tmp_path / "agent", images=ImageStore(tmp_path, SimDriver(hostname="s"), Policy()))
    assert state.allowed(str(tmp_path / "agent" / "images" / "x"))
    assert not state.allowed("/etc/shadow") and not state.allowed(str(tmp_path / "agent" / ".." / "x"))


async def test_unknown_answers_are_driver_errors() -> None:
    exc = wire.error_from_wire(502, "<html>bad gateway</html>", "node-x")
    assert isinstance(exc, DriverError) and "HTTP 502" in exc.message
    nf = wire.error_from_wire(404, {"error": "gone", "type": "NotFound", "details": {"field": "x"}}, "node-x")
    assert isinstance(nf, NotFound) and nf.details == {"field": "x"}


def test_sparse_stream_round_trip_and_damage(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(5 << 20)
        f.write(b"x" * 100_000)
        f.seek(40 << 20)
        f.write(os.urandom(5 << 20))
    stream = b"".join(wire.sparse_chunks(src))
    assert len(stream) < 6 << 20
    dst = wire.SparseWriter(tmp_path / "dst.raw")
    for i in range(0, len(stream), 777_777):  # arbitrary pieces
        dst.feed(stream[i : i + 777_777])
    dst.close()
    assert (tmp_path / "dst.raw").read_bytes() == src.read_bytes()
    broken = bytearray(stream)
    broken[len(broken) // 2] ^= 1
    w = wire.SparseWriter(tmp_path / "bad.raw")
    with pytest.raises(wire.InvalidRequest, match="checksum"):
        w.feed(bytes(broken))
    w.abort()
    w = wire.SparseWriter(tmp_path / "short.raw")
    w.feed(stream[:1000])
    with pytest.raises(wire.InvalidRequest, match="ended early"):
        w.close()
    with pytest.raises(wire.InvalidRequest, match="larger"):
        wire.SparseWriter(tmp_path / "small.raw", max_size=1 << 20).feed(stream)

